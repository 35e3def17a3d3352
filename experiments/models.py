from django.db import models
from django.urls import reverse


class Experiment(models.Model):
    class State(models.TextChoices):
        PENDING = "pending", "Pending"
        RUNNING = "running", "Running"
        COMPLETED = "completed", "Completed"
        FAILED = "failed", "Failed"
        # Ended by a person's stop (of its run or the experiment): not the code's fault, so it is
        # kept out of failure counts.
        STOPPED = "stopped", "Stopped"
        ARCHIVED = "archived", "Archived"

    domain = models.ForeignKey("domains.Domain", on_delete=models.CASCADE, related_name="experiments")
    # Experiments may be started by an agent run or by a person (run is then null). The FK points
    # "up" to agentrun by string only; the experiments app never imports agentrun.
    run = models.ForeignKey(
        "agentrun.AgentRun", null=True, blank=True, on_delete=models.SET_NULL, related_name="experiments"
    )
    parent = models.ForeignKey(
        "self", null=True, blank=True, on_delete=models.SET_NULL, related_name="children"
    )
    # A re-run of another experiment's code (Reproduce): shown on the original's page, never as a
    # leaderboard entry of its own.
    reproduction_of = models.ForeignKey(
        "self", null=True, blank=True, on_delete=models.SET_NULL, related_name="reproductions"
    )
    hypothesis = models.TextField(blank=True)
    variables = models.JSONField(default=dict, blank=True)
    train_code = models.TextField()
    code_sha256 = models.CharField(max_length=64)
    state = models.CharField(max_length=20, choices=State.choices, default=State.PENDING)
    metrics = models.JSONField(default=dict, blank=True, help_text="Validation metrics: what the agent sees.")
    holdout_metrics = models.JSONField(default=dict, blank=True, help_text="Hidden from the agent.")
    primary_value = models.FloatField(null=True, blank=True, help_text="Validation primary metric.")
    holdout_primary_value = models.FloatField(null=True, blank=True)
    logged_metrics = models.JSONField(
        default=list, blank=True, help_text="Intermediate values from log_metrics; never scored."
    )
    logged_params = models.JSONField(default=dict, blank=True)
    error = models.TextField(blank=True)
    warnings = models.JSONField(default=list, blank=True)
    stdout_tail = models.TextField(blank=True)
    stderr_tail = models.TextField(blank=True)
    train_seconds = models.FloatField(null=True, blank=True)
    total_seconds = models.FloatField(null=True, blank=True)
    peak_memory_mb = models.FloatField(null=True, blank=True)
    seed = models.IntegerField(null=True, blank=True)
    data_fingerprint = models.CharField(max_length=64, blank=True)
    task_fingerprint = models.CharField(max_length=64, blank=True)
    environment = models.JSONField(default=dict, blank=True, help_text="Python and package versions.")
    isolation = models.CharField(max_length=20, blank=True, help_text="bwrap or fallback.")
    audit_trail = models.JSONField(
        default=list, blank=True,
        help_text="Runtime audit events of train() ({kind, detail}): files opened outside the snapshot, "
        "dataset loaders, subprocesses, sockets, ctypes, /proc. Bounded; observed inside the sandbox.",
    )
    code_flags = models.JSONField(
        default=list, blank=True,
        help_text="Static scan of the train code at submission ({line, kind, text}).",
    )
    provenance = models.JSONField(
        default=dict, blank=True, help_text="Where the code came from: git commit, environment lock sha256."
    )
    created_at = models.DateTimeField(auto_now_add=True)
    started_at = models.DateTimeField(null=True, blank=True)
    finished_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        ordering = ["-created_at"]
        indexes = [
            # The leaderboard: a domain's completed experiments ranked by primary value.
            models.Index(fields=["domain", "state", "primary_value"], name="exp_domain_rank_idx"),
            # The domain's experiment list, newest first.
            models.Index(fields=["domain", "-created_at"], name="exp_domain_created_idx"),
            # A run's experiments.
            models.Index(fields=["run", "state"], name="exp_run_state_idx"),
            # Leaderboard header sorts (experiments/analysis.py SORT_FIELDS): one index per
            # sortable column, led by the domain, so a deep page walks the index instead of
            # sorting every row (sorting by holdout without one took 674 ms at 10,000 rows).
            models.Index(fields=["domain", "primary_value"], name="exp_domain_val_idx"),
            models.Index(fields=["domain", "holdout_primary_value"], name="exp_domain_holdout_idx"),
            models.Index(fields=["domain", "train_seconds"], name="exp_domain_train_s_idx"),
            models.Index(fields=["domain", "id"], name="exp_domain_id_idx"),
        ]

    def __str__(self) -> str:
        return f"#{self.pk} {self.hypothesis[:60]}"

    def get_absolute_url(self) -> str:
        return reverse("experiments:detail", args=[self.pk])

    def holdout_blanked(self) -> "Experiment":
        """Blank the holdout values of this in-memory object (for a viewer from whom the owner hides
        them, domains.permissions.holdout_visible); never saved. Returns self."""
        self.holdout_metrics = {}
        self.holdout_primary_value = None
        if hasattr(self, "gap"):
            self.gap = None
        self._holdout_blanked = True
        return self


class Artifact(models.Model):
    experiment = models.ForeignKey(Experiment, on_delete=models.CASCADE, related_name="artifacts")
    path = models.CharField(max_length=500, help_text="Relative to the experiment's artifact folder.")
    size = models.BigIntegerField()
    content_type = models.CharField(max_length=100, blank=True)
    source = models.CharField(max_length=20, default="train", help_text="train or evaluate")
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        ordering = ["path"]
        constraints = [
            models.UniqueConstraint(fields=["experiment", "path"], name="artifact_unique_path"),
        ]

    def __str__(self) -> str:
        return self.path

    def get_absolute_url(self) -> str:
        return reverse("experiments:artifact", args=[self.experiment_id, self.pk])

    @property
    def is_holdout(self) -> bool:
        """Written by evaluate() on the holdout rows: hidden wherever holdout values are."""
        return self.path.startswith("evaluate/holdout")
