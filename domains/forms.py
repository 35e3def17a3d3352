from django import forms

from dojo_site.errors import DojoError
from domains.contracts import TASK_TYPES
from domains.models import Domain
from domains.services import domain_name_check, workspace_check
from domains.workspaces import git_url_check

METRIC_CHOICES = [("", "the task type's default")] + [
    (task.label, [(m, m) for m in task.metrics]) for task in TASK_TYPES.values()
]


class DomainForm(forms.Form):
    """What `manage.py dojo_init` asks for."""

    name = forms.CharField(max_length=100, help_text="Short and unique; the CLI's --domain NAME.")
    task_type = forms.ChoiceField(choices=[(t.name, t.label) for t in TASK_TYPES.values()])
    workspace = forms.CharField(
        max_length=500, required=False,
        help_text="Absolute path of your data/repository folder on this machine (or give a git URL).",
    )
    git_url = forms.CharField(
        max_length=500, required=False, label="Git URL",
        help_text="Instead of a folder: https://, ssh://, git@host:path or a local repository path; "
        "cloned into Dojo's workspaces folder.",
    )
    git_ref = forms.CharField(max_length=200, required=False, label="Git ref", help_text="Branch, tag or commit (default: the default branch).")
    data_path = forms.CharField(
        max_length=500, required=False,
        help_text="Data file relative to the workspace (CSV/Parquet), or sklearn:load_diabetes.",
    )
    target_column = forms.CharField(max_length=200, required=False)
    id_columns = forms.CharField(
        max_length=500, required=False, help_text="Comma-separated; never used as features."
    )
    metric = forms.ChoiceField(choices=METRIC_CHOICES, required=False, label="Primary metric")
    description = forms.CharField(widget=forms.Textarea(attrs={"rows": 3}), required=False, label="Goal")

    def clean_name(self) -> str:
        try:
            name = domain_name_check(self.cleaned_data["name"])
        except DojoError as exc:
            raise forms.ValidationError(str(exc)) from None
        if Domain.objects.filter(name=name).exists():
            raise forms.ValidationError(f"a domain named {name!r} already exists")
        return name

    def clean_workspace(self) -> str:
        if not self.cleaned_data["workspace"].strip():
            return ""
        try:
            return str(workspace_check(self.cleaned_data["workspace"]))
        except DojoError as exc:
            raise forms.ValidationError(str(exc)) from None

    def clean_git_url(self) -> str:
        if not self.cleaned_data["git_url"].strip():
            return ""
        try:
            return git_url_check(self.cleaned_data["git_url"])
        except DojoError as exc:
            raise forms.ValidationError(str(exc)) from None

    def clean(self) -> dict:
        data = super().clean()
        workspace, git_url = data.get("workspace"), data.get("git_url")
        if "workspace" in data and "git_url" in data:
            if not workspace and not git_url:
                self.add_error("workspace", "give your data/repository folder, or a git URL to clone")
            elif workspace and git_url:
                self.add_error("git_url", "give either a workspace folder or a git URL, not both")
        task_type, metric = data.get("task_type"), data.get("metric")
        if task_type and metric and metric not in TASK_TYPES[task_type].metrics:
            self.add_error(
                "metric",
                f"{metric} is not a {task_type} metric; choose one of: {', '.join(TASK_TYPES[task_type].metrics)}",
            )
        return data


class DomainFileForm(forms.Form):
    text = forms.CharField(widget=forms.Textarea(attrs={"rows": 18}), required=False, strip=False)


class DomainSettingsForm(forms.Form):
    """The owner's settings: what runs in the sandbox and what viewers see."""

    workspace_python = forms.CharField(
        max_length=500, required=False, label="Trainer interpreter",
        help_text="Absolute path; empty means Dojo's own. It must answer with its version when run in the sandbox.",
    )
    env_vars = forms.CharField(
        widget=forms.Textarea(attrs={"rows": 4}), required=False, label="Environment variables",
        help_text="One NAME=value per line, given to the trainer.",
    )
    hide_holdout_from_viewers = forms.BooleanField(
        required=False, label="Hide holdout values from viewers",
    )

    def clean_env_vars(self) -> dict[str, str]:
        env: dict[str, str] = {}
        for number, line in enumerate(self.cleaned_data["env_vars"].splitlines(), start=1):
            if not line.strip():
                continue
            name, sep, value = line.partition("=")
            if not sep:
                raise forms.ValidationError(f"line {number}: write NAME=value")
            env[name.strip()] = value
        return env

    @staticmethod
    def initial_for(domain: Domain) -> dict:
        return {
            "workspace_python": domain.workspace_python,
            "env_vars": "\n".join(f"{k}={v}" for k, v in domain.env_vars.items()),
            "hide_holdout_from_viewers": domain.hide_holdout_from_viewers,
        }


class DomainMemberForm(forms.Form):
    username = forms.CharField(max_length=150)
    role = forms.ChoiceField(choices=[("viewer", "Viewer: reads"), ("editor", "Editor: PROGRAM.md, runs, experiments")])
