"""What `GET /api/config` and `dojo_config show` print: the settings that are safe to show.

An allow-list, never a deny-list: a setting stays private until it is named here, so the
SECRET_KEY, API keys and tokens, DATABASE_URL (it may hold a password) and MLFLOW_TRACKING_URI
(it may hold credentials) cannot leak by being forgotten. Values are plain JSON (paths as
strings); the database is described by its engine only.
"""

from __future__ import annotations

import platform
from importlib import metadata
from pathlib import Path
from typing import Any

from django.conf import settings

PUBLIC_SETTINGS = (
    "DOJO_HOME",
    "DOJO_CACHE_DIR",
    "DOJO_SHARED_STORAGE_DIR",
    "DOJO_BASE_URL",
    "DEBUG",
    "DOJO_DEFAULT_BACKEND",
    "DOJO_CPU_SHARE",
    "DOJO_RUN_MAX_SECONDS",
    "DOJO_TRAIN_TIMEOUT_SECONDS",
    "DOJO_TRAIN_MEMORY_MB",
    "DOJO_TRAIN_MAX_PROCESSES",
    "DOJO_TRAIN_MAX_FILE_MB",
    "DOJO_ARTIFACTS_MAX_FILE_MB",
    "DOJO_ARTIFACTS_MAX_TOTAL_MB",
    "DOJO_EVALUATE_TIMEOUT_SECONDS",
    "DOJO_SANDBOX",
    "DOJO_POOL_MAX",
    "DOJO_POOL_IDLE_SECONDS",
    "DOJO_TOOLGEN_MODEL",
    "DOJO_CLAUDE_MODEL",
    "DOJO_CLAUDE_ALLOW_WRITE_TOOLS",
    "DOJO_CLAUDE_SANDBOX",
    "DOJO_TRACKING",
    "DOJO_MLFLOW_EXPERIMENT_PREFIX",
    "DOJO_MLFLOW_ARTIFACTS",
    "DOJO_WORKER_STOP_SECONDS",
    "DOJO_HEARTBEAT_TIMEOUT_SECONDS",
    "DOJO_KNOWLEDGE_SIMILARITY",
)


def dojo_version() -> str:
    """Dojo's version: the installed package's, else pyproject.toml's."""
    try:
        return metadata.version("dojo")
    except metadata.PackageNotFoundError:
        pyproject = Path(settings.BASE_DIR) / "pyproject.toml"
        for line in pyproject.read_text(encoding="utf-8").splitlines():
            if line.startswith("version"):
                return line.split("=", 1)[1].strip().strip('"')
    return "unknown"


def _plain(value: Any) -> Any:
    if isinstance(value, Path):
        return str(value)
    if isinstance(value, bool | int | float | str) or value is None:
        return value
    return str(value)


def config_public() -> dict[str, Any]:
    """Dojo's version, the runtime, the database engine, the sandbox in force and every
    PUBLIC_SETTINGS value present."""
    from dojo_site.claude import claude_unavailable_reason
    from domains.sandbox import sandbox_isolation

    engine = settings.DATABASES["default"]["ENGINE"].rsplit(".", 1)[-1]
    out: dict[str, Any] = {
        "version": dojo_version(),
        "python": platform.python_version(),
        "django": metadata.version("django"),
        "database_engine": engine,
        "isolation": sandbox_isolation(getattr(settings, "DOJO_SANDBOX", "") or None),
        "claude_available": claude_unavailable_reason() is None,
        "mlflow_tracking_uri_set": bool(getattr(settings, "MLFLOW_TRACKING_URI", "")),
    }
    for name in PUBLIC_SETTINGS:
        if hasattr(settings, name):
            out[name] = _plain(getattr(settings, name))
    return out
