"""SETUP.md parsing and the offline template generator; generated code is run here, in-process."""

import numpy as np
import pandas as pd
import pytest
from sklearn.metrics import log_loss, roc_auc_score

from domains.generation import (
    EVALUATE_TEMPLATES,
    GenerationError,
    generate_from_template,
    setup_parse,
)

SETUP_CSV = """# Setup
## Dataset
- data: data/houses.csv
- target: price
- id columns: id, uuid
- test ratio: 0.2
Rows are houses.
## Evaluate
rmse
"""


def _run(code: str, name: str):
    namespace: dict = {}
    exec(compile(code, f"{name}.py", "exec"), namespace)
    return namespace[name]


def _write_setup(workspace, text):
    path = workspace / "SETUP.md"
    path.write_text(text)
    return path


@pytest.fixture
def houses(workspace):
    rng = np.random.default_rng(1)
    n = 200
    frame = pd.DataFrame({
        "id": range(n),
        "uuid": [f"u{i}" for i in range(n)],
        "area": rng.normal(100, 20, n).round(1),
        "city": rng.choice(["paris", "lyon", None], n),
        "rooms": rng.integers(1, 6, n).astype(float),
        "kind": rng.choice(["a", "b", "c"], n),
    })
    frame.loc[::7, "rooms"] = np.nan
    frame["price"] = frame["area"] * 3 + rng.normal(0, 5, n)
    (workspace / "data").mkdir()
    frame.to_csv(workspace / "data" / "houses.csv", index=False)
    return frame


def test_it_reads_the_dataset_lines_of_setup_md(workspace):
    spec = setup_parse(path=_write_setup(workspace, SETUP_CSV))
    assert (spec.data, spec.target, spec.id_columns, spec.loader) == ("data/houses.csv", "price", ["id", "uuid"], "")


def test_it_reads_a_loader_in_any_spelling(workspace):
    text = "## Dataset\n* Loader = `sklearn.datasets.load_wine()`\n## Evaluate\n"
    assert setup_parse(path=_write_setup(workspace, text)).loader == "load_wine"
    prose = "## Dataset\nWe use scikit-learn's load_iris flowers.\n## Evaluate\naccuracy\n"
    assert setup_parse(path=_write_setup(workspace, prose)).loader == "load_iris"


def test_it_ignores_placeholders_and_unknown_keys(workspace):
    text = "## Dataset\n- data: <path>\n- target:\n- seed: 4\n- task type: binary\n## Evaluate\n"
    spec = setup_parse(path=_write_setup(workspace, text))
    assert (spec.data, spec.target, spec.loader) == ("", "", "")


def test_it_refuses_a_missing_setup_md(workspace):
    with pytest.raises(GenerationError, match="SETUP.md not found"):
        setup_parse(path=workspace / "SETUP.md")


def test_it_refuses_an_empty_setup_md(workspace):
    with pytest.raises(GenerationError, match="is empty; it needs a '## Dataset' section"):
        setup_parse(path=_write_setup(workspace, "  \n\n"))


def test_it_refuses_setup_md_without_its_sections(workspace):
    with pytest.raises(GenerationError, match=r"missing its '## Dataset' and '## Evaluate' sections \(found '## notes'\)"):
        setup_parse(path=_write_setup(workspace, "# Setup\n## Notes\n- data: x.csv\n"))
    with pytest.raises(GenerationError, match="missing its '## Evaluate' section"):
        setup_parse(path=_write_setup(workspace, "## Dataset\n- loader: load_iris\n"))


def test_it_generates_a_csv_loader_keeping_categoricals_and_missing_values(workspace, houses, monkeypatch):
    # The config's split applies where SETUP.md says nothing about it.
    spec = setup_parse(path=_write_setup(workspace, SETUP_CSV.replace("- test ratio: 0.2\n", "")))
    tools = generate_from_template(spec=spec, task_type="regression", config={"seed": 7, "test_ratio": 0.25}, workspace=workspace)
    assert tools.origin == "template"
    monkeypatch.chdir(workspace)
    X_train, X_test, y_train, y_test = _run(tools.load_data, "load_data")()
    assert (len(X_train), len(X_test)) == (150, 50)
    assert list(X_train.columns) == ["area", "city", "rooms", "kind"]  # id, uuid and the target dropped
    assert X_train["city"].dtype == "category" and X_train["kind"].dtype == "category"
    assert X_train["city"].isna().any()  # missing stays missing, not a "nan" category
    assert "nan" not in X_train["city"].cat.categories
    assert X_train["rooms"].isna().any() and X_train["rooms"].dtype == "float64"
    assert list(X_train.index) == list(range(150))
    again = _run(tools.load_data, "load_data")()
    pd.testing.assert_frame_equal(again[0], X_train)  # deterministic from the seed
    np.testing.assert_allclose(X_train["area"].to_numpy() * 3, y_train.to_numpy(), atol=30)


def test_it_stratifies_the_split_for_classification(workspace, houses, monkeypatch):
    text = SETUP_CSV.replace("- target: price", "- target: kind")
    spec = setup_parse(path=_write_setup(workspace, text))
    tools = generate_from_template(spec=spec, task_type="multiclass", config={}, workspace=workspace)
    monkeypatch.chdir(workspace)
    _, _, y_train, y_test = _run(tools.load_data, "load_data")()
    share_all = houses["kind"].value_counts(normalize=True).sort_index()
    share_test = y_test.value_counts(normalize=True).sort_index()
    assert (share_all - share_test).abs().max() < 0.03


def test_it_reads_parquet_too(workspace, houses, monkeypatch):
    houses.to_parquet(workspace / "data" / "houses.parquet")
    spec = setup_parse(path=_write_setup(workspace, SETUP_CSV.replace("houses.csv", "houses.parquet")))
    tools = generate_from_template(spec=spec, task_type="regression", config={}, workspace=workspace)
    assert "pd.read_parquet" in tools.load_data
    monkeypatch.chdir(workspace)
    X_train, X_test, _, _ = _run(tools.load_data, "load_data")()
    assert len(X_train) + len(X_test) == 200 and X_train["city"].dtype == "category"


def test_it_reports_a_missing_data_file(workspace):
    spec = setup_parse(path=_write_setup(workspace, SETUP_CSV))
    with pytest.raises(GenerationError, match=r"the data file data/houses.csv does not exist \(looked for .*workspace/data/houses.csv\)"):
        generate_from_template(spec=spec, task_type="regression", config={}, workspace=workspace)


def test_it_lists_the_columns_found_when_the_target_is_missing(workspace, houses):
    spec = setup_parse(path=_write_setup(workspace, SETUP_CSV.replace("- target: price", "- target: cost")))
    with pytest.raises(GenerationError) as caught:
        generate_from_template(spec=spec, task_type="regression", config={}, workspace=workspace)
    assert str(caught.value) == (
        "target column 'cost' is not in data/houses.csv; columns found: id, uuid, area, city, rooms, kind, price"
    )


def test_it_reports_a_missing_id_column(workspace, houses):
    spec = setup_parse(path=_write_setup(workspace, SETUP_CSV.replace("id, uuid", "id, ref")))
    with pytest.raises(GenerationError, match="ID column 'ref' is not in data/houses.csv; columns found: id, uuid"):
        generate_from_template(spec=spec, task_type="regression", config={}, workspace=workspace)


def test_it_needs_a_target_for_a_data_file(workspace, houses):
    spec = setup_parse(path=_write_setup(workspace, "## Dataset\n- data: data/houses.csv\n## Evaluate\n"))
    with pytest.raises(GenerationError, match="no target column"):
        generate_from_template(spec=spec, task_type="regression", config={}, workspace=workspace)


def test_it_refuses_a_loader_of_another_task_type(workspace):
    spec = setup_parse(path=_write_setup(workspace, "## Dataset\n- loader: load_diabetes\n## Evaluate\n"))
    with pytest.raises(GenerationError, match="load_diabetes is a regression dataset but this task is binary"):
        generate_from_template(spec=spec, task_type="binary", config={}, workspace=workspace)


def test_it_generates_a_bundled_loader_split_from_the_config(workspace):
    spec = setup_parse(path=_write_setup(workspace, "## Dataset\n- loader: load_breast_cancer\n## Evaluate\n"))
    tools = generate_from_template(spec=spec, task_type="binary", config={"test_ratio": 0.3, "seed": 3}, workspace=workspace)
    X_train, X_test, y_train, y_test = _run(tools.load_data, "load_data")()
    assert len(X_test) == round(569 * 0.3) and isinstance(X_train, pd.DataFrame)
    assert abs(y_test.mean() - y_train.mean()) < 0.02  # stratified


def test_it_scores_binary_string_labels_with_the_larger_label_as_positive():
    evaluate = _run(EVALUATE_TEMPLATES["binary"], "evaluate")
    y_test = pd.Series(["yes", "no", "yes", "no", "yes"])
    proba = np.array([0.9, 0.2, 0.6, 0.4, 0.3])  # probability of "yes", the larger label
    metrics = evaluate(proba, X_train=None, X_test=None, y_train=pd.Series(["no", "yes"]), y_test=y_test, artifacts_dir=None)
    truth = (y_test == "yes").astype(int)
    assert metrics["roc_auc"] == pytest.approx(roc_auc_score(truth, proba))
    assert metrics["log_loss"] == pytest.approx(log_loss(truth, proba))
    assert metrics["accuracy"] == pytest.approx(0.8)
    assert set(metrics) == {"roc_auc", "log_loss", "accuracy", "f1"}


def test_it_scores_a_multiclass_subset_lacking_a_class_with_all_classes_as_labels():
    evaluate = _run(EVALUATE_TEMPLATES["multiclass"], "evaluate")
    y_train = np.array(["a", "b", "c", "a"])
    y_test = np.array(["a", "b", "a"])  # no "c" in this part of the test rows
    proba = np.array([[0.7, 0.2, 0.1], [0.1, 0.8, 0.1], [0.5, 0.25, 0.25]])
    metrics = evaluate(proba, X_train=None, X_test=None, y_train=y_train, y_test=y_test, artifacts_dir=None)
    assert metrics["log_loss"] == pytest.approx(log_loss(y_test, proba, labels=["a", "b", "c"]))
    assert metrics["accuracy"] == 1.0


def test_it_scores_regression_with_rmse_mae_r2():
    evaluate = _run(EVALUATE_TEMPLATES["regression"], "evaluate")
    metrics = evaluate([1.0, 2.0, 5.0], X_train=None, X_test=None, y_train=None, y_test=[1.0, 2.0, 3.0], artifacts_dir=None)
    assert metrics["rmse"] == pytest.approx(np.sqrt(4 / 3))
    assert metrics["mae"] == pytest.approx(2 / 3)
    assert metrics["r2"] == pytest.approx(1 - 4 / 2)
