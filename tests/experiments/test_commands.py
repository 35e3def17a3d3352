"""dojo_experiments with bad input: one CommandError line, never a traceback (the happy paths are in
test_web_api_cli.py)."""

import json
from io import StringIO

import pytest
from django.core.management import CommandError, call_command

from experiments.models import Experiment
from tests.factories import DomainFactory

pytestmark = pytest.mark.django_db


def run(*args) -> str:
    out = StringIO()
    call_command("dojo_experiments", *args, stdout=out)
    return out.getvalue()


def test_ls_takes_a_limit_larger_than_any_database_limit():
    # It was an OverflowError traceback from SQLite; a huge limit now means "all".
    domain = DomainFactory(name="lab")
    Experiment.objects.create(domain=domain, train_code="x", code_sha256="0" * 64, state="completed")
    assert len(json.loads(run("ls", "--domain", "lab", "--json", "--limit", str(10**20)))) == 1


def test_run_refuses_a_seed_out_of_range_and_records_nothing(tmp_path):
    DomainFactory(name="lab")
    code = tmp_path / "train.py"
    code.write_text("def train(X_train, y_train, X_test, *, artifacts_dir):\n    return y_train[:len(X_test)]\n")
    with pytest.raises(CommandError, match="^seed must be between -2147483648 and 2147483647, got 100000000000000000000$") as error:
        run("run", "--domain", "lab", "--code-file", str(code), "--hypothesis", "x", "--seed", str(10**20))
    assert error.value.returncode == 1
    assert not Experiment.objects.exists()
