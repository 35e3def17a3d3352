from django.conf import settings
from django.db import models
from django.urls import reverse


class AgentRun(models.Model):
    class Status(models.TextChoices):
        QUEUED = "queued", "Queued"
        RUNNING = "running", "Running"
        COMPLETED = "completed", "Completed"
        FAILED = "failed", "Failed"
        STOPPED = "stopped", "Stopped"

    TERMINAL = (Status.COMPLETED, Status.FAILED, Status.STOPPED)

    domain = models.ForeignKey("domains.Domain", on_delete=models.CASCADE, related_name="runs")
    created_by = models.ForeignKey(
        settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.SET_NULL, related_name="agent_runs",
        help_text="The run's tools act with this user's rights; empty: a management command (administrator).",
    )
    backend = models.CharField(max_length=20, help_text="builtin or claude")
    model = models.CharField(max_length=100, blank=True)
    prompt = models.TextField(blank=True, help_text="PROGRAM.md as it was when the run started.")
    status = models.CharField(max_length=20, choices=Status.choices, default=Status.QUEUED)
    max_turns = models.PositiveIntegerField(null=True, blank=True)
    max_experiments = models.PositiveIntegerField(null=True, blank=True)
    budget_usd = models.FloatField(null=True, blank=True)
    max_minutes = models.FloatField(null=True, blank=True)
    seed = models.IntegerField(default=0)
    cost_usd = models.FloatField(default=0)
    turns = models.PositiveIntegerField(default=0)
    stop_requested = models.BooleanField(default=False)
    heartbeat_at = models.DateTimeField(null=True, blank=True)
    queue_task_id = models.CharField(max_length=64, blank=True)
    worker_pid = models.IntegerField(null=True, blank=True)
    error = models.TextField(blank=True)
    result = models.JSONField(default=dict, blank=True)
    created_at = models.DateTimeField(auto_now_add=True)
    started_at = models.DateTimeField(null=True, blank=True)
    finished_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        ordering = ["-created_at"]
        indexes = [
            # The reaper looks for running runs with an old heartbeat.
            models.Index(fields=["status", "heartbeat_at"], name="run_status_heartbeat_idx"),
            models.Index(fields=["domain", "-created_at"], name="run_domain_created_idx"),
        ]

    def __str__(self) -> str:
        return f"run #{self.pk} ({self.backend}, {self.status})"

    def get_absolute_url(self) -> str:
        return reverse("agentrun:detail", args=[self.pk])

    @property
    def is_terminal(self) -> bool:
        return self.status in self.TERMINAL


class AgentEvent(models.Model):
    class Type(models.TextChoices):
        TEXT = "text", "Text"
        TOOL_CALL = "tool_call", "Tool call"
        TOOL_RESULT = "tool_result", "Tool result"
        EXPERIMENT = "experiment", "Experiment"
        KNOWLEDGE = "knowledge", "Knowledge"
        ERROR = "error", "Error"
        RESULT = "result", "Result"
        FINALIZED = "finalized", "Finalized"

    run = models.ForeignKey(AgentRun, on_delete=models.CASCADE, related_name="events")
    seq = models.PositiveIntegerField()
    type = models.CharField(max_length=20, choices=Type.choices)
    data = models.JSONField(default=dict, blank=True)
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        ordering = ["run", "seq"]
        constraints = [
            models.UniqueConstraint(fields=["run", "seq"], name="event_unique_seq"),
        ]
        # The unique constraint's index also serves "events of a run after a seq".
        indexes = [
            # The live page filtered by type ("experiments only") at 100,000 events, newest first.
            models.Index(fields=["run", "type", "seq"], name="event_run_type_seq_idx"),
        ]

    def __str__(self) -> str:
        return f"{self.run_id}:{self.seq} {self.type}"

    def get_absolute_url(self) -> str:
        return self.run.get_absolute_url() + f"#event-{self.seq}"

    def summary(self) -> str:
        """One readable line for the terminal and the live page."""
        d = self.data or {}
        if self.type == self.Type.TEXT:
            return str(d.get("text", ""))
        if self.type == self.Type.TOOL_CALL:
            args = d.get("arguments") or {}
            if d.get("name") == "run_experiment":
                return f"run_experiment: {str(args.get('hypothesis', ''))[:200]}"
            brief = ", ".join(f"{k}={str(v)[:40]}" for k, v in args.items() if k != "code")
            return f"{d.get('name')}({brief[:200]})"
        if self.type == self.Type.TOOL_RESULT:
            if d.get("ok"):
                return f"{d.get('name')} ok ({d.get('seconds', 0)} s)"
            return f"{d.get('name')} error: {str((d.get('result') or {}).get('error', ''))[:300]}"
        if self.type == self.Type.EXPERIMENT:
            if d.get("state") == "completed":
                value = d.get("primary_value")
                shown = f"{value:.6g}" if isinstance(value, int | float) else "-"
                return f"experiment #{d.get('experiment_id')}: {d.get('primary_metric')}={shown}" + (
                    "  ★ best so far" if d.get("is_best") else ""
                )
            return f"experiment #{d.get('experiment_id')} {d.get('state')}: {str(d.get('error', ''))[:200]}"
        if self.type == self.Type.KNOWLEDGE:
            return (
                f"knowledge #{d.get('atom_id')} {d.get('outcome')}: {str(d.get('claim', ''))[:200]} "
                f"(confidence {d.get('confidence')})"
            )
        if self.type == self.Type.ERROR:
            return str(d.get("error", ""))
        if self.type == self.Type.RESULT:
            best = d.get("best_value")
            best_text = f", best #{d.get('best_experiment_id')} {d.get('primary_metric')}={best:.6g}" if isinstance(best, int | float) else ""
            return (
                f"{d.get('status')}: {d.get('experiments', 0)} experiments{best_text}, "
                f"${d.get('cost_usd', 0):.4f}, {d.get('turns', 0)} turns — {d.get('reason', '')}"
            )
        return f"finalized ({d.get('status', '')})"
