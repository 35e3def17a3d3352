"""The built-in researcher's train modules, run directly on real data (no lab around them)."""

import contextlib
import io
import types

import numpy as np
import pandas as pd
import pytest
from sklearn import datasets
from sklearn.metrics import mean_squared_error, roc_auc_score

from agentrun.backends.builtin_code import Config, train_code_render
from agentrun.backends.builtin_plan import SCAN_ORDER, default_params

METRICS = {"regression": "rmse", "binary": "roc_auc", "multiclass": "log_loss"}


def load(code: str) -> types.ModuleType:
    module = types.ModuleType("train_module")
    exec(compile(code, "train.py", "exec"), module.__dict__)
    return module


def train(config: Config, task_type: str, X_train, y_train, X_test, *, seed: int = 0, monkeypatch=None):
    code = train_code_render(config=config, task_type=task_type, metric=METRICS[task_type])
    if monkeypatch is not None:
        monkeypatch.setenv("DOJO_SEED", str(seed))
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        pred = load(code).train(X_train, y_train, X_test, artifacts_dir="/tmp")
    return np.asarray(pred), out.getvalue()


def families(task_type: str) -> list[str]:
    names = ["constant", "linear", *SCAN_ORDER]
    return [f for f in names if not (f == "elastic_net" and task_type != "regression")]


def mixed_frame(n: int = 240, seed: int = 0) -> tuple[pd.DataFrame, np.ndarray]:
    """Numbers with NaNs, a pandas category, an object column with None, a bool, and a rare
    positive class (about 15%)."""
    rng = np.random.default_rng(seed)
    X = pd.DataFrame({
        "a": rng.normal(size=n),
        "b": rng.normal(size=n),
        "colour": pd.Categorical(rng.choice(["red", "green", "blue"], size=n)),
        "city": pd.Series(rng.choice(["x", "y", "z", None], size=n), dtype=object),
        "flag": rng.random(n) > 0.5,
    })
    X.loc[rng.random(n) < 0.2, "a"] = np.nan
    logit = 2 * np.nan_to_num(X["a"].to_numpy()) + 1.5 * (X["colour"] == "red").to_numpy() - 2.5
    y = np.where(rng.random(n) < 1 / (1 + np.exp(-logit)), "yes", "no")
    return X, y


@pytest.mark.parametrize("task_type", ["regression", "binary", "multiclass"])
def test_it_trains_every_family_with_the_output_the_task_needs(task_type):
    loader = {"regression": datasets.load_diabetes, "binary": datasets.load_breast_cancer,
              "multiclass": datasets.load_wine}[task_type]
    X, y = loader(return_X_y=True, as_frame=True)
    X, y = X.iloc[::2], y.iloc[::2]  # small and fast
    order = np.random.default_rng(0).permutation(len(y))
    X, y = X.iloc[order], y.iloc[order]
    X_train, X_test, y_train = X.iloc[:-30], X.iloc[-30:], y.iloc[:-30]
    for family in families(task_type):
        pred, stdout = train(Config(family, default_params(family, task_type)), task_type, X_train, y_train, X_test)
        assert np.isfinite(pred).all(), family
        assert f"DOJO_CV {METRICS[task_type]}=" in stdout, family
        if task_type == "regression":
            assert pred.shape == (30,)
        elif task_type == "binary":
            assert pred.shape == (30,) and (pred >= 0).all() and (pred <= 1).all()
        else:
            assert pred.shape == (30, 3)
            np.testing.assert_allclose(pred.sum(axis=1), 1.0, atol=1e-6)


def test_it_learns_from_categoricals_missing_values_and_imbalance():
    X, y = mixed_frame(400)
    X_train, X_test, y_train, y_test = X.iloc[:300], X.iloc[300:], y[:300], y[300:]
    aucs = {}
    for family in ["linear", "hist_gradient_boosting", "random_forest", "svm", "knn"]:
        pred, _ = train(Config(family, default_params(family, "binary")), "binary", X_train, y_train, X_test)
        aucs[family] = roc_auc_score(y_test == "yes", pred)  # "yes" sorts last: the positive class
    assert min(aucs.values()) > 0.7, aucs


def test_it_takes_a_numpy_object_array_and_unseen_categories():
    X, y = mixed_frame(200)
    X_array = X.astype(object).to_numpy()
    X_test = X_array[-20:].copy()
    X_test[:, 3] = "never-seen"
    for family in ["linear", "hist_gradient_boosting", "extra_trees"]:
        pred, _ = train(Config(family, default_params(family, "binary")), "binary", X_array[:-20], y[:-20], X_test)
        assert pred.shape == (20,) and np.isfinite(pred).all()


def test_it_keeps_multiclass_columns_in_sorted_order_when_a_fold_misses_a_class():
    X, y = datasets.load_iris(return_X_y=True)
    labels = np.array(["setosa", "versicolor", "virginica"])[y]
    # Two rows of "virginica" only: most of the five folds train without it.
    keep = np.r_[np.flatnonzero(labels != "virginica"), np.flatnonzero(labels == "virginica")[:2]]
    X_train, y_train = X[keep], labels[keep]
    X_test = X[labels == "setosa"][:5]
    for family in ["linear", "hist_gradient_boosting", "random_forest", "svm"]:
        pred, stdout = train(Config(family, default_params(family, "multiclass")), "multiclass", X_train, y_train, X_test)
        assert pred.shape == (5, 3)
        assert (pred.argmax(axis=1) == 0).all(), family  # setosa is the first sorted class
        assert "DOJO_CV log_loss=" in stdout


def test_it_lays_probabilities_out_by_the_task_classes_when_training_lacks_one():
    X, y = datasets.load_wine(return_X_y=True)
    seen = y != 2
    code = train_code_render(
        config=Config("linear"), task_type="multiclass", metric="log_loss", classes=[0, 1, 2]
    )
    with contextlib.redirect_stdout(io.StringIO()):
        pred = load(code).train(X[seen], y[seen], X[:10], artifacts_dir="/tmp")
    assert pred.shape == (10, 3)
    assert (pred[:, 2] == 0).all()


def test_it_is_seeded_by_dojo_seed(monkeypatch):
    X, y = datasets.load_diabetes(return_X_y=True)
    config = Config("random_forest", {**default_params("random_forest", "regression"), "n_estimators": 20})
    a, _ = train(config, "regression", X[:300], y[:300], X[300:], seed=1, monkeypatch=monkeypatch)
    b, _ = train(config, "regression", X[:300], y[:300], X[300:], seed=1, monkeypatch=monkeypatch)
    c, _ = train(config, "regression", X[:300], y[:300], X[300:], seed=2, monkeypatch=monkeypatch)
    np.testing.assert_array_equal(a, b)
    assert not np.array_equal(a, c)


def test_it_renders_a_standalone_module_with_a_transform_and_a_weighted_blend():
    members = (
        Config("linear", {"alpha": 3.0}, target_transform="yeo_johnson"),
        Config("hist_gradient_boosting", default_params("hist_gradient_boosting", "regression")),
    )
    code = train_code_render(config=Config("ensemble", members=members), task_type="regression", metric="rmse")
    assert "agentrun" not in code and "django" not in code
    assert "def train(X_train, y_train, X_test, *, artifacts_dir):" in code
    X, y = datasets.load_diabetes(return_X_y=True)
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        pred = load(code).train(X[:350], np.exp(y[:350] / 100), X[350:], artifacts_dir="/tmp")
    assert "DOJO_WEIGHTS" in out.getvalue()
    baseline = np.full(len(pred), np.exp(y[:350] / 100).mean())
    target = np.exp(y[350:] / 100)
    assert mean_squared_error(target, pred) < mean_squared_error(target, baseline)


def test_it_refuses_what_it_cannot_render():
    with pytest.raises(ValueError):
        train_code_render(config=Config("elastic_net"), task_type="binary", metric="roc_auc")
    with pytest.raises(ValueError):
        train_code_render(config=Config("linear"), task_type="regression", metric="made_up")
    with pytest.raises(ValueError):
        Config("ensemble")


def test_it_scores_one_held_out_fifth_on_mid_sized_data_and_blends_on_those_rows():
    X, y = mixed_frame(6_000)
    X_train, X_test, y_train = X.iloc[:5_500], X.iloc[5_500:], y[:5_500]
    members = (Config("linear", default_params("linear", "binary")), Config("knn", default_params("knn", "binary")))
    for config in (members[0], Config("ensemble", members=members)):
        pred, stdout = train(config, "binary", X_train, y_train, X_test)
        assert pred.shape == (500,) and np.isfinite(pred).all()
        assert "rows=1100" in stdout, stdout  # a fifth of 5,500 rows, not all of them
