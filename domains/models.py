from pathlib import Path

from django.conf import settings
from django.db import models
from django.urls import reverse

from dojo_site.auth import token_generate, token_hash


class Domain(models.Model):
    class Status(models.TextChoices):
        ACTIVE = "active", "Active"
        PAUSED = "paused", "Paused"
        ARCHIVED = "archived", "Archived"

    name = models.CharField(
        max_length=100, unique=True, help_text="Short unique name, used by the CLI (--domain NAME)."
    )
    description = models.TextField(blank=True)
    status = models.CharField(max_length=20, choices=Status.choices, default=Status.ACTIVE)
    workspace_path = models.CharField(
        max_length=500, help_text="Absolute path of the user's data/repository folder."
    )
    git_url = models.CharField(max_length=500, blank=True, help_text="Optional git source of the workspace.")
    git_ref = models.CharField(max_length=200, blank=True)
    git_commit = models.CharField(
        max_length=64, blank=True, help_text="The commit the git workspace is checked out at (clone or sync)."
    )
    env_python = models.CharField(
        max_length=500, blank=True,
        help_text="Interpreter of the environment built by `dojo_domain setup` (empty: none built).",
    )
    env_lock = models.TextField(blank=True, help_text="Exact package versions of the built environment.")
    env_state = models.CharField(
        max_length=20, blank=True, choices=[("building", "Building"), ("ready", "Ready"), ("failed", "Failed")],
        help_text="Of the last environment build; a failed build keeps the previous environment.",
    )
    env_log = models.TextField(blank=True, help_text="Tail of the last environment build's log.")
    env_error = models.TextField(blank=True)
    env_built_at = models.DateTimeField(null=True, blank=True)
    workspace_python = models.CharField(
        max_length=500, blank=True, help_text="Interpreter for the trainer; empty means Dojo's own."
    )
    env_vars = models.JSONField(
        default=dict, blank=True, help_text="Extra environment variables given to the trainer."
    )
    owner = models.ForeignKey(
        settings.AUTH_USER_MODEL,
        null=True,
        blank=True,
        on_delete=models.SET_NULL,
        related_name="owned_domains",
        help_text="Manages the workspace, interpreter, env vars, freezing and members. Empty: staff only.",
    )
    hide_holdout_from_viewers = models.BooleanField(
        default=False, help_text="Viewers see validation scores only; holdout values are blanked for them."
    )
    program_path = models.CharField(max_length=500, help_text="Absolute path of PROGRAM.md.")
    setup_path = models.CharField(max_length=500, help_text="Absolute path of SETUP.md.")
    created_at = models.DateTimeField(auto_now_add=True)
    updated_at = models.DateTimeField(auto_now=True)

    class Meta:
        ordering = ["name"]

    def __str__(self) -> str:
        return self.name

    def get_absolute_url(self) -> str:
        return reverse("domains:detail", args=[self.pk])

    @property
    def workspace(self) -> Path:
        return Path(self.workspace_path)

    @property
    def trainer_python(self) -> str:
        """The trainer's interpreter: the one the user set, else the environment `dojo_domain setup`
        built, else Dojo's own. (The evaluator always runs in Dojo's own.)"""
        import sys

        return self.workspace_python or self.env_python or sys.executable

    def file_path(self, which: str) -> Path:
        """PROGRAM.md for "program", SETUP.md for "setup"."""
        if which == "program":
            return Path(self.program_path)
        if which == "setup":
            return Path(self.setup_path)
        raise ValueError(f"unknown domain file {which!r}; expected 'program' or 'setup'")

    @property
    def task_or_none(self) -> "Task | None":
        try:
            return self.task
        except Task.DoesNotExist:
            return None

    def summary(self) -> dict:
        """Plain data for `--json` output and logs."""
        task = self.task_or_none
        return {
            "id": self.pk,
            "name": self.name,
            "description": self.description,
            "status": self.status,
            "owner": self.owner.username if self.owner_id else None,
            "workspace_path": self.workspace_path,
            "program_path": self.program_path,
            "setup_path": self.setup_path,
            "git_url": self.git_url,
            "git_ref": self.git_ref,
            "git_commit": self.git_commit,
            "env_python": self.env_python,
            "env_state": self.env_state,
            "created_at": self.created_at.isoformat() if self.created_at else None,
            "task": None if task is None else {
                "task_type": task.task_type,
                "primary_metric": task.primary_metric,
                "direction": task.direction,
                "expected_metrics": task.expected_metrics,
                "config": task.config,
                "frozen": task.is_frozen,
                "frozen_at": task.frozen_at.isoformat() if task.frozen_at else None,
                "fingerprint": task.fingerprint,
            },
        }


class DomainMember(models.Model):
    """A user's role on a domain other than its owner's (see domains/permissions.py)."""

    class Role(models.TextChoices):
        VIEWER = "viewer", "Viewer"
        EDITOR = "editor", "Editor"

    domain = models.ForeignKey(Domain, on_delete=models.CASCADE, related_name="members")
    user = models.ForeignKey(settings.AUTH_USER_MODEL, on_delete=models.CASCADE, related_name="domain_memberships")
    role = models.CharField(max_length=20, choices=Role.choices, default=Role.VIEWER)
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        ordering = ["domain", "user__username"]
        constraints = [
            models.UniqueConstraint(fields=["domain", "user"], name="domainmember_unique_user"),
        ]

    def __str__(self) -> str:
        return f"{self.user} ({self.role}) on {self.domain.name}"

    def get_absolute_url(self) -> str:
        return self.domain.get_absolute_url() + "#members"


class DomainChange(models.Model):
    """One change of a setting that decides what runs in the sandbox (interpreter, workspace, env vars),
    kept so the domain's history shows who changed what and when."""

    domain = models.ForeignKey(Domain, on_delete=models.CASCADE, related_name="changes")
    user = models.ForeignKey(
        settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.SET_NULL, related_name="+",
        help_text="Empty: a management command (local administrator).",
    )
    field = models.CharField(max_length=50)
    old_value = models.TextField(blank=True)
    new_value = models.TextField(blank=True)
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        ordering = ["-created_at", "-pk"]

    def __str__(self) -> str:
        return f"{self.domain.name}: {self.field} changed"

    def get_absolute_url(self) -> str:
        return self.domain.get_absolute_url() + "#history"


class Task(models.Model):
    class TaskType(models.TextChoices):
        REGRESSION = "regression", "Regression"
        BINARY = "binary", "Binary classification"
        MULTICLASS = "multiclass", "Multiclass classification"

    class Direction(models.TextChoices):
        MINIMIZE = "minimize", "Minimize"
        MAXIMIZE = "maximize", "Maximize"

    domain = models.OneToOneField(Domain, on_delete=models.CASCADE, related_name="task")
    task_type = models.CharField(max_length=20, choices=TaskType.choices)
    primary_metric = models.CharField(max_length=50)
    direction = models.CharField(max_length=10, choices=Direction.choices)
    expected_metrics = models.JSONField(default=list, help_text="Exactly the keys evaluate must return.")
    config = models.JSONField(
        default=dict,
        blank=True,
        help_text="data_path, target_column, id_columns, test_ratio, seed, holdout_ratio, limits…",
    )
    contract_version = models.PositiveIntegerField(default=1)
    frozen_at = models.DateTimeField(null=True, blank=True)
    fingerprint = models.CharField(
        max_length=64, blank=True, help_text="sha256 over the frozen tool code and contract version."
    )
    data_fingerprint = models.CharField(max_length=64, blank=True, help_text="sha256 of the snapshot.")
    snapshot_path = models.CharField(max_length=500, blank=True)
    snapshot_info = models.JSONField(default=dict, blank=True, help_text="Shapes, dtypes and sizes.")
    contract_files = models.JSONField(
        default=dict, blank=True,
        help_text="Workspace source files the frozen tools import (relative path → sha256); in the fingerprint.",
    )
    unfrozen_at = models.DateTimeField(null=True, blank=True)
    unfreeze_reason = models.TextField(blank=True)
    audit = models.JSONField(
        default=list, blank=True,
        help_text="Leak audit of the verified contract ({check, severity, detail}); see domains/audit.py.",
    )
    audit_override = models.JSONField(
        default=dict, blank=True,
        help_text="Who froze despite severe audit findings, when and why ({reason, by, at}).",
    )
    setup_notes = models.JSONField(
        default=dict, blank=True,
        help_text="What the last generation read from SETUP.md and the hint: {understood, not_understood, hint}.",
    )
    job = models.JSONField(
        default=dict, blank=True,
        help_text="The last queued verify/freeze/generate: {kind, state: queued|running|done|failed, error, "
        "result, queued_at, started_at, finished_at} (DOJO_INLINE_TASKS=False).",
    )
    created_at = models.DateTimeField(auto_now_add=True)
    updated_at = models.DateTimeField(auto_now=True)

    def __str__(self) -> str:
        return f"{self.domain.name} ({self.task_type})"

    def get_absolute_url(self) -> str:
        return reverse("domains:detail", args=[self.domain_id]) + "#task"

    @property
    def is_frozen(self) -> bool:
        return self.frozen_at is not None


class TaskTool(models.Model):
    """One version of a contract tool. Saving new code adds a row; old versions are kept."""

    class Name(models.TextChoices):
        LOAD_DATA = "load_data", "load_data"
        EVALUATE = "evaluate", "evaluate"

    class Origin(models.TextChoices):
        TEMPLATE = "template", "Template"
        CLAUDE = "claude", "Claude"
        HUMAN = "human", "Human"

    task = models.ForeignKey(Task, on_delete=models.CASCADE, related_name="tools")
    name = models.CharField(max_length=20, choices=Name.choices)
    version = models.PositiveIntegerField(default=1)
    is_current = models.BooleanField(default=True)
    code = models.TextField()
    code_sha256 = models.CharField(max_length=64)
    entrypoint = models.CharField(max_length=100)
    origin = models.CharField(max_length=20, choices=Origin.choices)
    verified_ok = models.BooleanField(null=True, help_text="None until verified.")
    verification_errors = models.JSONField(default=list, blank=True)
    verification_sample = models.JSONField(default=dict, blank=True)
    verification_seconds = models.FloatField(null=True, blank=True)
    verified_at = models.DateTimeField(null=True, blank=True)
    verified_code_sha256 = models.CharField(
        max_length=64, blank=True, help_text="The code the verification ran on; freeze needs it to match."
    )
    raw_reply = models.TextField(blank=True, help_text="Generator's raw reply, kept for the user.")
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        ordering = ["task", "name", "-version"]
        constraints = [
            models.UniqueConstraint(fields=["task", "name", "version"], name="tasktool_unique_version"),
            models.UniqueConstraint(
                fields=["task", "name"],
                condition=models.Q(is_current=True),
                name="tasktool_one_current",
            ),
        ]

    def __str__(self) -> str:
        return f"{self.name} v{self.version} ({self.task.domain.name})"

    def get_absolute_url(self) -> str:
        return self.task.get_absolute_url()

    @property
    def is_verified(self) -> bool:
        """Verified with the code it has now (editing after verification needs a new one)."""
        return bool(self.verified_ok) and self.verified_code_sha256 == self.code_sha256


class ApiToken(models.Model):
    """A bearer token for the API. Only its sha256 is stored; the plain token is shown once."""

    user = models.ForeignKey(settings.AUTH_USER_MODEL, on_delete=models.CASCADE, related_name="api_tokens")
    name = models.CharField(max_length=100, blank=True)
    token_hash = models.CharField(max_length=64, unique=True, editable=False)
    prefix = models.CharField(max_length=12, editable=False, help_text="First characters, to recognise it.")
    created_at = models.DateTimeField(auto_now_add=True)
    last_used_at = models.DateTimeField(null=True, blank=True)
    revoked_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        ordering = ["-created_at"]

    def __str__(self) -> str:
        return f"{self.prefix}… ({self.user})"

    def get_absolute_url(self) -> str:
        return reverse("admin:domains_apitoken_change", args=[self.pk])

    @property
    def is_active(self) -> bool:
        return self.revoked_at is None

    def set_new_token(self) -> str:
        """Give this row a fresh token; return the plain token (only its hash is kept)."""
        plain = token_generate()
        self.token_hash = token_hash(plain)
        self.prefix = plain[:12]
        return plain


class CurrentDomain(models.Model):
    """The CLI's "current domain" (dojo_domain use NAME): one row, shared by every terminal."""

    domain = models.ForeignKey(Domain, on_delete=models.CASCADE)
    updated_at = models.DateTimeField(auto_now=True)

    def __str__(self) -> str:
        return f"current: {self.domain.name}"

    def get_absolute_url(self) -> str:
        return self.domain.get_absolute_url()
