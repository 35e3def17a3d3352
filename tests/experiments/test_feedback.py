"""Probe-proof feedback (experiments/feedback.py) through the agent tool surface."""

from agentrun.models import AgentRun
from agentrun.tools import tool_call
from domains.services import task_update
from experiments.models import Experiment
from tests.experiments.conftest import LINEAR

PROBE = """
from sklearn.linear_model import LinearRegression

def train(X_train, y_train, X_test, *, artifacts_dir):
    pred = LinearRegression().fit(X_train, y_train).predict(X_test)
    pred[{row}] += 30.0
    return pred
"""

CONSTANT = """
import numpy as np

def train(X_train, y_train, X_test, *, artifacts_dir):
    return np.full(len(X_test), float(np.mean(y_train)))
"""


def _run(run, code, hypothesis):
    result = tool_call(run=run, name="run_experiment", arguments={"code": code, "hypothesis": hypothesis})
    assert result["ok"] and result["state"] == "completed", result
    return result


def test_the_ladder_hides_what_probes_would_learn_and_people_keep_exact_scores(diabetes):
    run = AgentRun.objects.create(domain=diabetes, backend="builtin")
    constant = _run(run, CONSTANT, "constant")
    linear = _run(run, LINEAR, "linear")
    assert constant["feedback"]["feedback"] == "ladder" and linear["feedback"]["improved"] is True
    step = linear["feedback"]["ladder_step"]
    assert step > 0 and abs(linear["primary_value"] / step - round(linear["primary_value"] / step)) < 1e-6
    probes = [_run(run, PROBE.format(row=row), f"probe {row}") for row in range(3)]
    base = Experiment.objects.get(pk=linear["experiment_id"])
    for p in probes:  # each probe changed an exact score (validation or holdout, as its row falls) …
        e = Experiment.objects.get(pk=p["experiment_id"])
        assert (e.primary_value, e.holdout_primary_value) != (base.primary_value, base.holdout_primary_value)
    for p in probes[:2]:  # … but the agent sees the best released score again, not moved
        assert p["primary_value"] == linear["primary_value"] and p["feedback"]["improved"] is False
        assert p["metrics"] == linear["metrics"]
    # The third probe makes a sequence: quarantined, so the agent gets no score for it at all.
    assert probes[2]["primary_value"] is None and probes[2]["feedback"].get("quarantined") is True
    listed = tool_call(run=run, name="list_experiments", arguments={})
    assert {e["primary_value"] for e in listed["experiments"]} <= {constant["primary_value"], linear["primary_value"], None}
    # People see exact scores: the record and the run's events.
    record = Experiment.objects.get(pk=linear["experiment_id"])
    assert record.primary_value != linear["primary_value"] or step == 0
    task_update(task=diabetes.task, config={"feedback_mode": "exact"})
    run = AgentRun.objects.get(pk=run.pk)  # a run reads its task's feedback mode when it loads it
    again = tool_call(run=run, name="get_experiment", arguments={"experiment_id": linear["experiment_id"]})
    assert again["primary_value"] == record.primary_value and again["feedback"]["feedback"] == "exact"
