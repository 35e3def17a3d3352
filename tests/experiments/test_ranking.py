"""The one meaning of "best" (experiments/ranking.py), through the harness and the surfaces."""

import json

from django.core.management import call_command

from experiments.models import Experiment
from experiments.ranking import best_experiment, ranked_experiments
from experiments.services import experiment_run
from tests.experiments.conftest import LINEAR

# A model that prints a CV line; the value is whatever the test asks it to claim.
CLAIMS_CV = """
import numpy as np
from sklearn.linear_model import Ridge

def train(X_train, y_train, X_test, *, artifacts_dir):
    print("DOJO_CV rmse={cv} rows={rows}")
    return Ridge(alpha={alpha}).fit(X_train, y_train).predict(X_test)
"""

SEEDED = """
import os
import numpy as np
from sklearn.ensemble import RandomForestRegressor

def train(X_train, y_train, X_test, *, artifacts_dir):
    seed = int(os.environ.get("DOJO_SEED", "0"))
    return RandomForestRegressor(n_estimators=15, random_state=seed).fit(X_train, y_train).predict(X_test)
"""


def test_it_never_lets_a_reported_cv_raise_an_experiment_above_its_validation(diabetes):
    fake = experiment_run(domain=diabetes, train_code=CLAIMS_CV.format(cv=0.001, rows=10_000, alpha=50.0))
    honest_worse = experiment_run(domain=diabetes, train_code=CLAIMS_CV.format(cv=500.0, rows=300, alpha=1.0))
    assert fake.state == honest_worse.state == "completed", (fake.error, honest_worse.error)
    fake.refresh_from_db()
    honest_worse.refresh_from_db()
    assert fake.cv_value == 0.001 and fake.cv_rows == 10_000  # stored as reported
    # The fake CV claims a near-perfect model: its rank value stays its validation value.
    assert fake.rank_value == fake.primary_value
    # A worse CV pulls the rank value down (rmse: up), weighted by rows.
    assert honest_worse.rank_value > honest_worse.primary_value


def test_it_ranks_a_configuration_by_the_mean_over_its_seeds(diabetes):
    runs = [experiment_run(domain=diabetes, train_code=SEEDED, seed=s) for s in (1, 2, 3)]
    linear = experiment_run(domain=diabetes, train_code=LINEAR)
    for e in [*runs, linear]:
        assert e.state == "completed", e.error
        e.refresh_from_db()
    values = [e.primary_value for e in runs]
    assert len({e.rank_value for e in runs}) == 1
    assert abs(runs[0].rank_value - sum(values) / 3) < 1e-9
    assert abs(runs[0].seed_spread - (max(values) - min(values))) < 1e-9
    assert [e.seed_count for e in runs] == [3, 3, 3]
    assert linear.seed_count == 1 and linear.seed_spread is None
    ranked = list(ranked_experiments(diabetes))
    assert len(ranked) == 4
    # Best first; a configuration is represented by its first experiment.
    direction_ok = all(a.rank_value <= b.rank_value for a, b in zip(ranked, ranked[1:], strict=False))
    assert direction_ok
    assert best_experiment(diabetes).pk == ranked[0].pk


def test_it_leaves_quarantined_experiments_out_of_best_everywhere(diabetes, capsys):
    good = experiment_run(domain=diabetes, train_code=LINEAR)
    worse = experiment_run(domain=diabetes, train_code=CLAIMS_CV.format(cv=1.0, rows=1, alpha=1000.0))
    assert best_experiment(diabetes).pk == good.pk
    Experiment.objects.filter(pk=good.pk).update(quarantine_state="quarantined")
    assert best_experiment(diabetes).pk == worse.pk
    call_command("dojo_experiments", "best", "--domain", diabetes.name, "--json")
    assert json.loads(capsys.readouterr().out)["id"] == worse.pk


def test_it_records_bootstrap_intervals_around_both_scores(diabetes, make_domain):
    exp = experiment_run(domain=diabetes, train_code=LINEAR)
    exp.refresh_from_db()
    for part, metrics, ci in (("validation", exp.metrics, exp.validation_ci), ("holdout", exp.holdout_metrics, exp.holdout_ci)):
        assert set(ci) == {"rmse", "mae", "r2"}, part
        for name, (lo, hi) in ci.items():
            assert lo < metrics[name] < hi, (part, name)
    again = experiment_run(domain=diabetes, train_code=LINEAR)
    again.refresh_from_db()
    assert again.validation_ci == exp.validation_ci  # seeded: the same predictions, the same interval
    wine = make_domain("load_wine", name="wine")
    proba = experiment_run(domain=wine, train_code=WINE_LOGISTIC)
    proba.refresh_from_db()
    assert proba.state == "completed", proba.error
    lo, hi = proba.validation_ci["log_loss"]
    assert lo <= proba.metrics["log_loss"] <= hi and "accuracy" in proba.validation_ci


WINE_LOGISTIC = """
from sklearn.linear_model import LogisticRegression
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler

def train(X_train, y_train, X_test, *, artifacts_dir):
    return make_pipeline(StandardScaler(), LogisticRegression(max_iter=500)).fit(X_train, y_train).predict_proba(X_test)
"""


def test_the_leaderboard_shows_intervals_and_marks_what_is_within_noise_of_the_best(diabetes, admin_client):
    a = experiment_run(domain=diabetes, train_code=LINEAR)
    b = experiment_run(domain=diabetes, train_code=CLAIMS_CV.format(cv=1.0, rows=1, alpha=0.5))
    best = best_experiment(diabetes)
    html = admin_client.get(f"/experiments/domain/{diabetes.pk}/").content.decode()
    assert 'title="best by the ranking">#1</span>' in html
    assert "within noise of #1" in html  # two near-identical linear models on 44 validation rows
    lo, hi = best.validation_ci["rmse"]
    assert f"[{lo:.4g}" in html or f"[{lo:.5g}" in html or 'class="muted small ci"' in html
    assert {a.pk, b.pk} >= {best.pk}
