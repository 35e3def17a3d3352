"""Pages of the domains app. Views parse, fetch, call one service and respond."""

from django import forms
from django.contrib import messages
from django.contrib.auth.decorators import login_required
from django.http import Http404, HttpRequest, HttpResponse
from django.shortcuts import get_object_or_404, redirect, render
from django.template.loader import select_template
from django.urls import reverse
from django.views.decorators.http import require_http_methods, require_POST

from dojo_site.errors import DojoError
from domains.forms import DomainFileForm, DomainForm
from domains.models import Domain, Task, TaskTool
from domains.services import (
    DOMAIN_FILES,
    domain_create,
    domain_current,
    domain_file_read,
    domain_file_write,
    task_for_domain,
    task_freeze,
    task_generate,
    task_status,
    task_tools_current,
    task_tools_import,
    task_tools_save,
    task_unfreeze,
    task_update,
    task_verify,
)

# --- Domains ---------------------------------------------------------------------------------

# Tabs of the domain page. Tabs with a URL belong to higher apps and load with htmx
# (docs/interfaces.md, "Web composition"), so this app never imports them.
DOMAIN_TABS = [
    ("overview", "Overview", None),
    ("task", "Task", None),
    ("experiments", "Experiments", "/experiments/domain/{id}/"),
    ("runs", "Runs", "/runs/domain/{id}/"),
    ("knowledge", "Knowledge", "/knowledge/domain/{id}/"),
]
FILE_NAMES = {"program": "PROGRAM.md", "setup": "SETUP.md"}


def _get_domain(pk: int) -> Domain:
    return get_object_or_404(Domain.objects.select_related("task"), pk=pk)


@login_required
def domain_list(request: HttpRequest) -> HttpResponse:
    domains = Domain.objects.select_related("task")
    return render(request, "domains/domain_list.html", {"domains": domains, "current": domain_current()})


@login_required
@require_http_methods(["GET", "POST"])
def domain_new(request: HttpRequest) -> HttpResponse:
    form = DomainForm(request.POST or None)
    if request.method == "POST" and form.is_valid():
        try:
            domain = domain_create(**form.cleaned_data)
        except DojoError as exc:
            form.add_error(None, str(exc))
        else:
            messages.success(request, f"Domain {domain.name} created. Describe the data in SETUP.md next.")
            return redirect(domain)
    return render(request, "domains/domain_form.html", {"form": form})


@login_required
def domain_detail(request: HttpRequest, pk: int) -> HttpResponse:
    domain = _get_domain(pk)
    tab = request.GET.get("tab", "overview")
    tabs = [
        {"key": key, "label": label, "url": url.format(id=domain.pk) if url else None}
        for key, label, url in DOMAIN_TABS
    ]
    if tab not in {t["key"] for t in tabs}:
        tab = "overview"
    context = {
        "domain": domain,
        "task": domain.task_or_none,
        "tabs": tabs,
        "tab": tab,
        "active_tab": next(t for t in tabs if t["key"] == tab),
        # The Task tab's panel comes from the task app's partial once it exists.
        "task_template": select_template(
            ["domains/partials/task.html", "domains/partials/pending_task_panel.html"]
        ).template.name,
    }
    if tab == "overview":
        context["files"] = [_file_context(domain, which) for which in DOMAIN_FILES]
    return render(request, "domains/domain_detail.html", context)


def _file_context(domain: Domain, which: str, *, editing: bool = False, form=None, error: str = "") -> dict:
    try:
        text = domain_file_read(domain=domain, which=which)
    except DojoError as exc:
        text, error = "", error or str(exc)
    return {
        "domain": domain,
        "which": which,
        "filename": FILE_NAMES[which],
        "path": domain.file_path(which),
        "text": text,
        "editing": editing,
        "form": form or DomainFileForm(initial={"text": text}),
        "error": error,
    }


@login_required
@require_http_methods(["GET", "POST"])
def domain_file(request: HttpRequest, pk: int, which: str) -> HttpResponse:
    """PROGRAM.md / SETUP.md in place: GET shows it (?edit=1: the editor), POST writes it back."""
    if which not in DOMAIN_FILES:
        raise Http404("unknown file")
    domain = _get_domain(pk)
    if request.method == "POST":
        form = DomainFileForm(request.POST)
        error = ""
        if form.is_valid():
            try:
                domain_file_write(domain=domain, which=which, text=form.cleaned_data["text"])
            except DojoError as exc:
                error = str(exc)
        if not request.htmx:
            if error:
                messages.error(request, error)
            else:
                messages.success(request, f"{FILE_NAMES[which]} saved.")
            return redirect(domain)
        context = _file_context(domain, which, editing=bool(error), form=form if error else None, error=error)
    else:
        if not request.htmx:
            return redirect(domain)
        context = _file_context(domain, which, editing=request.GET.get("edit") == "1")
    return render(request, "domains/partials/domain_file.html", {"file": context})


# --- end of domains --------------------------------------------------------------------------


# --- Task ------------------------------------------------------------------------------------
# The Task tab: tools' code (editable until frozen), verification, generate / verify / freeze /
# unfreeze as htmx POSTs, each answering with the refreshed panel (domains/partials/task.html).

TASK_ACTIONS = ("generate", "verify", "freeze", "unfreeze", "import", "config", "tool")


class TaskImportForm(forms.Form):
    load_data = forms.CharField(widget=forms.Textarea(attrs={"rows": 10}), required=False, strip=False)
    evaluate = forms.CharField(widget=forms.Textarea(attrs={"rows": 10}), required=False, strip=False)

    def clean(self) -> dict:
        data = super().clean()
        if not (data.get("load_data") or "").strip() and not (data.get("evaluate") or "").strip():
            raise forms.ValidationError("Paste the code of load_data, evaluate, or both.")
        return data


class TaskToolForm(forms.Form):
    name = forms.ChoiceField(choices=[("load_data", "load_data"), ("evaluate", "evaluate")])
    code = forms.CharField(widget=forms.Textarea(attrs={"rows": 18}), strip=False)


class TaskUnfreezeForm(forms.Form):
    reason = forms.CharField(max_length=2000, help_text="Kept on the task: why the contract changes.")


class TaskConfigForm(forms.Form):
    primary_metric = forms.ChoiceField(choices=())
    test_ratio = forms.FloatField(min_value=0.01, max_value=0.99)
    holdout_ratio = forms.FloatField(min_value=0.0, max_value=0.99, help_text="0 turns the private holdout off.")
    seed = forms.IntegerField(min_value=0)

    def __init__(self, *args, task: Task, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.fields["primary_metric"].choices = [(m, m) for m in task.expected_metrics]


class TaskGenerateForm(forms.Form):
    method = forms.ChoiceField(
        choices=[("auto", "auto"), ("template", "template"), ("claude", "Claude")], required=False
    )


def _task_panel(request: HttpRequest, domain: Domain, *, error: str = "", notice: str = "", forms_: dict | None = None) -> HttpResponse:
    task = domain.task_or_none
    context: dict = {"domain": domain, "task": task, "panel": True, "error": error, "notice": notice}
    if task is not None:
        status = task_status(task=task)
        tools = task_tools_current(task=task)
        config = {**task.config, "primary_metric": task.primary_metric}
        context.update(
            status=status,
            tools=[
                {"name": name, "tool": tool, "status": status["tools"][name]}
                for name, tool in tools.items()
            ],
            import_form=TaskImportForm(),
            unfreeze_form=TaskUnfreezeForm(),
            config_form=TaskConfigForm(initial=config, task=task),
            snapshot_parts=_snapshot_parts(status["snapshot"]),
        )
        context.update(forms_ or {})
    return render(request, "domains/partials/task.html", context)


def _snapshot_parts(snap: dict) -> list[dict]:
    if not snap:
        return []
    sizes = snap.get("sizes", {})
    return [
        {
            "name": part,
            "shape": " × ".join(map(str, snap["shapes"][part])),
            "type": snap["types"][part],
            "bytes": sizes.get(f"{where}/{part}.pkl", 0),
            "where": where,
        }
        for part, where in (("X_train", "public"), ("y_train", "public"), ("X_test", "public"), ("y_test", "sealed"))
    ]


@login_required
def task_panel(request: HttpRequest, pk: int) -> HttpResponse:
    domain = _get_domain(pk)
    if not request.htmx:
        return redirect(reverse("domains:detail", args=[domain.pk]) + "?tab=task")
    return _task_panel(request, domain)


@login_required
@require_POST
def task_action(request: HttpRequest, pk: int, action: str) -> HttpResponse:
    """One POST per action; errors become a message in the panel, never a 500."""
    if action not in TASK_ACTIONS:
        raise Http404("unknown task action")
    domain = _get_domain(pk)
    error = notice = ""
    forms_: dict = {}
    try:
        task = task_for_domain(domain=domain)
        if action == "generate":
            form = TaskGenerateForm(request.POST)
            method = form.cleaned_data["method"] if form.is_valid() and form.cleaned_data["method"] else "auto"
            tools = task_generate(task=task, method=method)
            notice = "Generated " + ", ".join(f"{t.name} v{t.version} ({t.origin})" for t in tools) + ". Verify them next."
        elif action == "verify":
            run = task_verify(task=task)
            notice = "Both tools passed verification. Freeze next." if run.ok else ""
            error = "" if run.ok else f"Verification failed: {len(run.errors)} problem(s), listed under each tool."
        elif action == "freeze":
            task = task_freeze(task=task)
            notice = f"Frozen: fingerprint {task.fingerprint[:12]}."
        elif action == "unfreeze":
            form = TaskUnfreezeForm(request.POST)
            if not form.is_valid():
                forms_["unfreeze_form"] = form
                error = "Say why the task is unfrozen."
            else:
                task_unfreeze(task=task, reason=form.cleaned_data["reason"])
                notice = "Unfrozen. Experiments scored before are marked as from another contract."
        elif action == "import":
            form = TaskImportForm(request.POST)
            if not form.is_valid():
                forms_["import_form"] = form
                error = " ".join(form.non_field_errors()) or "Check the pasted code."
            else:
                tools = task_tools_import(task=task, **form.cleaned_data)
                notice = "Saved " + ", ".join(f"{t.name} v{t.version}" for t in tools) + ". Verify them next."
        elif action == "tool":
            form = TaskToolForm(request.POST)
            if not form.is_valid():
                error = "Choose a tool and give its code."
            else:
                codes = {form.cleaned_data["name"]: form.cleaned_data["code"]}
                tool = task_tools_save(task=task, codes=codes, origin=TaskTool.Origin.HUMAN)[0]
                notice = f"Saved {tool.name} v{tool.version}. Verify it next."
        elif action == "config":
            form = TaskConfigForm(request.POST, task=task)
            if not form.is_valid():
                forms_["config_form"] = form
                error = "Check the task settings."
            else:
                data = dict(form.cleaned_data)
                task_update(task=task, primary_metric=data.pop("primary_metric"), config=data)
                notice = "Task settings saved."
    except DojoError as exc:
        error = str(exc)
    domain = _get_domain(pk)
    if not request.htmx:
        if error:
            messages.error(request, error)
        elif notice:
            messages.success(request, notice)
        return redirect(reverse("domains:detail", args=[domain.pk]) + "?tab=task")
    return _task_panel(request, domain, error=error, notice=notice, forms_=forms_)
