from django.db import models
from django.urls import reverse


class QuarantineState(models.TextChoices):
    NONE = "", "—"
    QUARANTINED = "quarantined", "Quarantined"
    CLEARED = "cleared", "Cleared by a person"
    CONFIRMED = "confirmed", "Confirmed as cheating"


class Experiment(models.Model):
    QuarantineState = QuarantineState

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
    family = models.CharField(
        max_length=100, blank=True,
        help_text='The model family named in the variables ("family" or "model"), for filtering.',
    )
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
    # --- What "best" means (experiments/ranking.py) and the audit (experiments/quarantine.py) ---
    cv_value = models.FloatField(
        null=True, blank=True,
        help_text="Out-of-fold primary metric the train code reported (a DOJO_CV line): untrusted, so it can "
        "only lower an experiment's rank value, never raise it.",
    )
    cv_rows = models.IntegerField(null=True, blank=True, help_text="Training rows the reported CV covered.")
    rank_value = models.FloatField(
        null=True, blank=True,
        help_text="What ranks this experiment: the mean over its configuration's seeds of each seed's score "
        "(validation, made worse by a worse reported CV). See experiments/ranking.py.",
    )
    seed_spread = models.FloatField(
        null=True, blank=True, help_text="Max − min of the scores over this configuration's seeds (≥ 2 seeds)."
    )
    seed_count = models.IntegerField(default=0, help_text="Completed seeds of this configuration (same code).")
    validation_ci = models.JSONField(
        default=dict, blank=True, help_text="Bootstrap 95% interval per metric on the validation rows: {metric: [lo, hi]}."
    )
    holdout_ci = models.JSONField(default=dict, blank=True, help_text="Same, on the holdout rows.")
    probe_of = models.ForeignKey(
        "self", null=True, blank=True, on_delete=models.SET_NULL, related_name="probes",
        help_text="An earlier experiment whose predictions this one changes in only a few rows.",
    )
    probe_rows = models.IntegerField(null=True, blank=True, help_text="Rows that differ from probe_of's predictions.")
    quarantine_state = models.CharField(
        max_length=20, choices=QuarantineState.choices, default="", blank=True,
        help_text="quarantined: out of every ranking until a person clears or confirms it.",
    )
    quarantine_reasons = models.JSONField(
        default=list, blank=True, help_text="The rules that fired: [{rule, detail}] (experiments/quarantine.py)."
    )
    quarantine_review = models.JSONField(
        default=dict, blank=True, help_text="The person's decision: {decision, reason, by, at}."
    )
    # --- Where it runs when it was queued (DOJO_DISPATCH=queue, experiments/services.py) ---
    worker_host = models.CharField(max_length=255, blank=True, help_text="Host of the process executing it.")
    worker_pid = models.IntegerField(null=True, blank=True, help_text="Pid of the process executing it.")
    heartbeat_at = models.DateTimeField(
        null=True, blank=True,
        help_text="Last sign of life of a queued experiment's worker; the reaper requeues it when this stops.",
    )
    attempts = models.IntegerField(
        default=0, help_text="Times a worker took it, or a dead cluster lost it (2: it was retried once)."
    )
    queue_task_id = models.CharField(
        max_length=64, blank=True, default="",
        help_text="Its entry on the experiments' queue; the reaper requeues it when a dead cluster took it.",
    )
    stop_requested = models.BooleanField(
        default=False, help_text="Asks the worker executing it to kill its trainer and end it `stopped`."
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
            # The reaper's look for queued experiments whose worker stopped beating.
            models.Index(fields=["state", "heartbeat_at"], name="exp_state_heartbeat_idx"),
            # Leaderboard sorts (experiments/analysis.py SORT_FIELDS): one index per sortable column,
            # led by the domain and carrying the two columns every leaderboard query filters on
            # (state, reproduction_of), so a page's ids come from the index alone. The table's rows
            # are wide (code, logs) and those columns sit behind them; without the covering index
            # a deep page read every row (674 ms by holdout at 10,000 rows).
            # "Best first" also leaves out quarantined rows (experiments.ranking.UNRANKED_STATES).
            models.Index(fields=["domain", "rank_value", "state", "reproduction_of", "quarantine_state"],
                         name="exp_lb_best_idx"),
            models.Index(fields=["domain", "primary_value", "state", "reproduction_of"], name="exp_lb_val_idx"),
            models.Index(fields=["domain", "holdout_primary_value", "state", "reproduction_of"],
                         name="exp_lb_holdout_idx"),
            models.Index(fields=["domain", "train_seconds", "state", "reproduction_of"], name="exp_lb_train_s_idx"),
            models.Index(fields=["domain", "created_at", "state", "reproduction_of"], name="exp_lb_created_idx"),
            models.Index(fields=["domain", "id", "state", "reproduction_of"], name="exp_lb_id_idx"),
            models.Index(fields=["domain", "cv_value", "state", "reproduction_of"], name="exp_lb_cv_idx"),
            models.Index(fields=["domain", "seed_spread", "state", "reproduction_of"], name="exp_lb_spread_idx"),
            # The leaderboard's family filter (a column: a JSON key cannot be indexed portably).
            models.Index(fields=["domain", "family", "state", "reproduction_of"], name="exp_lb_family_idx"),
            # The lineage tree and the leaderboard's count: every experiment's place by parent,
            # read from the index alone (experiments/analysis.py lineage_tree).
            models.Index(fields=["domain", "state", "reproduction_of", "parent", "primary_value"],
                         name="exp_tree_idx"),
            # The optimisation-history chart: all scored experiments in creation order, index only.
            models.Index(fields=["domain", "state", "created_at", "primary_value", "holdout_primary_value",
                                 "reproduction_of"], name="exp_history_idx"),
            # "Best" (experiments/ranking.py): a domain's completed, ranked experiments by rank value.
            models.Index(fields=["domain", "state", "rank_value"], name="exp_domain_rankvalue_idx"),
            # A configuration's seeds: same domain, same code.
            models.Index(fields=["domain", "code_sha256"], name="exp_domain_code_idx"),
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
        self.holdout_ci = {}
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
    sha256 = models.CharField(max_length=64, blank=True, help_text="Of the content; empty for artifacts kept before the shared storage.")
    storage_name = models.CharField(
        max_length=200, blank=True,
        help_text="The object's name in STORAGES['dojo'] (artifacts/<sha256[:2]>/<sha256>); empty: DOJO_HOME/artifacts/<id>/<path>.",
    )
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
    def filename(self) -> str:
        return self.path.rsplit("/", 1)[-1]

    @property
    def is_holdout(self) -> bool:
        """Written by evaluate() on the holdout rows: hidden wherever holdout values are."""
        return self.path.startswith("evaluate/holdout")

class Prediction(models.Model):
    """A compact copy of an experiment's test-row predictions (float32, zlib), kept trusted-side
    so a later experiment can be compared with it (probing detection, experiments/quarantine.py)."""

    experiment = models.OneToOneField(Experiment, on_delete=models.CASCADE, related_name="prediction")
    task_fingerprint = models.CharField(max_length=64, blank=True)
    kind = models.CharField(max_length=10, help_text="numeric (float32 values) or label (crc32 of each label)")
    rows = models.IntegerField()
    width = models.IntegerField(default=1)
    data = models.BinaryField()
    created_at = models.DateTimeField(auto_now_add=True)

    def __str__(self) -> str:
        return f"predictions of #{self.experiment_id}"
