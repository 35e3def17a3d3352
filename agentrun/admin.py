from django.contrib import admin, messages
from django.db.models import QuerySet
from django.http import HttpRequest

from agentrun.models import AgentEvent, AgentRun
from agentrun.services import run_stop_request
from dojo_site.errors import DojoError
from domains.admin import DomainScopedAdmin


class AgentEventInline(admin.TabularInline):
    model = AgentEvent
    extra = 0
    fields = ["seq", "type", "data", "created_at"]
    readonly_fields = fields
    ordering = ["seq"]
    can_delete = False
    show_change_link = True

    def has_add_permission(self, request: HttpRequest, obj: AgentRun | None = None) -> bool:
        return False


@admin.register(AgentRun)
class AgentRunAdmin(DomainScopedAdmin):
    change_action = "edit"
    list_display = ["id", "domain", "backend", "status", "cost_usd", "turns", "stop_requested", "heartbeat_at", "created_at"]
    list_filter = ["status", "backend", "domain"]
    list_select_related = ["domain"]
    search_fields = ["domain__name", "error"]
    date_hierarchy = "created_at"
    # Everything here is written by the run loop; stopping goes through the action.
    readonly_fields = [
        "domain", "created_by", "backend", "model", "prompt", "status", "max_turns", "max_experiments", "budget_usd",
        "max_minutes", "seed", "cost_usd", "turns", "stop_requested", "heartbeat_at", "queue_task_id",
        "worker_pid", "error", "result", "created_at", "started_at", "finished_at",
    ]
    inlines = [AgentEventInline]
    actions = ["request_stop"]

    def has_add_permission(self, request: HttpRequest) -> bool:
        # Runs start through run_start (web form, API, dojo_run), which checks the task is frozen.
        return False

    @admin.action(description="Stop the selected runs")
    def request_stop(self, request: HttpRequest, queryset: QuerySet[AgentRun]) -> None:
        stopped = 0
        for run in queryset:
            try:
                run_stop_request(run=run)
                stopped += 1
            except DojoError as exc:
                self.message_user(request, str(exc), messages.WARNING)
        if stopped:
            self.message_user(request, f"Stop requested for {stopped} run(s).", messages.SUCCESS)


@admin.register(AgentEvent)
class AgentEventAdmin(DomainScopedAdmin):
    domain_lookup = "run__domain"
    list_display = ["id", "run", "seq", "type", "created_at"]
    list_filter = ["type"]
    list_select_related = ["run"]
    readonly_fields = ["run", "seq", "type", "data", "created_at"]

    def has_add_permission(self, request: HttpRequest) -> bool:
        return False

    def has_change_permission(self, request: HttpRequest, obj: AgentEvent | None = None) -> bool:
        return False
