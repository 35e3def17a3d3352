"""Entry point for tests that need a run in a real separate process (kill -9, Ctrl-C).

    python tests/agentrun/worker_process.py execute RUN_ID
    python tests/agentrun/worker_process.py manage dojo_run --backend scripted ...

The scripted backend (tests/agentrun/scripted_backend.py) is registered first; its script comes
from $DOJO_SCRIPTED_BACKEND. The caller passes DATABASE_URL (the test DB) and DOJO_HOME.
"""

import os
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))
os.environ.setdefault("DJANGO_SETTINGS_MODULE", "dojo_site.settings")

import django  # noqa: E402

django.setup()

from agentrun.backends import BACKENDS  # noqa: E402

BACKENDS["scripted"] = "tests.agentrun.scripted_backend"

if sys.argv[1] == "execute":
    from agentrun.services import run_execute

    print(run_execute(run_id=int(sys.argv[2])).status, flush=True)
else:
    from django.core.management import execute_from_command_line

    execute_from_command_line(["manage.py", *sys.argv[2:]])
