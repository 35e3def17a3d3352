from django import forms
from django.contrib import admin, messages
from django.http import HttpRequest
from django.urls import reverse
from django.utils.html import format_html

from dojo_site.errors import DojoError
from domains.generation import tool_code_check
from domains.models import (
    ApiToken,
    CurrentDomain,
    Domain,
    DomainChange,
    DomainMember,
    Task,
    TaskTool,
)
from domains.permissions import domain_may, domains_for_user
from domains.services import (
    domain_update,
    task_tools_save,
    token_revoke,
    workspace_python_check,
    workspace_python_normalize,
)


class DomainScopedAdmin(admin.ModelAdmin):
    """The admin asks domains/permissions.py too: a user lists the rows of the domains they see and
    changes only rows of domains where they have `change_action`. (Staff act as owner of every
    domain today, so this narrows nothing for them; it keeps the admin in step if that changes.)"""

    domain_lookup = "domain"  # the path from this model to its Domain
    change_action = "own"

    def _domain_of(self, obj) -> Domain | None:
        for part in self.domain_lookup.split("__"):
            obj = obj if part == "self" else getattr(obj, part, None)
        return obj

    def get_queryset(self, request: HttpRequest):
        qs = super().get_queryset(request)
        if request.user.is_superuser:
            return qs
        visible = domains_for_user(request.user)
        if self.domain_lookup == "self":
            return qs.filter(pk__in=visible)
        return qs.filter(**{f"{self.domain_lookup}__in": visible})

    def has_change_permission(self, request: HttpRequest, obj=None) -> bool:
        if not super().has_change_permission(request, obj):
            return False
        domain = self._domain_of(obj) if obj is not None else None
        return domain is None or domain_may(request.user, domain, self.change_action)

    def has_delete_permission(self, request: HttpRequest, obj=None) -> bool:
        if not super().has_delete_permission(request, obj):
            return False
        domain = self._domain_of(obj) if obj is not None else None
        return domain is None or domain_may(request.user, domain, "own")


class DomainAdminForm(forms.ModelForm):
    class Meta:
        model = Domain
        fields = "__all__"

    def clean(self) -> dict:
        data = super().clean()
        python = workspace_python_normalize(data.get("workspace_python") or "")
        if "workspace_python" in self.changed_data and python:
            try:
                workspace_python_check(python=python, workspace=self.instance.workspace_path)
            except DojoError as exc:
                self.add_error("workspace_python", str(exc))
        return data


class DomainMemberInline(admin.TabularInline):
    model = DomainMember
    extra = 1
    fields = ["user", "role", "created_at"]
    readonly_fields = ["created_at"]
    autocomplete_fields = ["user"]


class DomainChangeInline(admin.TabularInline):
    model = DomainChange
    extra = 0
    can_delete = False
    fields = ["created_at", "user", "field", "old_value", "new_value"]
    readonly_fields = fields

    def has_add_permission(self, request: HttpRequest, obj=None) -> bool:
        return False


# Changes of these go through domain_update, which records them in the domain's history.
DOMAIN_HISTORY_FORM_FIELDS = ("workspace_python", "env_vars")


@admin.register(Domain)
class DomainAdmin(DomainScopedAdmin):
    form = DomainAdminForm
    domain_lookup = "self"
    list_display = ["name", "owner", "status", "task_type", "task_frozen", "workspace_path", "created_at"]
    list_filter = ["status", "task__task_type", ("task__frozen_at", admin.EmptyFieldListFilter)]
    search_fields = ["name", "description", "workspace_path", "owner__username"]
    list_select_related = ["task", "owner"]
    readonly_fields = ["workspace_path", "program_path", "setup_path", "task_link", "created_at", "updated_at"]
    fields = [
        "name", "description", "status", "owner", "hide_holdout_from_viewers", "workspace_path", "program_path",
        "setup_path", "workspace_python", "env_vars", "git_url", "git_ref", "task_link", "created_at", "updated_at",
    ]
    autocomplete_fields = ["owner"]
    inlines = [DomainMemberInline, DomainChangeInline]

    def save_model(self, request: HttpRequest, obj: Domain, form, change: bool) -> None:
        tracked = {f: form.cleaned_data[f] for f in DOMAIN_HISTORY_FORM_FIELDS if change and f in form.changed_data}
        for field in tracked:
            setattr(obj, field, form.initial[field])  # domain_update applies them and records the change
        super().save_model(request, obj, form, change)
        if tracked:
            try:
                domain_update(domain=obj, **tracked, user=request.user)
            except DojoError as exc:
                self.message_user(request, f"Not changed: {exc}", messages.ERROR)

    # A domain comes with its task and files; only domain_create makes all three (web form, CLI, API).
    def has_add_permission(self, request: HttpRequest) -> bool:
        return False

    @admin.display(description="task type", ordering="task__task_type")
    def task_type(self, obj: Domain) -> str:
        task = obj.task_or_none
        return task.task_type if task else "-"

    @admin.display(description="frozen", boolean=True)
    def task_frozen(self, obj: Domain) -> bool | None:
        task = obj.task_or_none
        return task.is_frozen if task else None

    @admin.display(description="task")
    def task_link(self, obj: Domain) -> str:
        task = obj.task_or_none
        if task is None:
            return "-"
        return format_html('<a href="{}">{}</a>', reverse("admin:domains_task_change", args=[task.pk]), task)


class TaskToolInline(admin.TabularInline):
    model = TaskTool
    fields = ["name", "version", "is_current", "origin", "verified_ok", "verified_at", "created_at"]
    readonly_fields = fields
    extra = 0
    can_delete = False
    show_change_link = True

    def has_add_permission(self, request: HttpRequest, obj=None) -> bool:
        return False


# Written by generation / verification / freeze, never by hand.
TASK_MACHINE_FIELDS = [
    "domain", "contract_version", "frozen_at", "fingerprint", "data_fingerprint", "snapshot_path",
    "snapshot_info", "unfrozen_at", "unfreeze_reason", "created_at", "updated_at",
    # The leak audit is measured by verification and its override recorded by freeze, never typed in.
    "audit", "audit_override",
]


@admin.register(DomainChange)
class DomainChangeAdmin(DomainScopedAdmin):
    """The domain's history: read-only, written by domain_update."""

    list_display = ["created_at", "domain", "user", "field", "old_value", "new_value"]
    list_filter = ["field"]
    search_fields = ["domain__name", "user__username"]
    list_select_related = ["domain", "user"]
    readonly_fields = ["domain", "user", "field", "old_value", "new_value", "created_at"]

    def has_add_permission(self, request: HttpRequest) -> bool:
        return False

    def has_change_permission(self, request: HttpRequest, obj=None) -> bool:
        return False


@admin.register(Task)
class TaskAdmin(DomainScopedAdmin):
    list_display = ["domain", "task_type", "primary_metric", "direction", "is_frozen", "contract_version", "updated_at"]
    list_filter = ["task_type", "direction", ("frozen_at", admin.EmptyFieldListFilter)]
    search_fields = ["domain__name"]
    list_select_related = ["domain"]
    inlines = [TaskToolInline]

    def has_add_permission(self, request: HttpRequest) -> bool:
        return False

    def get_readonly_fields(self, request: HttpRequest, obj: Task | None = None) -> list[str]:
        # A frozen contract changes only by unfreezing (which the task pages do), never by an edit.
        if obj is not None and obj.is_frozen:
            return TASK_MACHINE_FIELDS + ["task_type", "primary_metric", "direction", "expected_metrics", "config"]
        return TASK_MACHINE_FIELDS

    @admin.display(description="frozen", boolean=True, ordering="frozen_at")
    def is_frozen(self, obj: Task) -> bool:
        return obj.is_frozen


TOOL_MACHINE_FIELDS = [
    "task", "name", "version", "is_current", "code_sha256", "entrypoint", "origin", "verified_ok",
    "verification_errors", "verification_sample", "verification_seconds", "verified_at",
    "verified_code_sha256", "raw_reply", "created_at",
]


class TaskToolForm(forms.ModelForm):
    # Code is kept byte for byte: its sha256 is part of the task's fingerprint.
    code = forms.CharField(widget=forms.Textarea(attrs={"rows": 24, "cols": 100}), strip=False)

    class Meta:
        model = TaskTool
        fields = ["code"]

    def clean_code(self) -> str:
        code = self.cleaned_data["code"]
        try:
            tool_code_check(name=self.instance.name, code=code)
        except DojoError as exc:
            raise forms.ValidationError(str(exc)) from None
        return code


@admin.register(TaskTool)
class TaskToolAdmin(DomainScopedAdmin):
    form = TaskToolForm
    domain_lookup = "task__domain"
    list_display = ["__str__", "task", "name", "version", "is_current", "origin", "verified_ok", "verified_at", "created_at"]
    list_filter = ["name", "origin", "is_current", "verified_ok"]
    search_fields = ["task__domain__name", "code"]
    list_select_related = ["task__domain"]

    def has_add_permission(self, request: HttpRequest) -> bool:
        return False

    def get_readonly_fields(self, request: HttpRequest, obj: TaskTool | None = None) -> list[str]:
        # Only the current version of an unfrozen task's tool can change; old versions are history.
        if obj is None or obj.task.is_frozen or not obj.is_current:
            return TOOL_MACHINE_FIELDS + ["code"]
        return TOOL_MACHINE_FIELDS

    def save_model(self, request: HttpRequest, obj: TaskTool, form, change: bool) -> None:
        if "code" not in form.changed_data:
            return
        # Never edit code in place: save a new version (the old one is kept) through the service.
        try:
            (tool,) = task_tools_save(task=obj.task, codes={obj.name: form.cleaned_data["code"]}, origin=TaskTool.Origin.HUMAN)
        except DojoError as exc:
            self.message_user(request, str(exc), messages.ERROR)
            return
        self.message_user(request, f"Saved as {tool}; verify the task again before freezing.", messages.INFO)


@admin.register(ApiToken)
class ApiTokenAdmin(admin.ModelAdmin):
    list_display = ["prefix", "name", "user", "created_at", "last_used_at", "revoked_at", "is_active"]
    list_filter = [("revoked_at", admin.EmptyFieldListFilter), "created_at"]
    search_fields = ["name", "prefix", "user__username"]
    list_select_related = ["user"]
    actions = ["revoke_selected"]

    def get_fields(self, request: HttpRequest, obj: ApiToken | None = None) -> list[str]:
        if obj is None:
            return ["user", "name"]
        return ["user", "name", "prefix", "created_at", "last_used_at", "revoked_at"]

    def get_readonly_fields(self, request: HttpRequest, obj: ApiToken | None = None) -> list[str]:
        if obj is None:
            return []
        return ["user", "prefix", "created_at", "last_used_at", "revoked_at"]

    def save_model(self, request: HttpRequest, obj: ApiToken, form, change: bool) -> None:
        if change:
            super().save_model(request, obj, form, change)
            return
        plain = obj.set_new_token()
        super().save_model(request, obj, form, change)
        # The only time the plain token exists: show it once, as dojo_token create prints it once.
        messages.warning(
            request,
            f"New API token for {obj.user}: {plain} — copy it now, it will not be shown again. "
            "Send it as 'Authorization: Bearer <token>'.",
        )

    @admin.display(description="active", boolean=True, ordering="revoked_at")
    def is_active(self, obj: ApiToken) -> bool:
        return obj.is_active

    @admin.action(description="Revoke the selected tokens")
    def revoke_selected(self, request: HttpRequest, queryset) -> None:
        tokens = list(queryset.filter(revoked_at__isnull=True))
        for token in tokens:
            token_revoke(token=token)
        self.message_user(request, f"Revoked {len(tokens)} token(s).", messages.SUCCESS)


@admin.register(CurrentDomain)
class CurrentDomainAdmin(admin.ModelAdmin):
    list_display = ["domain", "updated_at"]
    list_select_related = ["domain"]
    readonly_fields = ["updated_at"]

    # One row: `dojo_domain use NAME` writes it; the admin may repoint it.
    def has_add_permission(self, request: HttpRequest) -> bool:
        return not CurrentDomain.objects.exists()
