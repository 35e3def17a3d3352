import json
import math

import pytest
from jsonschema import Draft202012Validator

from agentrun.models import AgentRun
from agentrun.tools import MAX_RESULT_CHARS, TOOL_SPECS, tool_call
from domains.models import Task
from experiments.models import Experiment
from knowledge.models import KnowledgeAtom
from tests.factories import DomainFactory

pytestmark = pytest.mark.django_db


def _domain(name: str):
    domain = DomainFactory(name=name)
    Task.objects.create(
        domain=domain, task_type="regression", primary_metric="rmse", direction="minimize",
        expected_metrics=["rmse", "mae", "r2"],
    )
    return domain


@pytest.fixture
def run():
    return AgentRun.objects.create(domain=_domain("mine"), backend="builtin")


@pytest.fixture
def foreign_experiment():
    return _experiment(_domain("theirs"), rmse=10.0)


def _experiment(domain, *, rmse: float, holdout: float = 99.0, **fields) -> Experiment:
    values = {
        "domain": domain,
        "train_code": "def train(X_train, y_train, X_test, *, artifacts_dir): ...",
        "code_sha256": "0" * 64,
        "state": "completed",
        "metrics": {"rmse": rmse, "mae": rmse / 2, "r2": 0.3},
        "holdout_metrics": {"rmse": holdout, "mae": holdout / 2, "r2": -7.0},
        "primary_value": rmse,
        "holdout_primary_value": holdout,
    }
    return Experiment.objects.create(**{**values, **fields})


def test_it_publishes_valid_json_schemas():
    assert set(TOOL_SPECS) == {
        "run_experiment", "get_experiment", "list_experiments", "compare_experiments", "write_knowledge",
        "search_knowledge", "list_knowledge", "log_metrics", "log_params",
    }
    for spec in TOOL_SPECS.values():
        Draft202012Validator.check_schema(spec["input_schema"])
        assert spec["description"]


def test_it_returns_an_error_for_a_missing_argument(run):
    result = tool_call(run=run, name="get_experiment", arguments={})
    assert result == {"ok": False, "error": "get_experiment: invalid arguments: 'experiment_id' is a required property"}


def test_it_returns_an_error_for_a_wrongly_typed_argument(run):
    result = tool_call(run=run, name="log_metrics", arguments={"experiment_id": 1, "metrics": {"loss": "low"}})
    assert result["ok"] is False
    assert "metrics.loss" in result["error"]


def test_it_returns_an_error_for_an_unknown_tool(run):
    result = tool_call(run=run, name="delete_everything", arguments={})
    assert result["ok"] is False
    assert "unknown tool 'delete_everything'" in result["error"]


def test_it_returns_an_error_for_an_unknown_id(run):
    result = tool_call(run=run, name="get_experiment", arguments={"experiment_id": 424242})
    assert result == {"ok": False, "error": "get_experiment: experiment 424242 does not exist"}


@pytest.mark.parametrize(
    "name, arguments",
    [
        ("get_experiment", {"experiment_id": "X"}),
        ("compare_experiments", {"experiment_ids": ["X"]}),
        ("log_metrics", {"experiment_id": "X", "metrics": {"loss": 1.0}}),
        ("log_params", {"experiment_id": "X", "params": {"alpha": 1}}),
        ("write_knowledge", {"context": "c", "claim": "k", "evidence": [{"experiment_id": "X"}]}),
        ("run_experiment", {"code": "x = 1", "hypothesis": "h", "parent_id": "X"}),
    ],
)
def test_it_refuses_another_domains_experiment(run, foreign_experiment, name, arguments):
    arguments = json.loads(json.dumps(arguments).replace('"X"', str(foreign_experiment.pk)))
    result = tool_call(run=run, name=name, arguments=arguments)
    assert result["ok"] is False
    assert f"experiment {foreign_experiment.pk} belongs to another domain" in result["error"]
    foreign_experiment.refresh_from_db()
    assert foreign_experiment.logged_metrics == [] and foreign_experiment.logged_params == {}
    assert not KnowledgeAtom.objects.exists()
    assert Experiment.objects.count() == 1


def test_it_never_shows_holdout_metrics(run):
    first = _experiment(run.domain, rmse=50.0, holdout=123.456)
    second = _experiment(run.domain, rmse=40.0, holdout=654.321)
    results = [
        tool_call(run=run, name="get_experiment", arguments={"experiment_id": first.pk}),
        tool_call(run=run, name="list_experiments", arguments={}),
        tool_call(run=run, name="compare_experiments", arguments={"experiment_ids": [first.pk, second.pk]}),
    ]
    for result in results:
        assert result["ok"] is True
        text = json.dumps(result)
        assert "123.456" not in text and "654.321" not in text and "-7.0" not in text
        assert "holdout" not in text


def test_it_lists_experiments_best_first_in_the_metric_direction(run, foreign_experiment):
    worse = _experiment(run.domain, rmse=60.0)
    best = _experiment(run.domain, rmse=40.0)
    failed = _experiment(run.domain, rmse=0.0, state="failed")
    failed.primary_value = None
    failed.save()
    result = tool_call(run=run, name="list_experiments", arguments={})
    assert [e["experiment_id"] for e in result["experiments"]] == [best.pk, worse.pk, failed.pk]
    assert result["total"] == 3 and result["primary_metric"] == "rmse" and result["direction"] == "minimize"
    only_failed = tool_call(run=run, name="list_experiments", arguments={"state": "failed"})
    assert [e["experiment_id"] for e in only_failed["experiments"]] == [failed.pk]
    compared = tool_call(run=run, name="compare_experiments", arguments={"experiment_ids": [worse.pk, best.pk]})
    assert compared["best_id"] == best.pk


def test_it_leaves_experiments_of_an_earlier_contract_out_of_the_ranking(run):
    Task.objects.filter(domain=run.domain).update(fingerprint="f" * 64, data_fingerprint="d" * 64)
    run = AgentRun.objects.get(pk=run.pk)  # drop the cached task
    current = _experiment(run.domain, rmse=50.0, task_fingerprint="f" * 64, data_fingerprint="d" * 64)
    _experiment(run.domain, rmse=1.0, task_fingerprint="old", data_fingerprint="d" * 64)
    result = tool_call(run=run, name="list_experiments", arguments={})
    assert [e["experiment_id"] for e in result["experiments"]] == [current.pk]


def test_it_caps_a_huge_result(run):
    experiment = _experiment(
        run.domain, rmse=1.0, stdout_tail="x" * 5_000_000, stderr_tail="y" * 5_000_000,
        hypothesis="h" * 1_000_000, variables={f"k{i}": "v" * 1000 for i in range(5000)},
    )
    experiment.train_code = "# " + "z" * 5_000_000
    experiment.save()
    result = tool_call(run=run, name="get_experiment", arguments={"experiment_id": experiment.pk})
    assert result["ok"] is True
    assert len(json.dumps(result)) <= MAX_RESULT_CHARS
    assert "more characters cut" in json.dumps(result)


def test_it_logs_metrics_without_touching_the_scored_metrics(run):
    experiment = _experiment(run.domain, rmse=50.0, holdout=55.0)
    result = tool_call(run=run, name="log_metrics", arguments={"experiment_id": experiment.pk, "metrics": {"rmse": 0.001}, "step": 3})
    assert result["ok"] is True
    again = tool_call(run=run, name="log_metrics", arguments={"experiment_id": experiment.pk, "metrics": {"loss": 2.5}})
    assert again["entries"] == 2
    experiment.refresh_from_db()
    assert [e["metrics"] for e in experiment.logged_metrics] == [{"rmse": 0.001}, {"loss": 2.5}]
    assert experiment.logged_metrics[0]["step"] == 3 and experiment.logged_metrics[0]["run_id"] == run.pk
    # The scored numbers are exactly as the evaluator left them.
    assert experiment.metrics == {"rmse": 50.0, "mae": 25.0, "r2": 0.3}
    assert experiment.primary_value == 50.0 and experiment.holdout_primary_value == 55.0
    assert experiment.holdout_metrics["rmse"] == 55.0


def test_it_refuses_non_finite_logged_metrics(run):
    experiment = _experiment(run.domain, rmse=50.0)
    result = tool_call(run=run, name="log_metrics", arguments={"experiment_id": experiment.pk, "metrics": {"loss": math.nan}})
    assert result == {"ok": False, "error": "log_metrics: metric values must be finite numbers: loss"}
    experiment.refresh_from_db()
    assert experiment.logged_metrics == []


def test_it_logs_params_apart_from_the_experiment_variables(run):
    experiment = _experiment(run.domain, rmse=50.0, variables={"alpha": 1.0})
    tool_call(run=run, name="log_params", arguments={"experiment_id": experiment.pk, "params": {"alpha": 3, "solver": "lbfgs"}})
    result = tool_call(run=run, name="log_params", arguments={"experiment_id": experiment.pk, "params": {"tol": 0.001}})
    assert result == {"ok": True, "experiment_id": experiment.pk, "params": ["alpha", "solver", "tol"]}
    experiment.refresh_from_db()
    assert experiment.logged_params == {"alpha": 3, "solver": "lbfgs", "tol": 0.001}
    assert experiment.variables == {"alpha": 1.0}


def test_it_writes_knowledge_for_the_run_and_scopes_the_listing(run, foreign_experiment):
    evidence = _experiment(run.domain, rmse=40.0)
    KnowledgeAtom.objects.create(domain=foreign_experiment.domain, context="theirs", claim="secret of another domain")
    KnowledgeAtom.objects.create(domain=None, context="anywhere", claim="scaling helps linear models", confidence=0.9)
    result = tool_call(
        run=run,
        name="write_knowledge",
        arguments={
            "context": "diabetes regression",
            "claim": "Ridge beats the mean predictor by a wide margin",
            "confidence": 0.8,
            "evidence": [{"experiment_id": evidence.pk, "stance": "supports"}],
        },
    )
    assert result["ok"] is True and result["outcome"] == "created"
    atom = KnowledgeAtom.objects.get(pk=result["atom_id"])
    assert atom.domain_id == run.domain_id and atom.created_by_run_id == run.pk
    assert list(atom.evidence_links.values_list("experiment_id", "stance")) == [(evidence.pk, "supports")]

    listed = tool_call(run=run, name="list_knowledge", arguments={})
    claims = [a["claim"] for a in listed["atoms"]]
    assert claims == ["scaling helps linear models", "Ridge beats the mean predictor by a wide margin"]
    found = tool_call(run=run, name="search_knowledge", arguments={"query": "secret domain ridge"})
    assert "secret of another domain" not in [a["claim"] for a in found["atoms"]]
    assert "Ridge beats the mean predictor by a wide margin" in [a["claim"] for a in found["atoms"]]


def test_it_turns_a_handler_exception_into_an_error_result(run, monkeypatch):
    import knowledge.services

    def broken(**kwargs):
        raise RuntimeError("index is corrupt")

    monkeypatch.setattr(knowledge.services, "atom_search", broken)
    result = tool_call(run=run, name="search_knowledge", arguments={"query": "ridge"})
    assert result == {"ok": False, "error": "search_knowledge failed: RuntimeError: index is corrupt"}
