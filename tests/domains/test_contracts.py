import numpy as np
import pytest

from domains.contracts import (
    CONTRACT_VERSION,
    TASK_TYPES,
    contract_text,
    prediction_check,
    task_type_get,
    tools_fingerprint,
)


@pytest.mark.parametrize("name", list(TASK_TYPES))
def test_it_describes_every_metric_of_every_task_type(name):
    spec = TASK_TYPES[name]
    assert spec.primary_metric in spec.metrics
    assert set(spec.metric_directions) == set(spec.metrics)
    assert spec.direction == spec.metric_directions[spec.primary_metric]
    assert set(spec.metric_directions.values()) <= {"minimize", "maximize"}


def test_it_names_the_valid_types_for_an_unknown_one():
    with pytest.raises(KeyError, match="regression, binary, multiclass"):
        task_type_get("ranking")


def test_it_accepts_predictions_of_the_right_shape_as_float_arrays():
    array, error = prediction_check("regression", [1, 2, 3], n_rows=3)
    assert error is None and array.dtype == np.float64 and array.tolist() == [1.0, 2.0, 3.0]
    array, error = prediction_check("binary", np.array([0.1, 0.9]), n_rows=2)
    assert error is None
    array, error = prediction_check("multiclass", [[0.2, 0.3, 0.5], [1, 0, 0]], n_rows=2, n_classes=3)
    assert error is None and array.shape == (2, 3)


@pytest.mark.parametrize(
    ("task_type", "y_pred", "kwargs", "expected"),
    [
        ("regression", [1.0, 2.0], {"n_rows": 3}, "has 2 values; expected 3"),
        ("regression", np.zeros((3, 1)), {"n_rows": 3}, "has shape (3, 1); expected (3,)"),
        ("regression", None, {"n_rows": 3}, "returned None"),
        ("regression", "abc", {"n_rows": 3}, "returned a str"),
        ("regression", ["a", "b", "c"], {"n_rows": 3}, "dtype <U1"),
        ("regression", [1.0, float("nan"), 2.0], {"n_rows": 3}, "1 non-finite value(s) (NaN or inf), the first at row 1"),
        ("regression", [1.0, 2.0, float("inf")], {"n_rows": 3}, "the first at row 2"),
        ("binary", [0.2, 1.5], {"n_rows": 2}, "probabilities in [0, 1]; got values from 0.2 to 1.5"),
        ("binary", [-0.1, 0.5], {"n_rows": 2}, "got values from -0.1 to 0.5"),
        ("binary", np.full((2, 2), 0.5), {"n_rows": 2}, "predict_proba(X)[:, 1]"),
        ("multiclass", [0.2, 0.8], {"n_rows": 2, "n_classes": 3}, "expected (2, 3)"),
        ("multiclass", np.full((2, 2), 0.5), {"n_rows": 2, "n_classes": 3}, "has 2 columns; expected 3"),
        ("multiclass", np.full((3, 3), 1 / 3), {"n_rows": 2, "n_classes": 3}, "has 3 rows; expected 2"),
        ("multiclass", [[0.2, 0.2, 0.2], [0.4, 0.3, 0.3]], {"n_rows": 2, "n_classes": 3},
         "1 row(s) do not, the first is row 0 summing to 0.6"),
    ],
)
def test_it_rejects_bad_predictions_with_a_precise_message(task_type, y_pred, kwargs, expected):
    array, error = prediction_check(task_type, y_pred, **kwargs)
    assert array is None
    assert expected in error


def test_it_states_the_contract_for_agents_with_the_chosen_primary_metric():
    text = contract_text("binary", primary_metric="accuracy", direction="maximize")
    assert "def train(X_train, y_train, X_test, *, artifacts_dir)" in text
    assert "positive-class probabilities" in text
    assert "roc_auc, log_loss, accuracy, f1" in text
    assert "Primary metric: accuracy (maximize)" in text
    assert "holdout" in text
    assert "Primary metric: rmse (minimize)" in contract_text("regression")


def test_it_fingerprints_both_tools_and_the_contract_version():
    base = tools_fingerprint(load_data="a", evaluate="b")
    assert len(base) == 64
    assert base == tools_fingerprint(load_data="a", evaluate="b")
    assert base != tools_fingerprint(load_data="a ", evaluate="b")
    assert base != tools_fingerprint(load_data="a", evaluate="c")
    assert base != tools_fingerprint(load_data="b", evaluate="a")
    assert base != tools_fingerprint(load_data="a", evaluate="b", contract_version=CONTRACT_VERSION + 1)


def test_it_keeps_the_registry_importable_without_django(tmp_path):
    """The sandboxed evaluator loads contracts.py by path, in an interpreter that may lack Django."""
    import subprocess
    import sys

    from domains import contracts

    code = (
        "import importlib.util, sys\n"
        "sys.modules['django'] = None\n"  # importing django now fails
        f"spec = importlib.util.spec_from_file_location('c', {contracts.__file__!r})\n"
        "m = importlib.util.module_from_spec(spec); spec.loader.exec_module(m)\n"
        "print(m.prediction_check('binary', [0.5], n_rows=1)[1])\n"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "None"
