"""Pages of the domains app. Views parse, fetch, call one service and respond."""

from django import forms
from django.contrib import messages
from django.contrib.auth.decorators import login_required
from django.http import Http404, HttpRequest, HttpResponse
from django.shortcuts import redirect, render
from django.template.loader import select_template
from django.urls import reverse
from django.views.decorators.http import require_http_methods, require_POST

from dojo_site.errors import DojoError, InvalidInput
from domains.forms import DomainFileForm, DomainForm, DomainMemberForm, DomainSettingsForm
from domains.models import Domain, Task, TaskTool
from domains.permissions import domain_may, domain_role, domains_for_user, web_domain_get
from domains.services import (
    DOMAIN_FILES,
    domain_create,
    domain_current,
    domain_env_request,
    domain_file_read,
    domain_file_write,
    domain_git_sync,
    domain_member_remove,
    domain_member_set,
    domain_update,
    domain_workspace_scan,
    domain_workspace_status,
    task_for_domain,
    task_freeze,
    task_generate,
    task_job_active,
    task_job_enqueue,
    task_status,
    task_tools_current,
    task_tools_import,
    task_tools_save,
    task_unfreeze,
    task_update,
    task_verify,
    tasks_inline,
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
    ("quarantine", "Quarantine", "/experiments/domain/{id}/quarantine/"),
    ("settings", "Members & settings", None),
]
FILE_NAMES = {"program": "PROGRAM.md", "setup": "SETUP.md"}


def _get_domain(request: HttpRequest, pk: int, action: str = "view") -> Domain:
    """404 for a domain the user may not see, 403 for an action they may not do (domains/permissions.py)."""
    return web_domain_get(request.user, pk, action)


@login_required
def domain_list(request: HttpRequest) -> HttpResponse:
    domains = domains_for_user(request.user).select_related("task")
    current = domain_current()
    if current is not None and not domain_may(request.user, current, "view"):
        current = None
    return render(request, "domains/domain_list.html", {"domains": domains, "current": current})


@login_required
@require_http_methods(["GET", "POST"])
def domain_new(request: HttpRequest) -> HttpResponse:
    form = DomainForm(request.POST or None)
    if request.method == "POST" and form.is_valid():
        try:
            domain = domain_create(**form.cleaned_data, owner=request.user)
        except DojoError as exc:
            form.add_error(None, str(exc))
        else:
            messages.success(request, f"Domain {domain.name} created. Describe the data in SETUP.md next.")
            return redirect(domain)
    return render(request, "domains/domain_form.html", {"form": form})


@login_required
def domain_detail(request: HttpRequest, pk: int) -> HttpResponse:
    domain = _get_domain(request, pk)
    tab = request.GET.get("tab", "overview")
    tabs = [
        {"key": key, "label": label, "url": url.format(id=domain.pk) if url else None}
        for key, label, url in DOMAIN_TABS
    ]
    if tab not in {t["key"] for t in tabs}:
        tab = "overview"
    role = domain_role(request.user, domain)
    context = {
        "domain": domain,
        "role": role,
        "may_edit": domain_may(request.user, domain, "edit"),
        "may_own": role == "owner",
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
        context["files"] = [
            {**_file_context(domain, which), "may_write": _may_write_file(request, domain, which)}
            for which in DOMAIN_FILES
        ]
    if tab == "settings":
        context.update(_settings_context(domain))
    return render(request, "domains/domain_detail.html", context)


def _may_write_file(request: HttpRequest, domain: Domain, which: str) -> bool:
    return domain_may(request.user, domain, _FILE_ACTIONS[which])


# PROGRAM.md is the researcher's brief (editors write it); SETUP.md describes the contract (owner).
_FILE_ACTIONS = {"program": "edit", "setup": "own"}


def _settings_context(domain: Domain, **forms_) -> dict:
    return {
        "members": domain.members.select_related("user"),
        "changes": domain.changes.select_related("user")[:50],
        "settings_form": forms_.get("settings_form") or DomainSettingsForm(initial=DomainSettingsForm.initial_for(domain)),
        "member_form": forms_.get("member_form") or DomainMemberForm(),
    }


def _settings_url(domain: Domain) -> str:
    return reverse("domains:detail", args=[domain.pk]) + "?tab=settings"


@login_required
@require_POST
def domain_settings(request: HttpRequest, pk: int) -> HttpResponse:
    """Owner only: the interpreter (checked in the sandbox), env vars and the holdout flag."""
    domain = _get_domain(request, pk, "own")
    form = DomainSettingsForm(request.POST)
    if form.is_valid():
        try:
            domain_update(domain=domain, **form.cleaned_data, user=request.user)
        except DojoError as exc:
            form.add_error(None, str(exc))
        else:
            messages.success(request, "Settings saved.")
            return redirect(_settings_url(domain))
    return _settings_page(request, domain, settings_form=form)


@login_required
@require_POST
def domain_member_add(request: HttpRequest, pk: int) -> HttpResponse:
    """Owner only: add a member or change their role."""
    domain = _get_domain(request, pk, "own")
    form = DomainMemberForm(request.POST)
    if form.is_valid():
        try:
            member = domain_member_set(domain=domain, **form.cleaned_data)
        except DojoError as exc:
            form.add_error(None, str(exc))
        else:
            messages.success(request, f"{member.user.username} is now a {member.role}.")
            return redirect(_settings_url(domain))
    return _settings_page(request, domain, member_form=form)


@login_required
@require_POST
def domain_member_delete(request: HttpRequest, pk: int, username: str) -> HttpResponse:
    """Owner only: remove a member."""
    domain = _get_domain(request, pk, "own")
    try:
        domain_member_remove(domain=domain, username=username)
    except DojoError as exc:
        messages.error(request, str(exc))
    else:
        messages.success(request, f"{username} removed.")
    return redirect(_settings_url(domain))


def _settings_page(request: HttpRequest, domain: Domain, **forms_) -> HttpResponse:
    tabs = [
        {"key": key, "label": label, "url": url.format(id=domain.pk) if url else None}
        for key, label, url in DOMAIN_TABS
    ]
    context = {
        "domain": domain, "role": "owner", "may_edit": True, "may_own": True, "task": domain.task_or_none,
        "tabs": tabs, "tab": "settings", "active_tab": tabs[-1], **_settings_context(domain, **forms_),
    }
    return render(request, "domains/domain_detail.html", context, status=422)


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
    domain = _get_domain(request, pk, _FILE_ACTIONS[which] if request.method == "POST" else "view")
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
        may_write = _may_write_file(request, domain, which)
        context = _file_context(domain, which, editing=may_write and request.GET.get("edit") == "1")
    context["may_write"] = _may_write_file(request, domain, which)
    return render(request, "domains/partials/domain_file.html", {"file": context})


# --- Workspace panel (overview tab): status, environment build with its live log, scan --------

WORKSPACE_ACTIONS = {"setup": "own", "scan": "edit", "suggest": "own", "sync": "own"}


def _workspace_panel(request: HttpRequest, domain: Domain, *, scan: dict | None = None, error: str = "",
                     notice: str = "") -> HttpResponse:
    status = domain_workspace_status(domain=domain)
    return render(request, "domains/partials/workspace.html", {
        "domain": domain, "status": status, "scan": scan, "error": error, "notice": notice,
        "may_own": domain_may(request.user, domain, "own"), "may_edit": domain_may(request.user, domain, "edit"),
        "building": status["environment"]["state"] == "building",
    })


@login_required
def domain_workspace(request: HttpRequest, pk: int) -> HttpResponse:
    """The workspace panel (htmx polls it every 2 s while an environment build runs)."""
    domain = _get_domain(request, pk)
    if not request.htmx:
        return redirect(domain)
    return _workspace_panel(request, domain)


@login_required
@require_POST
def domain_workspace_action(request: HttpRequest, pk: int, action: str) -> HttpResponse:
    """setup (owner: queue the environment build), scan (editor: data files and suggestions),
    suggest (owner: open the SETUP.md editor filled with suggestion ?n; saving it confirms),
    sync (owner: fetch the git workspace and check out `ref`, default the recorded one)."""
    if action not in WORKSPACE_ACTIONS:
        raise Http404("unknown workspace action")
    domain = _get_domain(request, pk, WORKSPACE_ACTIONS[action])
    scan, error, notice = None, "", ""
    try:
        if action == "setup":
            domain_env_request(domain=domain, run_setup_script=request.POST.get("run_setup_script") == "on")
            notice = "Environment build queued; its log appears below while it runs."
        elif action == "scan":
            scan = domain_workspace_scan(domain=domain)
        elif action == "sync":
            ref = request.POST.get("ref", "").strip()
            synced = domain_git_sync(domain=domain, ref=ref or None)
            notice = f"Checked out {synced['commit'][:12]} ({synced['ref'] or 'default branch'})."
            if synced["contract_files_changed"]:
                error = ("The new commit changes files the frozen contract imports ("
                         + ", ".join(synced["contract_files_changed"])
                         + "): experiments refuse to run until the task is unfrozen and frozen again.")
        else:
            suggestions = domain_workspace_scan(domain=domain)["suggestions"]
            try:
                chosen = suggestions[int(request.POST.get("n", "0"))]
            except (ValueError, IndexError):
                raise InvalidInput("that suggestion is gone; scan again") from None
            context = _file_context(domain, "setup", editing=True,
                                    form=DomainFileForm(initial={"text": chosen["setup_text"]}))
            context["may_write"] = True
            context["notice"] = "Filled from the scan: review, then save to confirm."
            if not request.htmx:
                return redirect(domain)
            return render(request, "domains/partials/domain_file.html", {"file": context})
    except DojoError as exc:
        error = str(exc)
    if not request.htmx:
        if error:
            messages.error(request, error)
        elif notice:
            messages.success(request, notice)
        return redirect(domain)
    return _workspace_panel(request, domain, scan=scan, error=error, notice=notice)


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
    hint = forms.CharField(required=False, max_length=4000)


def _task_panel(request: HttpRequest, domain: Domain, *, error: str = "", notice: str = "", forms_: dict | None = None) -> HttpResponse:
    task = domain.task_or_none
    context: dict = {
        "domain": domain, "task": task, "panel": True, "error": error, "notice": notice,
        "may_own": domain_may(request.user, domain, "own"),
    }
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
            job_active=task_job_active(task),
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
    domain = _get_domain(request, pk)
    if not request.htmx:
        return redirect(reverse("domains:detail", args=[domain.pk]) + "?tab=task")
    return _task_panel(request, domain)


@login_required
@require_POST
def task_action(request: HttpRequest, pk: int, action: str) -> HttpResponse:
    """One POST per action; errors become a message in the panel, never a 500."""
    if action not in TASK_ACTIONS:
        raise Http404("unknown task action")
    domain = _get_domain(request, pk, "own")
    error = notice = ""
    forms_: dict = {}
    try:
        task = task_for_domain(domain=domain)
        if action in ("generate", "verify", "freeze") and not tasks_inline():
            # DOJO_INLINE_TASKS=0: a worker runs the task's code; the panel polls the job.
            params: dict = {}
            if action == "generate":
                form = TaskGenerateForm(request.POST)
                if not form.is_valid():
                    raise InvalidInput("the hint is too long (at most 4000 characters)")
                params = {"method": form.cleaned_data["method"] or "auto", "hint": form.cleaned_data["hint"]}
            elif action == "freeze":
                override = request.POST.get("override_audit") == "on"
                reason = (request.POST.get("override_reason") or "").strip()[:2000]
                if override and not reason:
                    raise InvalidInput("Say why you freeze despite the leak audit's severe findings (the reason is recorded).")
                params = {"override_reason": reason if override else "", "by": request.user.get_username()}
            task_job_enqueue(task=task, kind=action, params=params)
            notice = f"{action.capitalize()} queued: a worker runs it."
        elif action == "generate":
            form = TaskGenerateForm(request.POST)
            if not form.is_valid():
                raise InvalidInput("the hint is too long (at most 4000 characters)")
            method = form.cleaned_data["method"] or "auto"
            tools = task_generate(task=task, method=method, hint=form.cleaned_data["hint"])
            notice = "Generated " + ", ".join(f"{t.name} v{t.version} ({t.origin})" for t in tools) + ". Verify them next."
        elif action == "verify":
            run = task_verify(task=task)
            notice = "Both tools passed verification. Freeze next." if run.ok else ""
            error = "" if run.ok else f"Verification failed: {len(run.errors)} problem(s), listed under each tool."
        elif action == "freeze":
            override = request.POST.get("override_audit") == "on"
            reason = (request.POST.get("override_reason") or "").strip()[:2000]
            if override and not reason:
                error = "Say why you freeze despite the leak audit's severe findings (the reason is recorded)."
            else:
                task = task_freeze(task=task, override_reason=reason if override else "", by=request.user.get_username())
                notice = f"Frozen: fingerprint {task.fingerprint[:12]}." + (" Leak audit overridden (recorded)." if task.audit_override else "")
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
    domain = _get_domain(request, pk)
    if not request.htmx:
        if error:
            messages.error(request, error)
        elif notice:
            messages.success(request, notice)
        return redirect(reverse("domains:detail", args=[domain.pk]) + "?tab=task")
    return _task_panel(request, domain, error=error, notice=notice, forms_=forms_)
