"""Dojo settings: one file, driven by environment variables with local defaults.

Every variable is listed with its meaning in .env.example.
"""

import os
import secrets
from pathlib import Path
from urllib.parse import unquote, urlparse

from django.core.exceptions import ImproperlyConfigured

BASE_DIR = Path(__file__).resolve().parent.parent


def env_str(name: str, default: str) -> str:
    return os.environ.get(name, default)


def env_bool(name: str, default: bool) -> bool:
    value = os.environ.get(name)
    if value is None or value == "":
        return default
    if value.lower() in ("1", "true", "yes", "on"):
        return True
    if value.lower() in ("0", "false", "no", "off"):
        return False
    raise ImproperlyConfigured(f"{name} must be a boolean (true/false), got {value!r}")


def env_int(name: str, default: int) -> int:
    value = os.environ.get(name)
    if value is None or value == "":
        return default
    try:
        return int(value)
    except ValueError:
        raise ImproperlyConfigured(f"{name} must be an integer, got {value!r}") from None


def env_float(name: str, default: float) -> float:
    value = os.environ.get(name)
    if value is None or value == "":
        return default
    try:
        return float(value)
    except ValueError:
        raise ImproperlyConfigured(f"{name} must be a number, got {value!r}") from None


DOJO_HOME = Path(env_str("DOJO_HOME", str(BASE_DIR / "var"))).resolve()
DOJO_HOME.mkdir(parents=True, exist_ok=True)

# Shared versus per-machine state (docs/cluster.md). Durable things every machine
# must see (published task snapshots, workspace bundles, artifacts) go through the "dojo" storage in
# STORAGES, named by content; by default a folder under DOJO_HOME, so one machine works as before. A
# cluster points DOJO_SHARED_STORAGE_DIR at a shared folder, or replaces STORAGES["dojo"] with a
# django-storages backend (S3 and the like). DOJO_CACHE_DIR is this machine's own: snapshots fetched
# from the storage, warm-pool slots and their locks, job folders and their trash, the queue's stats
# cache, scratch; never put it on a shared file system. Both folders exist before any sandbox starts,
# so every sandbox's hidden paths cover them (bwrap hides only paths that exist).
DOJO_SHARED_STORAGE_DIR = Path(env_str("DOJO_SHARED_STORAGE_DIR", str(DOJO_HOME / "shared"))).resolve()
DOJO_CACHE_DIR = Path(env_str("DOJO_CACHE_DIR", str(DOJO_HOME / "cache"))).resolve()
DOJO_SHARED_STORAGE_DIR.mkdir(parents=True, exist_ok=True)
DOJO_CACHE_DIR.mkdir(parents=True, exist_ok=True)
STORAGES = {
    "default": {"BACKEND": "django.core.files.storage.FileSystemStorage"},
    "staticfiles": {"BACKEND": "django.contrib.staticfiles.storage.StaticFilesStorage"},
    # Archives hold sealed labels: owner-only files, so a sandboxed process under another uid cannot
    # read them even where the folder is visible. Artifacts: artifacts/<sha256[:2]>/<sha256>.
    "dojo": {
        "BACKEND": "django.core.files.storage.FileSystemStorage",
        "OPTIONS": {"location": str(DOJO_SHARED_STORAGE_DIR), "file_permissions_mode": 0o600,
                    "directory_permissions_mode": 0o700},
    },
}


def secret_key_load(home: Path) -> str:
    """Use SECRET_KEY when set; otherwise generate one once and keep it in home/secret_key (0600)."""
    if os.environ.get("SECRET_KEY"):
        return os.environ["SECRET_KEY"]
    key_file = home / "secret_key"
    try:
        # O_EXCL: when two processes start at once, one writes and the other reads its key.
        fd = os.open(key_file, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        pass
    else:
        with os.fdopen(fd, "w") as handle:
            handle.write(secrets.token_urlsafe(50))
    return key_file.read_text().strip()


SECRET_KEY = secret_key_load(DOJO_HOME)
# Off unless asked for: Django's debug pages show settings and source to whoever hits an error.
# dojo_serve still serves static files with DEBUG off (runserver --insecure; docs/decisions.md).
DEBUG = env_bool("DJANGO_DEBUG", False)
ALLOWED_HOSTS = [h.strip() for h in env_str("ALLOWED_HOSTS", "127.0.0.1,localhost,testserver").split(",") if h.strip()]
CSRF_TRUSTED_ORIGINS = [o.strip() for o in env_str("CSRF_TRUSTED_ORIGINS", "").split(",") if o.strip()]

INSTALLED_APPS = [
    "django.contrib.admin",
    "django.contrib.auth",
    "django.contrib.contenttypes",
    "django.contrib.sessions",
    "django.contrib.messages",
    "django.contrib.staticfiles",
    "django_htmx",
    # Only for its bundled Swagger UI / ReDoc assets: /api/docs works offline (no CDN).
    "ninja",
    # Before django_q: its `qcluster` command is replaced by dojo_site's (a clean stop on SIGTERM).
    "dojo_site",
    "django_q",
    "domains",
    "experiments",
    "knowledge",
    "agentrun",
]

MIDDLEWARE = [
    "django.middleware.security.SecurityMiddleware",
    "django.contrib.sessions.middleware.SessionMiddleware",
    "django.middleware.common.CommonMiddleware",
    "django.middleware.csrf.CsrfViewMiddleware",
    "django.contrib.auth.middleware.AuthenticationMiddleware",
    "django.contrib.messages.middleware.MessageMiddleware",
    "django.middleware.clickjacking.XFrameOptionsMiddleware",
    "django_htmx.middleware.HtmxMiddleware",
]

ROOT_URLCONF = "dojo_site.urls"

TEMPLATES = [
    {
        "BACKEND": "django.template.backends.django.DjangoTemplates",
        "DIRS": [BASE_DIR / "templates"],
        "APP_DIRS": True,
        "OPTIONS": {
            "context_processors": [
                "django.template.context_processors.request",
                "django.contrib.auth.context_processors.auth",
                "django.contrib.messages.context_processors.messages",
            ],
        },
    },
]

WSGI_APPLICATION = "dojo_site.wsgi.application"
ASGI_APPLICATION = "dojo_site.asgi.application"


def database_from_url(url: str) -> dict:
    """Parse DATABASE_URL: sqlite:///relative/path, sqlite:////absolute/path or
    postgres://user:pass@host:port/name (postgresql:// too; needs `pip install .[postgres]`)."""
    parsed = urlparse(url)
    if parsed.scheme == "sqlite":
        # sqlite:///relative/file or sqlite:////absolute/file
        path = unquote(parsed.path)[1:]
        if not path:
            raise ImproperlyConfigured("DATABASE_URL sqlite:/// needs a file path, e.g. sqlite:///var/dojo.sqlite3")
        return _sqlite_database(Path(path).resolve())
    if parsed.scheme in ("postgres", "postgresql"):
        if not parsed.path.lstrip("/"):
            raise ImproperlyConfigured("DATABASE_URL for postgres needs a database name: postgres://user:pass@host:5432/dojo")
        return {
            "ENGINE": "dojo_site.db.postgresql",  # strips NUL, see dojo_site/db
            "NAME": unquote(parsed.path.lstrip("/")),
            "USER": unquote(parsed.username or ""),
            "PASSWORD": unquote(parsed.password or ""),
            "HOST": parsed.hostname or "",
            "PORT": str(parsed.port or ""),
            "CONN_MAX_AGE": 60,
            "CONN_HEALTH_CHECKS": True,
        }
    raise ImproperlyConfigured(f"DATABASE_URL scheme {parsed.scheme!r} is not supported (use sqlite or postgres)")


def _sqlite_database(path: Path) -> dict:
    return {
        "ENGINE": "dojo_site.db.sqlite3",  # strips NUL, see dojo_site/db
        "NAME": path,
        "OPTIONS": {
            # IMMEDIATE takes the write lock at BEGIN, so concurrent writers (web + workers)
            # wait on the busy timeout instead of failing at once (reference/stack.md §4).
            "transaction_mode": "IMMEDIATE",
            "timeout": 20,
            "init_command": (
                "PRAGMA journal_mode=WAL;"
                "PRAGMA synchronous=NORMAL;"
                "PRAGMA temp_store=MEMORY;"
                "PRAGMA cache_size=-20000;"
            ),
        },
        # A file-based test DB so qcluster workers, live_server threads and subprocesses see it
        # (pass them DATABASE_URL=sqlite:///<connection NAME>). The pid keeps two test runs on one
        # checkout (CI and a developer, or several developers) from deleting each other's DB.
        "TEST": {"NAME": str(path.parent / f"test_{os.getpid()}_{path.name}")},
    }


DATABASE_URL = env_str("DATABASE_URL", "")
DATABASES = {
    "default": database_from_url(DATABASE_URL) if DATABASE_URL else _sqlite_database(DOJO_HOME / "dojo.sqlite3")
}
DEFAULT_AUTO_FIELD = "django.db.models.BigAutoField"

# A shared database means several processes, often several machines, serve one Dojo: each would
# generate its own key under its own DOJO_HOME, and sessions (and django-q2's signed tasks) made on one
# would be refused by the others behind a load balancer. Refuse to start instead.
if DATABASES["default"]["ENGINE"].endswith("postgresql") and not os.environ.get("SECRET_KEY"):
    raise ImproperlyConfigured(
        "SECRET_KEY must be set when Dojo runs on PostgreSQL: every web node and worker must share "
        "one key (generate one with: python -c 'import secrets; print(secrets.token_urlsafe(50))')"
    )

CACHES = {
    "default": {"BACKEND": "django.core.cache.backends.locmem.LocMemCache"},
    # django-q2 keeps cluster stats in a cache every process of this machine must see (per machine:
    # with the Redis broker the stats live in Redis, shared; with the ORM broker each machine has its own).
    "djangoq": {
        "BACKEND": "django.core.cache.backends.filebased.FileBasedCache",
        "LOCATION": str(DOJO_CACHE_DIR / "qcache"),
    },
}

# The longest a background agent run may take; django-q2's timeout sits above it and retry above that,
# so a run is never re-delivered while it is still running (reference/stack.md §2.3).
DOJO_RUN_MAX_SECONDS = env_int("DOJO_RUN_MAX_SECONDS", 6 * 3600)
# The queue: "orm" (the database; the default, nothing else to run) or "redis" (REDIS_URL; install
# the `redis` extra). Several machines can share either; Redis also keeps the clusters' stats shared.
DOJO_BROKER = env_str("DOJO_BROKER", "orm")
REDIS_URL = env_str("REDIS_URL", "redis://127.0.0.1:6379/0")
if DOJO_BROKER not in ("orm", "redis"):
    raise ImproperlyConfigured(f"DOJO_BROKER must be orm or redis, got {DOJO_BROKER!r}")
Q_CLUSTER = {
    # Two installations sharing one Redis need different names (the name is the queue's key).
    "name": env_str("DOJO_QUEUE_NAME", "dojo"),
    **({"redis": REDIS_URL} if DOJO_BROKER == "redis" else {"orm": "default"}),
    "workers": env_int("DOJO_Q_WORKERS", 2),
    "timeout": DOJO_RUN_MAX_SECONDS + 300,
    "retry": DOJO_RUN_MAX_SECONDS + 600,
    "max_attempts": 1,
    "ack_failures": True,
    "queue_limit": 2,
    "bulk": 1,
    "poll": 0.2,
    "save_limit": 250,
    "catch_up": False,
    "cache": "djangoq",
}
# How an agent run's experiments execute: "inline" (in the worker that took the run, in threads: one
# machine, `make demo`) or "queue" (each one queued for the experiment workers, whichever has a free
# slot on any machine; results come back through the database). docs/cluster.md.
DOJO_DISPATCH = env_str("DOJO_DISPATCH", "inline")
if DOJO_DISPATCH not in ("inline", "queue"):
    raise ImproperlyConfigured(f"DOJO_DISPATCH must be inline or queue, got {DOJO_DISPATCH!r}")
# Which queue this process's `manage.py qcluster` serves: "runs" (agent runs and the other background
# work) or "experiments" (queued experiments only). Experiments have their own queue so a run, which
# holds a worker while it waits for its experiments, can never take the slots they need.
DOJO_Q_ROLE = env_str("DOJO_Q_ROLE", "runs")
if DOJO_Q_ROLE not in ("runs", "experiments"):
    raise ImproperlyConfigured(f"DOJO_Q_ROLE must be runs or experiments, got {DOJO_Q_ROLE!r}")
DOJO_EXPERIMENT_QUEUE = Q_CLUSTER["name"] + "-experiments"
# How many experiments one run keeps in flight (the built-in researcher); 0: this machine's CPUs ×
# DOJO_CPU_SHARE. With DOJO_DISPATCH=queue, set it to the experiment slots the run may use cluster-wide.
DOJO_RUN_PARALLEL = env_int("DOJO_RUN_PARALLEL", 0)

AUTH_PASSWORD_VALIDATORS = [
    {"NAME": "django.contrib.auth.password_validation.UserAttributeSimilarityValidator"},
    {"NAME": "django.contrib.auth.password_validation.MinimumLengthValidator"},
]

LOGIN_URL = "login"
LOGIN_REDIRECT_URL = "domains:list"
LOGOUT_REDIRECT_URL = "login"

LANGUAGE_CODE = "en-us"
TIME_ZONE = "UTC"
USE_I18N = True
USE_TZ = True

STATIC_URL = "static/"
STATICFILES_DIRS = [BASE_DIR / "static"]
STATIC_ROOT = DOJO_HOME / "staticfiles"
STATICFILES_FINDERS = [
    "django.contrib.staticfiles.finders.FileSystemFinder",
    "django.contrib.staticfiles.finders.AppDirectoriesFinder",
    # Plotly's JS from the pinned `plotly` wheel (vendor/plotly/plotly.min.js), never a CDN.
    "dojo_site.staticfinders.PackageFinder",
]

LOGGING = {
    "version": 1,
    "disable_existing_loggers": False,
    "handlers": {"console": {"class": "logging.StreamHandler"}},
    "root": {"handlers": ["console"], "level": env_str("DOJO_LOG_LEVEL", "WARNING")},
}

# --- Dojo's own settings -------------------------------------------------------------------
# Which agent runs when none is named.
DOJO_DEFAULT_BACKEND = env_str("DOJO_DEFAULT_BACKEND", "builtin")
# Share of the machine's CPUs one experiment (and the researcher's parallelism) may use.
DOJO_CPU_SHARE = env_float("DOJO_CPU_SHARE", 1.0)
# Per-experiment defaults; a task's config may override each.
DOJO_TRAIN_TIMEOUT_SECONDS = env_int("DOJO_TRAIN_TIMEOUT_SECONDS", 600)
DOJO_TRAIN_MEMORY_MB = env_int("DOJO_TRAIN_MEMORY_MB", 8192)
DOJO_TRAIN_MAX_PROCESSES = env_int("DOJO_TRAIN_MAX_PROCESSES", 512)
DOJO_TRAIN_MAX_FILE_MB = env_int("DOJO_TRAIN_MAX_FILE_MB", 256)
DOJO_ARTIFACTS_MAX_FILE_MB = env_int("DOJO_ARTIFACTS_MAX_FILE_MB", 100)
DOJO_ARTIFACTS_MAX_TOTAL_MB = env_int("DOJO_ARTIFACTS_MAX_TOTAL_MB", 500)
DOJO_EVALUATE_TIMEOUT_SECONDS = env_float("DOJO_EVALUATE_TIMEOUT_SECONDS", 600.0)
# The experiment workers' django-q2 timeout and retry (below); every role knows them: the reaper, on
# any worker, dates a taken ORM entry of the experiments' queue by its lock (taken at + retry).
DOJO_EXPERIMENT_QUEUE_TIMEOUT = int(DOJO_TRAIN_TIMEOUT_SECONDS + DOJO_EVALUATE_TIMEOUT_SECONDS + 300)
DOJO_EXPERIMENT_QUEUE_RETRY = DOJO_EXPERIMENT_QUEUE_TIMEOUT + 300
if DOJO_Q_ROLE == "experiments":
    # django-q2's alternative cluster name is the queue it serves; the name (the signing salt and the
    # stats prefix) stays the installation's.
    Q_CLUSTER["cluster_name"] = DOJO_EXPERIMENT_QUEUE
    # One slot per share of this machine's CPUs (DOJO_EXPERIMENT_WORKERS overrides it).
    Q_CLUSTER["workers"] = env_int("DOJO_EXPERIMENT_WORKERS", max(1, int((os.cpu_count() or 1) * DOJO_CPU_SHARE)))
    # An experiment is far shorter than a run: an entry taken by a cluster that died before running it
    # comes back (ORM broker) after `retry`, not hours later. A longer one re-delivered is harmless: the
    # worker's claim refuses an experiment that is no longer pending. Each queued experiment also
    # carries its own timeout from its task's limits. queue_limit 1: a busy machine holds as few
    # experiments back from idle ones as django-q2 allows.
    Q_CLUSTER["timeout"] = DOJO_EXPERIMENT_QUEUE_TIMEOUT
    Q_CLUSTER["retry"] = DOJO_EXPERIMENT_QUEUE_RETRY
    Q_CLUSTER["queue_limit"] = 1
# Sandbox: "auto" or empty (bwrap when installed, else the weaker fallback), "bwrap" or "fallback".
DOJO_SANDBOX = env_str("DOJO_SANDBOX", "")  # empty means auto
# Warm trainer pools: at most this many per machine, each stopped after this many idle seconds.
DOJO_POOL_MAX = env_int("DOJO_POOL_MAX", 4)
DOJO_POOL_IDLE_SECONDS = env_int("DOJO_POOL_IDLE_SECONDS", 600)
# Model used for one-shot tool generation and end-of-run summaries through the Claude Agent SDK.
DOJO_TOOLGEN_MODEL = env_str("DOJO_TOOLGEN_MODEL", "claude-sonnet-4-5")
DOJO_CLAUDE_MODEL = env_str("DOJO_CLAUDE_MODEL", "claude-sonnet-4-5")
# Path to a `claude` executable; empty uses the SDK's bundled CLI.
DOJO_CLAUDE_CLI_PATH = env_str("DOJO_CLAUDE_CLI_PATH", "")
# Let the Claude agent use built-in tools beyond Read/Glob/Grep (Write, Edit, Bash).
DOJO_CLAUDE_ALLOW_WRITE_TOOLS = env_bool("DOJO_CLAUDE_ALLOW_WRITE_TOOLS", False)
# The Claude agent's CLI runs in the trainer's bubblewrap profile ("auto"); "off" runs it as is
# (a fake CLI in tests). Its tool calls are path-checked either way (agentrun/claude_sandbox.py).
DOJO_CLAUDE_SANDBOX = env_str("DOJO_CLAUDE_SANDBOX", "auto")
# Where users reach the site; commands print links under it (`dojo_run --background`).
DOJO_BASE_URL = env_str("DOJO_BASE_URL", "http://127.0.0.1:8000")
# "db" (default) or "mlflow" (also needs MLFLOW_TRACKING_URI).
DOJO_TRACKING = env_str("DOJO_TRACKING", "db")
MLFLOW_TRACKING_URI = env_str("MLFLOW_TRACKING_URI", "")  # empty: sqlite under DOJO_HOME/mlflow
# MLflow experiments Dojo creates are named PREFIX + domain name, artifacts under this folder
# (empty: DOJO_HOME/mlflow/artifacts).
DOJO_MLFLOW_EXPERIMENT_PREFIX = env_str("DOJO_MLFLOW_EXPERIMENT_PREFIX", "dojo/")
DOJO_MLFLOW_ARTIFACTS = env_str("DOJO_MLFLOW_ARTIFACTS", "")
# How long a statement outside a transaction keeps retrying while PostgreSQL restarts.
DOJO_DB_RETRY_SECONDS = env_float("DOJO_DB_RETRY_SECONDS", 30.0)
# True (one machine, `make demo`): verify, freeze, generate and by-hand experiments run inside the
# request or command. False (a cluster): they are queued (django-q2) and a worker runs them, so web
# nodes never run untrusted code; the API answers 202 with a status URL (docs/cluster.md).
DOJO_INLINE_TASKS = env_bool("DOJO_INLINE_TASKS", True)
# How long the worker (`qcluster`) may take to stop after SIGTERM before what is left is killed.
DOJO_WORKER_STOP_SECONDS = env_float("DOJO_WORKER_STOP_SECONDS", 6.0)
# Seconds without a heartbeat after which the reaper marks a run failed ("worker lost").
DOJO_HEARTBEAT_TIMEOUT_SECONDS = env_int("DOJO_HEARTBEAT_TIMEOUT_SECONDS", 120)
# Similarity (0..1) above which a new knowledge atom is linked to an existing one.
DOJO_KNOWLEDGE_SIMILARITY = env_float("DOJO_KNOWLEDGE_SIMILARITY", 0.6)
