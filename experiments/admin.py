from django import forms
from django.contrib import admin
from django.db.models import QuerySet
from django.http import HttpRequest

from domains.admin import DomainScopedAdmin
from experiments.models import Artifact, Experiment


class ArtifactInline(admin.TabularInline):
    model = Artifact
    extra = 0
    can_delete = False
    fields = ["path", "size", "content_type", "source", "created_at"]
    readonly_fields = fields

    def has_add_permission(self, request: HttpRequest, obj=None) -> bool:
        return False


class ExperimentAdminForm(forms.ModelForm):
    """A person's verdict on a quarantined experiment: clear or confirm, with a reason (recorded)."""

    quarantine_decision = forms.ChoiceField(
        required=False, choices=[("", "—"), ("cleared", "Clear (it ranks again)"), ("confirmed", "Confirm (never ranks)")],
    )
    quarantine_reason = forms.CharField(required=False, widget=forms.Textarea(attrs={"rows": 2}), max_length=2000)

    class Meta:
        model = Experiment
        fields = "__all__"

    def clean(self):
        data = super().clean()
        if data.get("quarantine_decision") and not (data.get("quarantine_reason") or "").strip():
            self.add_error("quarantine_reason", "A reason is required to clear or confirm.")
        return data


@admin.register(Experiment)
class ExperimentAdmin(DomainScopedAdmin):
    change_action = "edit"
    form = ExperimentAdminForm
    list_display = ["id", "domain", "state", "primary_value", "holdout_primary_value", "quarantine_state",
                    "short_hypothesis", "run", "isolation", "created_at"]
    list_filter = ["state", "quarantine_state", "domain", "isolation"]
    search_fields = ["hypothesis", "error", "code_sha256"]
    list_select_related = ["domain", "run"]
    date_hierarchy = "created_at"
    raw_id_fields = ["parent", "run"]
    inlines = [ArtifactInline]
    actions = ["archive"]
    # Everything the harness measured is a record: only the hypothesis and the state (archive)
    # are a curator's to change. Experiments are created by running them, never in the admin.
    readonly_fields = [
        "domain", "run", "parent", "variables", "train_code", "code_sha256", "metrics", "holdout_metrics",
        "primary_value", "holdout_primary_value", "logged_metrics", "logged_params", "error", "warnings",
        "stdout_tail", "stderr_tail", "train_seconds", "total_seconds", "peak_memory_mb", "seed",
        "data_fingerprint", "task_fingerprint", "environment", "isolation", "created_at", "started_at",
        "finished_at", "cv_value", "cv_rows", "rank_value", "seed_spread", "seed_count", "validation_ci",
        "holdout_ci", "probe_of", "probe_rows", "quarantine_state", "quarantine_reasons", "quarantine_review",
        "code_flags", "audit_trail", "worker_host", "worker_pid", "heartbeat_at", "attempts", "queue_task_id", "stop_requested",
    ]

    def save_model(self, request: HttpRequest, obj: Experiment, form, change: bool) -> None:
        super().save_model(request, obj, form, change)
        decision = form.cleaned_data.get("quarantine_decision")
        if decision:
            from experiments.quarantine import quarantine_review

            quarantine_review(experiment=obj, decision=decision, reason=form.cleaned_data["quarantine_reason"],
                              by=request.user.get_username())

    def has_add_permission(self, request: HttpRequest) -> bool:
        return False

    @admin.display(description="hypothesis")
    def short_hypothesis(self, obj: Experiment) -> str:
        return obj.hypothesis[:80]

    @admin.action(description="Archive (listed only when filtering by state archived)")
    def archive(self, request: HttpRequest, queryset: QuerySet[Experiment]) -> None:
        done = queryset.exclude(state__in=[Experiment.State.RUNNING, Experiment.State.PENDING]).update(
            state=Experiment.State.ARCHIVED
        )
        self.message_user(request, f"Archived {done} experiment(s); running ones were left alone.")
