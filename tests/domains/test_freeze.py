"""Freeze: the gate, the snapshot (layout, types, holdout), readiness, unfreeze."""

import json
import pickle
import stat
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from dojo_site.errors import Conflict, InvalidInput, NotReady
from domains.contracts import tools_fingerprint
from domains.services import (
    contract_annotate,
    task_assert_ready,
    task_contract_matches,
    task_freeze,
    task_generate,
    task_tools_import,
    task_tools_save,
    task_unfreeze,
    task_update,
    task_verify,
)
from domains.snapshot import data_fingerprint_compute, snapshot_load_public, snapshot_paths
from experiments.models import Experiment
from tests.domains.taskkit import EVALUATE_REGRESSION, LOAD_REGRESSION, make_domain, task_of

pytestmark = pytest.mark.django_db


def _ready_task(workspace, *, load=LOAD_REGRESSION, evaluate=EVALUATE_REGRESSION, task_type="regression", config=None):
    domain = make_domain(workspace, task_type=task_type)
    task = task_of(domain)
    if config:
        task = task_update(task=task, config=config)
    task_tools_import(task=task, load_data=load, evaluate=evaluate)
    run = task_verify(task=task)
    assert run.ok, run.errors
    return task


def test_it_refuses_to_freeze_without_tools(workspace):
    task = task_of(make_domain(workspace))
    with pytest.raises(NotReady, match="load_data is missing; run `dojo_task generate`"):
        task_freeze(task=task)


def test_it_refuses_to_freeze_unverified_tools(workspace):
    task = task_of(make_domain(workspace))
    task_tools_import(task=task, load_data=LOAD_REGRESSION, evaluate=EVALUATE_REGRESSION)
    with pytest.raises(NotReady, match=r"load_data v1 has not been verified; run `dojo_task verify`"):
        task_freeze(task=task)
    assert not task_of(task.domain).is_frozen


def test_it_refuses_to_freeze_tools_that_failed_verification(workspace):
    task = task_of(make_domain(workspace))
    task_tools_import(task=task, load_data="def load_data():\n    return 1, 2, 3\n", evaluate=EVALUATE_REGRESSION)
    task_verify(task=task)
    with pytest.raises(NotReady, match="load_data v1 failed verification: load_data returned a tuple of length 3"):
        task_freeze(task=task)


def test_it_refuses_to_freeze_tools_edited_after_verification(workspace):
    task = _ready_task(workspace)
    task_tools_save(task=task, codes={"evaluate": EVALUATE_REGRESSION + "\n# tweaked\n"}, origin="human")
    with pytest.raises(NotReady, match="evaluate v2 has not been verified"):
        task_freeze(task=task)


def test_it_writes_the_snapshot_with_its_layout_and_fingerprints(workspace, dojo_home):
    task = task_freeze(task=_ready_task(workspace))
    assert task.is_frozen
    assert task.fingerprint == tools_fingerprint(load_data=LOAD_REGRESSION, evaluate=EVALUATE_REGRESSION)
    paths = snapshot_paths(task)
    assert paths.root.parent.parent == dojo_home / "snapshots"
    assert task.data_fingerprint == data_fingerprint_compute(paths.root)
    manifest = json.loads(paths.manifest.read_text())
    assert manifest["fingerprint"] == task.fingerprint and manifest["data_fingerprint"] == task.data_fingerprint
    assert (manifest["n_train"], manifest["n_test"], manifest["task_type"]) == (48, 12, "regression")
    assert manifest["shapes"]["X_train"] == [48, 3]
    X_train, y_train, X_test = snapshot_load_public(paths.root)
    assert X_train.shape == (48, 3) and y_train.shape == (48,) and X_test.shape == (12, 3)
    with open(paths.y_test, "rb") as handle:
        assert pickle.load(handle).shape == (12,)
    assert paths.load_data.read_text() == LOAD_REGRESSION and paths.evaluate.read_text() == EVALUATE_REGRESSION
    assert stat.S_IMODE(paths.evaluate.stat().st_mode) == 0o444
    assert stat.S_IMODE(paths.tools.stat().st_mode) == 0o555
    assert stat.S_IMODE(paths.sealed.stat().st_mode) == 0o700
    assert stat.S_IMODE(paths.X_train.stat().st_mode) == 0o444
    assert not list(paths.root.parent.glob("*.partial"))


def test_it_splits_a_deterministic_private_holdout(workspace, django_capture_on_commit_callbacks):
    task = task_freeze(task=_ready_task(workspace))
    split = json.loads(snapshot_paths(task).split.read_text())
    assert sorted(split["validation"] + split["holdout"]) == list(range(12))
    assert len(split["holdout"]) == 6
    first_data = task.data_fingerprint
    with django_capture_on_commit_callbacks(execute=True):
        task = task_unfreeze(task=task, reason="check determinism")
    task = task_freeze(task=task)
    assert json.loads(snapshot_paths(task).split.read_text()) == split
    assert task.data_fingerprint == first_data


def test_it_has_no_holdout_when_the_ratio_is_zero(workspace):
    task = task_freeze(task=_ready_task(workspace, config={"holdout_ratio": 0}))
    split = json.loads(snapshot_paths(task).split.read_text())
    assert split == {"validation": list(range(12)), "holdout": []}
    assert task.snapshot_info["n_holdout"] == 0


BINARY_LOAD = '''
import numpy as np


def load_data():
    rng = np.random.default_rng(1)
    X = rng.normal(size=(400, 2))
    y = np.where(rng.random(400) < 0.2, "spam", "ham")
    return X[:200], X[200:], y[:200], y[200:]
'''

BINARY_EVALUATE = '''
import numpy as np


def evaluate(y_pred, *, X_train, X_test, y_train, y_test, artifacts_dir):
    classes = np.unique(np.concatenate([np.asarray(y_train), np.asarray(y_test)]))
    y = (np.asarray(y_test) == classes[-1]).astype(float)
    p = np.clip(np.asarray(y_pred, dtype=float), 1e-9, 1 - 1e-9)
    order = np.argsort(p)
    ranks = np.empty(len(p)); ranks[order] = np.arange(1, len(p) + 1)
    pos = y.sum()
    auc = (ranks[y == 1].sum() - pos * (pos + 1) / 2) / (pos * (len(y) - pos))
    return {
        "roc_auc": float(auc),
        "log_loss": float(-(y * np.log(p) + (1 - y) * np.log(1 - p)).mean()),
        "accuracy": float(((p >= 0.5) == y).mean()),
        "f1": float(2 * ((p >= 0.5) & (y == 1)).sum() / max(1, (p >= 0.5).sum() + pos)),
    }
'''


def test_it_stratifies_the_holdout_for_classification(workspace):
    task = task_freeze(task=_ready_task(workspace, load=BINARY_LOAD, evaluate=BINARY_EVALUATE, task_type="binary"))
    paths = snapshot_paths(task)
    split = json.loads(paths.split.read_text())
    with open(paths.y_test, "rb") as handle:
        y_test = pickle.load(handle)
    share = {part: float(np.mean(y_test[split[part]] == "spam")) for part in ("validation", "holdout")}
    overall = float(np.mean(y_test == "spam"))
    assert abs(share["validation"] - overall) < 0.01 and abs(share["holdout"] - overall) < 0.01
    assert task.snapshot_info["classes"] == ["ham", "spam"]


TYPED_LOAD = '''
import numpy as np
import pandas as pd


def load_data():
    n = 40
    X = pd.DataFrame({
        "size": np.arange(n, dtype=float),
        "kind": pd.Categorical(["a", "b", None, "c"] * 10),
        "count": pd.array([1, None, 3, 4] * 10, dtype="Int64"),
        "day": pd.date_range("2024-01-01", periods=n, freq="D"),
    })
    y = [float((i * 7) % 11) for i in range(n)]  # not a copy of "size": the leak audit would block the freeze
    return X.iloc[:30].reset_index(drop=True), X.iloc[30:].reset_index(drop=True), y[:30], y[30:]
'''


def test_it_keeps_what_load_data_returned_and_turns_lists_into_arrays(workspace):
    task = task_freeze(task=_ready_task(workspace, load=TYPED_LOAD))
    X_train, y_train, X_test = snapshot_load_public(snapshot_paths(task).root)
    assert isinstance(X_train, pd.DataFrame)
    assert X_train["kind"].dtype == "category" and X_train["kind"].isna().sum() == 7
    assert str(X_train["count"].dtype) == "Int64" and X_train["count"].isna().sum() == 8
    assert str(X_train["day"].dtype).startswith("datetime64")
    assert isinstance(y_train, np.ndarray) and y_train.dtype == np.float64 and y_train.shape == (30,)
    assert task.snapshot_info["types"]["y_train"] == "ndarray"
    assert task.snapshot_info["dtypes"]["X_test"]["kind"] == "category"


def test_it_is_ready_only_when_frozen_with_its_snapshot_intact(workspace):
    task = _ready_task(workspace)
    with pytest.raises(NotReady, match="is not frozen; run `dojo_task setup --domain lab`"):
        task_assert_ready(task=task)
    task = task_freeze(task=task)
    task_assert_ready(task=task)
    paths = snapshot_paths(task)
    paths.tools.chmod(0o755)
    paths.evaluate.chmod(0o644)
    paths.evaluate.write_text("def evaluate(y_pred, **kw):\n    return {'rmse': 0.0, 'mae': 0.0, 'r2': 1.0}\n")
    with pytest.raises(NotReady, match="the frozen evaluate.py in .* differs from the frozen code"):
        task_assert_ready(task=task)
    paths.evaluate.write_text(EVALUATE_REGRESSION)
    task_assert_ready(task=task)
    paths.sealed.chmod(0o700)
    paths.y_test.unlink()
    with pytest.raises(NotReady, match="snapshot file .*y_test.pkl is missing"):
        task_assert_ready(task=task)


def test_it_is_not_ready_when_the_stored_fingerprint_differs(workspace):
    task = task_freeze(task=_ready_task(workspace))
    type(task).objects.filter(pk=task.pk).update(fingerprint="0" * 64)
    task.refresh_from_db()
    with pytest.raises(NotReady, match="do not match its frozen fingerprint"):
        task_assert_ready(task=task)


def test_it_refuses_to_edit_the_tools_of_a_frozen_task(workspace):
    task = task_freeze(task=_ready_task(workspace))
    with pytest.raises(Conflict, match="the task is frozen, so its tools cannot change; unfreeze it first"):
        task_tools_import(task=task, evaluate=EVALUATE_REGRESSION + "\n# changed\n")
    with pytest.raises(Conflict, match="the task is frozen"):
        task_generate(task=task)
    with pytest.raises(Conflict, match="unfreeze it before changing"):
        task_update(task=task, config={"seed": 1})
    with pytest.raises(Conflict, match="already frozen"):
        task_freeze(task=task)


def test_it_leaves_nothing_half_written_when_load_data_fails_at_freeze(workspace, dojo_home):
    data = workspace / "numbers.csv"
    data.write_text("a,y\n" + "".join(f"{i},{(i * 7) % 11}\n" for i in range(30)))  # y is no function of a
    load = '''
import numpy as np


def load_data():
    table = np.loadtxt("numbers.csv", delimiter=",", skiprows=1)
    X, y = table[:, :1], table[:, 1]
    return X[:24], X[24:], y[:24], y[24:]
'''
    task = _ready_task(workspace, load=load)
    data.unlink()
    with pytest.raises(NotReady, match="cannot freeze: load_data failed while writing the snapshot: load_data raised FileNotFoundError"):
        task_freeze(task=task)
    task.refresh_from_db()
    assert not task.is_frozen and task.snapshot_path == "" and task.fingerprint == ""
    assert list((dojo_home / "snapshots").glob("*/*")) == []
    assert list((dojo_home / "work").glob("*")) == []


def test_it_records_an_unfreeze_and_marks_earlier_experiments(workspace, django_capture_on_commit_callbacks):
    task = task_freeze(task=_ready_task(workspace))
    old_snapshot = Path(task.snapshot_path)
    before = Experiment.objects.create(
        domain=task.domain, train_code="x", code_sha256="x", task_fingerprint=task.fingerprint,
        data_fingerprint=task.data_fingerprint,
    )
    assert contract_annotate(Experiment.objects.all(), task=task).get().other_contract is False
    with pytest.raises(InvalidInput, match="a reason is required"):
        task_unfreeze(task=task, reason="  ")
    with django_capture_on_commit_callbacks(execute=True):
        task = task_unfreeze(task=task, reason="evaluate must also report a plot")
    assert (task.is_frozen, task.unfreeze_reason) == (False, "evaluate must also report a plot")
    assert task.unfrozen_at is not None and not old_snapshot.exists()
    with pytest.raises(Conflict, match="not frozen"):
        task_unfreeze(task=task, reason="again")
    task_tools_save(task=task, codes={"evaluate": EVALUATE_REGRESSION + "\n# v2\n"}, origin="human")
    task_verify(task=task)
    task = task_freeze(task=task)
    after = Experiment.objects.create(
        domain=task.domain, train_code="y", code_sha256="y", task_fingerprint=task.fingerprint,
        data_fingerprint=task.data_fingerprint,
    )
    marked = {e.pk: e.other_contract for e in contract_annotate(Experiment.objects.all(), task=task)}
    assert marked == {before.pk: True, after.pk: False}
    assert not task_contract_matches(task=task, task_fingerprint=before.task_fingerprint, data_fingerprint=before.data_fingerprint)


def test_it_refuses_a_snapshot_holding_a_link_planted_by_load_data(workspace, tmp_path):
    """load_data writes the snapshot from inside the sandbox; a link it plants there would later
    be followed by the trusted side (chmod while sealing, hashing, unpickling)."""
    victim = tmp_path / "victim.txt"
    victim.write_text("not the snapshot's")
    victim.chmod(0o600)
    planting = LOAD_REGRESSION + f'''

import json as _json, os as _os, sys as _sys

_spec = _json.load(open(_sys.argv[1]))
if _spec.get("snapshot_dir"):
    _os.symlink({str(victim)!r}, _os.path.join(_spec["snapshot_dir"], "public", "extra.pkl"))
'''
    task = _ready_task(workspace, load=planting)
    with pytest.raises(NotReady, match="will not follow: public/extra.pkl is a symlink"):
        task_freeze(task=task)
    assert stat.S_IMODE(victim.stat().st_mode) == 0o600
    assert not task_of(task.domain).is_frozen
