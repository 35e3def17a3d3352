"""Audit, then trust (experiments/quarantine.py), through the harness: the two known attacks."""

import json
import pickle
from pathlib import Path

import pytest
from django.core.management import call_command

from dojo_site.errors import InvalidInput
from experiments.models import Experiment
from experiments.quarantine import quarantine_review
from experiments.ranking import best_experiment, ranked_experiments
from experiments.services import experiment_run
from tests.experiments.conftest import LINEAR

RIDGE = """
from sklearn.linear_model import Ridge

def train(X_train, y_train, X_test, *, artifacts_dir):
    return Ridge(alpha=1.0).fit(X_train, y_train).predict(X_test)
"""

KNN = """
from sklearn.neighbors import KNeighborsRegressor

def train(X_train, y_train, X_test, *, artifacts_dir):
    return KNeighborsRegressor(n_neighbors=15).fit(X_train, y_train).predict(X_test)
"""

# The lookup attack: reload the public dataset inside the sandbox and return the true labels.
LOOKUP = """
import numpy as np
import pandas as pd
from sklearn.datasets import load_diabetes

def train(X_train, y_train, X_test, *, artifacts_dir):
    data = load_diabetes(as_frame=True)
    full = data.frame
    X = np.asarray(pd.DataFrame(X_test), dtype=float)
    F = np.asarray(full[data.feature_names], dtype=float)
    out = []
    for row in X:
        i = int(np.argmin(((F - row) ** 2).sum(axis=1)))
        out.append(float(full["target"].iloc[i]))
    return np.array(out)
"""

# One probe: the linear model's predictions with one row pushed far off.
PROBE = """
import numpy as np
from sklearn.linear_model import LinearRegression

def train(X_train, y_train, X_test, *, artifacts_dir):
    pred = LinearRegression().fit(X_train, y_train).predict(X_test)
    pred[{row}] += 100.0
    return pred
"""

# What a finished probing sequence submits: recovered validation labels, honest elsewhere.
FORGED = """
import numpy as np
from sklearn.linear_model import LinearRegression

VALIDATION = {validation!r}

def train(X_train, y_train, X_test, *, artifacts_dir):
    pred = LinearRegression().fit(X_train, y_train).predict(X_test)
    for i, y in VALIDATION.items():
        pred[int(i)] = y
    return pred
"""


def _honest(domain) -> list[Experiment]:
    runs = [experiment_run(domain=domain, train_code=code) for code in (LINEAR, RIDGE, KNN)]
    assert all(e.state == "completed" for e in runs), [e.error for e in runs]
    return runs


def test_it_never_ranks_the_lookup_attack(diabetes):
    _honest(diabetes)
    best = best_experiment(diabetes)
    attack = experiment_run(domain=diabetes, train_code=LOOKUP, hypothesis="look the answers up")
    attack.refresh_from_db()
    # Either the sandbox hid the dataset (the lookup fails) or the audit quarantined it.
    assert attack.state == "failed" or attack.quarantine_state == "quarantined", (attack.state, attack.metrics)
    if attack.state == "completed":
        assert {r["rule"] for r in attack.quarantine_reasons} & {"lookup", "implausible"}
    assert best_experiment(diabetes).pk == best.pk
    assert attack.pk not in set(ranked_experiments(diabetes).values_list("pk", flat=True))


def _sealed(domain) -> tuple[list, list]:
    snap = Path(domain.task.snapshot_path)
    with open(snap / "sealed" / "y_test.pkl", "rb") as fh:
        y_test = pickle.load(fh)
    split = json.loads((snap / "sealed" / "split.json").read_text())
    return [float(v) for v in list(y_test)], split["validation"]


def test_it_flags_a_probing_sequence_and_quarantines_its_end(diabetes, capsys):
    _honest(diabetes)
    best = best_experiment(diabetes)
    probes = [experiment_run(domain=diabetes, train_code=PROBE.format(row=row), hypothesis=f"probe {row}")
              for row in range(5)]
    for p in probes:
        p.refresh_from_db()
        assert p.state == "completed", p.error
        assert p.probe_of_id is not None and p.probe_rows == 1
        assert p.quarantine_state == "quarantined"
    y_test, validation = _sealed(diabetes)
    forged = experiment_run(
        domain=diabetes, train_code=FORGED.format(validation={i: y_test[i] for i in validation}),
        hypothesis="the probed labels",
    )
    forged.refresh_from_db()
    assert forged.state == "completed" and forged.primary_value < 1e-6
    assert forged.quarantine_state == "quarantined"
    assert "probing" in {r["rule"] for r in forged.quarantine_reasons}
    assert best_experiment(diabetes).pk == best.pk
    call_command("dojo_experiments", "best", "--domain", diabetes.name, "--json")
    assert json.loads(capsys.readouterr().out)["id"] == best.pk


def test_a_person_clears_or_confirms_with_a_reason(diabetes):
    _honest(diabetes)
    y_test, validation = _sealed(diabetes)
    forged = experiment_run(domain=diabetes, train_code=FORGED.format(validation={i: y_test[i] for i in validation}))
    forged.refresh_from_db()
    assert forged.quarantine_state == "quarantined"
    with pytest.raises(InvalidInput):
        quarantine_review(experiment=forged, decision="cleared", reason="  ", by="alice")
    quarantine_review(experiment=forged, decision="cleared", reason="checked by hand", by="alice")
    forged.refresh_from_db()
    assert forged.quarantine_review["by"] == "alice" and forged.quarantine_review["reason"] == "checked by hand"
    assert best_experiment(diabetes).pk == forged.pk  # cleared: it ranks again
    quarantine_review(experiment=forged, decision="confirmed", reason="it is a forgery", by="bob")
    assert best_experiment(diabetes).pk != forged.pk


def test_it_quarantines_a_perfect_score_however_it_was_obtained(diabetes):
    """The lookup's result without any loader call (e.g. the dataset copied somewhere the
    sandbox does not hide): every test row's true label. The score alone gives it away."""
    _honest(diabetes)
    best = best_experiment(diabetes)
    y_test, _ = _sealed(diabetes)
    perfect = experiment_run(domain=diabetes, train_code=FORGED.format(validation=dict(enumerate(y_test))))
    perfect.refresh_from_db()
    assert perfect.state == "completed" and perfect.primary_value < 1e-6
    assert perfect.quarantine_state == "quarantined"
    assert "implausible" in {r["rule"] for r in perfect.quarantine_reasons}
    assert best_experiment(diabetes).pk == best.pk


def test_the_quarantine_tab_lists_and_a_person_reviews_on_the_web(diabetes, admin_client):
    good = _honest(diabetes)
    y_test, validation = _sealed(diabetes)
    forged = experiment_run(domain=diabetes, train_code=FORGED.format(validation={i: y_test[i] for i in validation}))
    page = admin_client.get(f"/experiments/domain/{diabetes.pk}/quarantine/")
    assert page.status_code == 200
    body = page.content.decode()
    assert f"#{forged.pk}" in body and "holdout_gap" in body and "rank correlation" in body
    assert f"#{good[0].pk}<" not in body
    refused = admin_client.post(f"/experiments/{forged.pk}/quarantine/", {"decision": "cleared", "reason": ""})
    assert refused.status_code == 302
    forged.refresh_from_db()
    assert forged.quarantine_state == "quarantined"  # no reason, no change
    admin_client.post(f"/experiments/{forged.pk}/quarantine/", {"decision": "confirmed", "reason": "forged labels"})
    forged.refresh_from_db()
    assert forged.quarantine_state == "confirmed" and forged.quarantine_review["reason"] == "forged labels"
    assert admin_client.get(f"/domains/{diabetes.pk}/?tab=quarantine").status_code == 200


@pytest.mark.slow
@pytest.mark.django_db(transaction=True)  # the researcher runs experiments in threads
@pytest.mark.parametrize("loader", ["load_diabetes", "load_breast_cancer", "load_wine", "load_digits"])
def test_an_honest_builtin_run_quarantines_nothing(make_domain, loader):
    """No false positives: the built-in researcher's honest experiments are never held back."""
    from agentrun.services import run_create, run_execute

    domain = make_domain(loader, name=f"honest-{loader}")
    run = run_execute(run_id=run_create(domain=domain, max_experiments=12, seed=0).pk)
    scored = Experiment.objects.filter(domain=domain, state="completed")
    assert scored.count() >= 5, run.error
    held = list(Experiment.objects.filter(domain=domain).exclude(quarantine_state="").values("pk", "quarantine_reasons"))
    assert held == []
    assert best_experiment(domain) is not None
