"""Runs inside the sandbox: checks load_data and evaluate (mode "verify") or runs load_data once and
writes the snapshot (mode "snapshot").

Usage: python verify_entry.py SPEC.json. It imports nothing from Django or Dojo except the task-type
registry, loaded by path from spec["contracts_path"]; it needs numpy (and whatever the tools import).
It writes its result as JSON to spec["output"]; each error is one line naming the tool, what was
expected and what was seen.
"""

import importlib.util
import io
import json
import math
import numbers
import os
import pickle
import resource
import sys
import time
import traceback
from pathlib import Path

import numpy as np

PICKLE_PROTOCOL = 5


class _PrintCounter(io.TextIOBase):
    """Stands in for stdout/stderr while a tool runs: counts what it prints, keeps the start."""

    def __init__(self) -> None:
        self.count = 0
        self.head = ""

    def write(self, text: str) -> int:
        self.count += len(text)
        if len(self.head) < 2000:
            self.head += text[: 2000 - len(self.head)]
        return len(text)

    def writable(self) -> bool:
        return True


def _import_by_path(name, path):
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _where(exc, tool):
    """' (load_data.py line 12)' for the deepest frame inside the tool's file, else ''."""
    line = None
    for frame in traceback.extract_tb(exc.__traceback__):
        if os.path.basename(frame.filename) == f"{tool}.py":
            line = frame.lineno
    return f" ({tool}.py line {line})" if line else ""


def _raised(tool, exc):
    message = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
    return f"{tool} raised {type(exc).__name__}{': ' + message[:300] if message else ''}{_where(exc, tool)}"


def _call_tool(tool, func, state, *args, **kwargs):
    """Call a tool with its printing counted; return (value, error line or None)."""
    counter = _PrintCounter()
    saved = sys.stdout, sys.stderr
    sys.stdout = sys.stderr = counter
    try:
        value = func(*args, **kwargs)
        error = None
    except BaseException as exc:  # SystemExit and KeyboardInterrupt from a tool are its errors too
        value, error = None, _raised(tool, exc)
    finally:
        sys.stdout, sys.stderr = saved
    state["printed"][tool] = state["printed"].get(tool, 0) + counter.count
    limit = state["print_limit"]
    if error is None and counter.count > limit:
        error = (
            f"{tool} printed {counter.count / 1e6:.1f} MB; a tool may print at most {limit / 1e6:g} MB "
            "(its output is kept with every experiment)"
        )
    return value, error


def _shape(obj):
    shape = getattr(obj, "shape", None)
    if shape is not None:
        try:
            return tuple(int(s) for s in shape)
        except TypeError:
            return None
    try:
        return tuple(np.shape(obj))
    except Exception:
        return None


def _take(obj, positions):
    """Rows at `positions` of a DataFrame/Series, an array or a list."""
    if hasattr(obj, "iloc"):
        return obj.iloc[positions]
    if isinstance(obj, np.ndarray):
        return obj[positions]
    return [obj[i] for i in positions]


def _dtype_summary(obj):
    dtypes = getattr(obj, "dtypes", None)
    if dtypes is not None and hasattr(dtypes, "items"):
        items = list(dtypes.items())
        summary = {str(k): str(v) for k, v in items[:40]}
        if len(items) > 40:
            summary["…"] = f"{len(items) - 40} more columns"
        return summary
    dtype = getattr(obj, "dtype", None)
    if dtype is not None:
        return str(dtype)
    return type(obj).__name__


def _labels(y):
    return np.asarray(y, dtype=object).ravel() if not isinstance(y, np.ndarray) else y.ravel()


def _is_missing(value):
    return value is None or (isinstance(value, float) and math.isnan(value)) or (
        isinstance(value, np.floating) and np.isnan(value)
    )


def check_splits(result, task):
    """Errors of load_data's return value, and a sample describing it."""
    errors, sample = [], {}
    if not isinstance(result, (tuple, list)):
        return [f"load_data returned a {type(result).__name__}; expected a 4-tuple (X_train, X_test, y_train, y_test)"], sample
    if len(result) != 4:
        return [f"load_data returned a {type(result).__name__} of length {len(result)}; expected a 4-tuple (X_train, X_test, y_train, y_test)"], sample
    names = ("X_train", "X_test", "y_train", "y_test")
    shapes = dict(zip(names, (_shape(part) for part in result), strict=True))
    sample["shapes"] = {n: list(s) if s is not None else None for n, s in shapes.items()}
    sample["types"] = {n: type(p).__name__ for n, p in zip(names, result, strict=True)}
    sample["dtypes"] = {n: _dtype_summary(p) for n, p in zip(names, result, strict=True)}
    for name in names:
        shape = shapes[name]
        want = 2 if name.startswith("X") else 1
        if shape is None:
            errors.append(f"load_data: {name} has no shape (a {type(result[names.index(name)]).__name__}); expected a {want}-D array or DataFrame")
        elif len(shape) != want:
            what = "2-D (rows × features)" if want == 2 else "1-D (one label per row)"
            errors.append(f"load_data: {name} must be {what}; got shape {shape}")
        elif shape[0] == 0:
            errors.append(f"load_data: {name} is empty (0 rows)")
        elif want == 2 and shape[1] == 0:
            errors.append(f"load_data: {name} has no columns")
    if errors:
        return errors, sample
    for x, y in (("X_train", "y_train"), ("X_test", "y_test")):
        if shapes[x][0] != shapes[y][0]:
            errors.append(f"load_data: {x} has {shapes[x][0]} rows but {y} has {shapes[y][0]}; they must be aligned")
    if shapes["X_train"][1] != shapes["X_test"][1]:
        errors.append(f"load_data: X_train has {shapes['X_train'][1]} columns but X_test has {shapes['X_test'][1]}")
    if errors:
        return errors, sample
    y_train, y_test = _labels(result[2]), _labels(result[3])
    if task["is_classification"]:
        for name, y in (("y_train", y_train), ("y_test", y_test)):
            missing = sum(1 for v in y if _is_missing(v))
            if missing:
                errors.append(f"load_data: {name} has {missing} missing label(s); every row needs a class")
        if errors:
            return errors, sample
        try:
            classes = np.unique(np.concatenate([y_train, y_test]))
        except TypeError as exc:
            return [f"load_data: the class labels cannot be sorted (mixed types?): {exc}"], sample
        shown = [str(c) for c in classes[:20]]
        sample["classes"] = shown
        sample["n_classes"] = int(len(classes))
        if task["name"] == "binary":
            if len(classes) != 2:
                errors.append(f"load_data: a binary target needs exactly 2 classes; y_train and y_test hold {len(classes)}: {shown}")
            else:
                for name, y in (("y_train", y_train), ("y_test", y_test)):
                    present = np.unique(y)
                    if len(present) < 2:
                        errors.append(f"load_data: {name} holds only the class {present[0]!s}; it needs both classes")
        elif task["name"] == "multiclass":
            if len(classes) < 3:
                errors.append(f"load_data: a multiclass target needs at least 3 classes; found {len(classes)}: {shown} (use the binary task type)")
            elif len(np.unique(y_train)) < len(classes):
                errors.append("load_data: y_train lacks some classes that y_test has; the trainer could never predict them")
    else:
        for name, y in (("y_train", result[2]), ("y_test", result[3])):
            try:
                values = np.asarray(y, dtype=float).ravel()
            except (TypeError, ValueError):
                errors.append(f"load_data: a regression target must be numeric; {name} has dtype {_dtype_summary(y)}")
                continue
            bad = int((~np.isfinite(values)).sum())
            if bad:
                errors.append(f"load_data: {name} has {bad} missing or infinite value(s); a regression target must be finite")
    return errors, sample


def split_positions(y_test, *, n, ratio, seed, stratify):
    """(validation, holdout) row positions of X_test, deterministic from the seed.

    Classification is stratified: each class is split on its own so both parts keep every class
    that has at least two test rows."""
    if ratio <= 0 or n < 2:
        return list(range(n)), []
    rng = np.random.default_rng(seed)
    holdout = []
    groups = None
    if stratify:
        try:
            _, inverse = np.unique(_labels(y_test), return_inverse=True)
            groups = [np.flatnonzero(inverse == k) for k in range(int(inverse.max()) + 1)]
        except TypeError:
            groups = None
    if groups is None:
        groups = [np.arange(n)]
    for positions in groups:
        shuffled = rng.permutation(positions)
        take = int(round(len(shuffled) * ratio))
        if len(shuffled) >= 2:
            take = min(max(take, 1), len(shuffled) - 1)
        holdout.extend(int(p) for p in shuffled[:take])
    if not holdout:
        holdout = [int(rng.integers(n))]
    held = set(holdout)
    if len(held) == n:
        held.discard(max(held))
    return [i for i in range(n) if i not in held], sorted(held)


def _predictions(task, y_train, y_test, kind):
    """The true labels or a constant prediction, shaped like train()'s output for the task type."""
    y_train, y_test = _labels(y_train), _labels(y_test)
    if not task["is_classification"]:
        truth = np.asarray(y_test, dtype=float)
        return truth if kind == "truth" else np.full(len(truth), float(np.mean(np.asarray(y_train, dtype=float))))
    classes = np.unique(np.concatenate([y_train, y_test]))
    if task["name"] == "binary":
        if kind == "truth":
            return (y_test == classes[-1]).astype(float)
        return np.full(len(y_test), float(np.mean(y_train == classes[-1])))
    if kind == "truth":
        return (y_test[:, None] == classes[None, :]).astype(float)
    freq = np.array([np.mean(y_train == c) for c in classes], dtype=float)
    return np.tile(freq / freq.sum(), (len(y_test), 1))


def check_metrics(value, task, when):
    """Errors of one evaluate() return value."""
    expected = list(task["metrics"])
    if not isinstance(value, dict):
        return [f"evaluate {when} returned a {type(value).__name__}; expected a dict with exactly the keys {expected}"]
    errors = []
    missing = [k for k in expected if k not in value]
    extra = sorted(str(k) for k in value if k not in expected)
    if missing:
        errors.append(f"evaluate {when} is missing the key(s) {missing}; expected exactly {expected}")
    if extra:
        errors.append(f"evaluate {when} returned unexpected key(s) {extra}; expected exactly {expected}")
    for key in expected:
        if key not in value:
            continue
        v = value[key]
        if isinstance(v, (bool, np.bool_)) or not isinstance(v, numbers.Real):
            errors.append(f"evaluate {when} returned {key}={v!r:.60} ({type(v).__name__}); expected a finite number")
        elif not math.isfinite(float(v)):
            errors.append(f"evaluate {when} returned {key}={float(v)}; expected a finite number")
    return errors


# --- Leak measurements (judged on the trusted side by domains/audit.py) ---------------------
# Only numbers come out of here: how many test rows repeat a training row, and per column how
# close it is to the target, how well it predicts it alone, and whether it looks like a row id.
AUDIT_SAMPLE_ROWS = 5000
AUDIT_MAX_COLUMNS = 200
AUDIT_MAX_HASH_ROWS = 2_000_000
AUDIT_BINS = 32


def _row_hashes(X):
    """One uint64 per row; equal rows get equal hashes (NaN equals NaN, -0.0 equals 0.0)."""
    if hasattr(X, "iloc"):
        import pandas as pd

        return np.asarray(pd.util.hash_pandas_object(X, index=False), dtype=np.uint64)
    arr = np.asarray(X)
    if arr.ndim == 1:
        arr = arr[:, None]
    try:
        values = np.array(arr, dtype=np.float64)
    except (TypeError, ValueError):
        return np.array([hash(tuple(str(v) for v in row)) & 0xFFFFFFFFFFFFFFFF for row in arr], dtype=np.uint64)
    values[values == 0] = 0.0
    values[np.isnan(values)] = np.nan
    bits = values.view(np.uint64)
    h = np.full(len(values), 1469598103934665603, dtype=np.uint64)
    with np.errstate(over="ignore"):
        for j in range(bits.shape[1]):
            h = (h ^ bits[:, j]) * np.uint64(1099511628211)
            h ^= h >> np.uint64(29)
    return h


def _same_label(a, b):
    try:
        return np.isclose(np.asarray(a, dtype=float), np.asarray(b, dtype=float), rtol=1e-9, atol=1e-12)
    except (TypeError, ValueError):
        return np.array([str(x) == str(y) for x, y in zip(a, b, strict=True)], dtype=bool)


def _duplicates(X_train, X_test, y_train, y_test):
    n_train, n_test = _shape(X_train)[0], _shape(X_test)[0]
    if max(n_train, n_test) > AUDIT_MAX_HASH_ROWS:
        return {"skipped": f"more than {AUDIT_MAX_HASH_ROWS} rows"}
    h_train, h_test = _row_hashes(X_train), _row_hashes(X_test)
    order = np.argsort(h_train, kind="stable")
    sorted_train = h_train[order]
    pos = np.clip(np.searchsorted(sorted_train, h_test), 0, max(len(sorted_train) - 1, 0))
    found = sorted_train[pos] == h_test if len(sorted_train) else np.zeros(len(h_test), dtype=bool)
    matched = np.flatnonzero(found)
    same = 0
    if len(matched):
        yt, ytr = _labels(y_test), _labels(y_train)
        same = int(_same_label(yt[matched], ytr[order[pos[matched]]]).sum())
    return {"test_rows": int(n_test), "test_rows_in_train": int(len(matched)), "same_label": same,
            "train_rows": int(n_train), "train_duplicates": int(n_train - len(np.unique(h_train)))}


def _column(X, j):
    if hasattr(X, "iloc"):
        return str(X.columns[j]), X.iloc[:, j].to_numpy()
    return f"column {j}", np.asarray(X)[:, j]


def _floats(values):
    if values.dtype == object or values.dtype.kind in "USO":
        return None
    try:
        out = np.asarray(values, dtype=np.float64)
    except (TypeError, ValueError):
        return None
    return out


def _codes(train_values, test_values, limit=64):
    """Category codes from the training values (the `limit` most frequent; the rest share one code)."""
    keys_train = [str(v) for v in train_values]
    counts = {}
    for k in keys_train:
        counts[k] = counts.get(k, 0) + 1
    top = {k: i for i, (k, _) in enumerate(sorted(counts.items(), key=lambda kv: -kv[1])[:limit])}
    other = len(top)
    return (np.array([top.get(k, other) for k in keys_train], dtype=np.int64),
            np.array([top.get(str(v), other) for v in test_values], dtype=np.int64), other + 1)


def _bins(x_train, x_test):
    """Quantile bins of the training values; NaN gets a bin of its own."""
    finite = x_train[np.isfinite(x_train)]
    if len(finite) == 0:
        return np.zeros(len(x_train), dtype=np.int64), np.zeros(len(x_test), dtype=np.int64), 1
    edges = np.unique(np.quantile(finite, np.linspace(0, 1, AUDIT_BINS + 1)))[1:-1]
    nan_bin = len(edges) + 1

    def place(x):
        b = np.searchsorted(edges, x, side="right")
        b[~np.isfinite(x)] = nan_bin
        return b

    return place(x_train), place(x_test), nan_bin + 1


def _alone(b_train, b_test, n_bins, y_train, y_test, classification):
    """How well a one-feature model (a lookup table from bin to mean / majority class, fitted on the
    training sample) predicts the test sample: R² for regression, for classification the share of
    the majority-class baseline's errors it removes. Both are 1.0 for a perfect predictor."""
    if classification:
        classes, y_all = np.unique(np.concatenate([y_train, y_test]), return_inverse=True)
        yc_train, yc_test = y_all[: len(y_train)], y_all[len(y_train):]
        table = np.zeros((n_bins, len(classes)))
        np.add.at(table, (b_train, yc_train), 1)
        majority = int(np.bincount(yc_train, minlength=len(classes)).argmax())
        predict = np.where(table.sum(axis=1) > 0, table.argmax(axis=1), majority)
        error = float(np.mean(predict[b_test] != yc_test))
        baseline = float(np.mean(yc_test != majority))
        return 0.0 if baseline == 0 else max(0.0, 1.0 - error / baseline)
    sums = np.bincount(b_train, weights=y_train, minlength=n_bins)
    counts = np.bincount(b_train, minlength=n_bins)
    mean = float(np.mean(y_train))
    table = np.where(counts > 0, sums / np.maximum(counts, 1), mean)
    sst = float(np.sum((y_test - np.mean(y_test)) ** 2))
    if sst == 0:
        return 0.0
    return max(0.0, 1.0 - float(np.sum((y_test - table[b_test]) ** 2)) / sst)


def _sample(n, rng):
    if n <= AUDIT_SAMPLE_ROWS:
        return np.arange(n)
    return np.sort(rng.choice(n, AUDIT_SAMPLE_ROWS, replace=False))  # sorted: keeps the row order


def measure_leaks(splits, task):
    """Numbers for the leak audit (domains/audit.py judges them). Bounded: a sample of rows, the
    first AUDIT_MAX_COLUMNS columns; never raises (a failure is reported as "error")."""
    started = time.monotonic()
    out = {}
    try:
        X_train, X_test, y_train, y_test = splits
        out["duplicates"] = _duplicates(X_train, X_test, y_train, y_test)
        rng = np.random.default_rng(0)
        i_train, i_test = _sample(_shape(X_train)[0], rng), _sample(_shape(X_test)[0], rng)
        yl_train, yl_test = _labels(y_train)[i_train], _labels(y_test)[i_test]
        classification = task["is_classification"]
        if classification:
            yv_train = np.array([str(v) for v in yl_train], dtype=object)
            yv_test = np.array([str(v) for v in yl_test], dtype=object)
            y_float_train = _floats(yl_train)
        else:
            yv_train, yv_test = np.asarray(yl_train, dtype=float), np.asarray(yl_test, dtype=float)
            y_float_train = yv_train
        n_columns = _shape(X_train)[1]
        out["columns_total"] = int(n_columns)
        out["rows_sampled"] = [int(len(i_train)), int(len(i_test))]
        columns = []
        for j in range(min(n_columns, AUDIT_MAX_COLUMNS)):
            name, values = _column(X_train, j)
            _, values_test = _column(X_test, j)
            values, values_test = values[i_train], values_test[i_test]
            x, x_test = _floats(values), _floats(values_test)
            entry = {"name": name[:100]}
            if "datetime" in str(getattr(values, "dtype", "")) or (
                    hasattr(X_train, "dtypes") and str(X_train.dtypes.iloc[j]).startswith("datetime")):
                entry["datetime"] = True  # unique per row and monotonic, like an id, but not one
            if x is not None and x_test is not None:
                b_train, b_test, n_bins = _bins(x, x_test)
                entry["numeric"] = True
                if y_float_train is not None:
                    entry["equal_target"] = float(np.mean(np.isclose(x, y_float_train, rtol=1e-9, atol=1e-12)))
                finite = np.isfinite(x)
                entry["integer"] = bool(finite.any() and np.all(np.mod(x[finite], 1) == 0))
                diffs = np.diff(x[finite])
                entry["monotonic"] = bool(len(diffs) > 10 and (np.all(diffs > 0) or np.all(diffs < 0)))
                if not classification and finite.all() and np.isfinite(x_test).all() and np.std(x) > 0 and np.std(x_test) > 0:
                    entry["correlation"] = float(np.corrcoef(x_test, yv_test)[0, 1])
                # Unique among the training rows (test rows may repeat them: that is the duplicates check).
                entry["unique_ratio"] = float(len(np.unique(x)) / max(len(x), 1))
            else:
                b_train, b_test, n_bins = _codes(values, values_test)
                entry["numeric"] = False
                keys = [str(v) for v in values]
                entry["equal_target"] = float(np.mean([k == str(t) for k, t in zip(keys, _labels(yl_train), strict=True)]))
                entry["unique_ratio"] = float(len(set(keys)) / max(len(keys), 1))
            entry["alone"] = _alone(b_train, b_test, n_bins, yv_train, yv_test, classification)
            columns.append(entry)
        out["columns"] = columns
    except Exception as exc:  # noqa: BLE001 - the audit must never fail verification
        out["error"] = f"{type(exc).__name__}: {str(exc)[:300]}"
    out["seconds"] = round(time.monotonic() - started, 3)
    return out


def _plain(metrics):
    return {k: float(v) for k, v in metrics.items()}


def workspace_modules(root, skip):
    """Relative paths of the source files of every loaded module that lives in the workspace `root`
    (not under `skip`, a virtual environment or site-packages): what the tools imported from the
    user's own code. Freeze fingerprints them."""
    root = os.path.realpath(root)
    skip = [os.path.realpath(p) for p in skip]
    skip += [os.path.realpath(p) for p in {sys.prefix, sys.base_prefix, sys.exec_prefix}]
    found = set()
    for module in list(sys.modules.values()):
        path = getattr(module, "__file__", None)
        if not isinstance(path, str) or not path.endswith(".py"):
            continue
        real = os.path.realpath(path)
        if not real.startswith(root + os.sep) or any(real == s or real.startswith(s + os.sep) for s in skip):
            continue
        rel = os.path.relpath(real, root)
        parts = rel.split(os.sep)
        if any(p in ("site-packages", "dist-packages", ".venv", "venv", "__pycache__") for p in parts):
            continue
        found.add(rel)
    return sorted(found)[:500]


def verify(spec, state, result):
    # The tools may import the workspace's own modules (the working directory), like train() can;
    # fresh from source (a stale __pycache__ must not stand in for what freeze fingerprints).
    sys.dont_write_bytecode = True
    sys.pycache_prefix = os.path.join(os.path.dirname(spec["output"]), "pycache")
    sys.path[:0] = [spec["tools_dir"], os.getcwd()]
    try:
        return _verify(spec, state, result)
    finally:
        result["workspace_files"] = workspace_modules(os.getcwd(), [spec["tools_dir"], os.path.dirname(spec["output"])])


def _verify(spec, state, result):
    task = spec["task"]
    ld, ev = result["load_data"], result["evaluate"]

    state["phase"] = "load_data"
    _progress(spec, "load_data")
    started = time.monotonic()
    try:
        module = importlib.import_module("load_data")
        load_data = module.load_data
    except BaseException as exc:
        ld["errors"].append(_raised("load_data", exc))
        load_data = None
    splits = None
    if load_data is not None:
        splits, error = _call_tool("load_data", load_data, state)
        if error:
            ld["errors"].append(error)
            splits = None
    ld["seconds"] = round(time.monotonic() - started, 3)
    if splits is not None:
        errors, sample = check_splits(splits, task)
        ld["errors"].extend(errors)
        ld["sample"] = sample
    if ld["errors"]:
        ev["errors"].append("evaluate: not checked, because load_data failed")
        return None
    if spec["mode"] == "snapshot":
        return splits
    state["splits"] = splits  # for the leak audit, measured once the checks are written

    _progress(spec, "evaluate")
    started = time.monotonic()
    try:
        evaluate = importlib.import_module("evaluate").evaluate
    except BaseException as exc:
        ev["errors"].append(_raised("evaluate", exc))
        return None
    X_train, X_test, y_train, y_test = splits
    # A Path, as in the experiment harness: `artifacts_dir / "residuals.png"` must work here too.
    artifacts = Path(spec["artifacts_dir"])

    def run(y_pred, x_test, y_true, when):
        value, error = _call_tool(
            "evaluate", evaluate, state, y_pred, X_train=X_train, X_test=x_test, y_train=y_train,
            y_test=y_true, artifacts_dir=artifacts,
        )
        if error:
            ev["errors"].append(error.replace("evaluate raised", f"evaluate {when} raised", 1))
            return None
        errors = check_metrics(value, task, when)
        ev["errors"].extend(errors)
        return None if errors else _plain(value)

    truth = _predictions(task, y_train, y_test, "truth")
    constant = _predictions(task, y_train, y_test, "constant")
    scored_truth = run(truth, X_test, y_test, "on the true labels")
    if scored_truth is None:
        ev["seconds"] = round(time.monotonic() - started, 3)
        return None
    scored_constant = run(constant, X_test, y_test, "on a constant prediction")
    sample = {"true_labels": scored_truth}
    if scored_constant is not None:
        sample["constant"] = scored_constant
        primary, direction = task["primary_metric"], task["direction"]
        t, c = scored_truth[primary], scored_constant[primary]
        better = t < c if direction == "minimize" else t > c
        if not better:
            ev["errors"].append(
                f"evaluate scores the true labels no better than a constant prediction on {primary} "
                f"(true labels {t:.6g}, constant {c:.6g}, {direction}); it must respond to y_pred"
            )
    ratio = spec["holdout_ratio"] if spec["holdout_ratio"] > 0 else 0.5
    n_test = _shape(y_test)[0]
    validation, holdout = split_positions(
        y_test, n=n_test, ratio=ratio, seed=spec["seed"], stratify=task["is_classification"]
    )
    for label, positions in (("validation", validation), ("holdout", holdout)):
        if not positions:
            continue
        when = f"on a subset of {len(positions)} test rows (the {label} part)"
        scored = run(_take(truth, positions), _take(X_test, positions), _take(y_test, positions), when)
        if scored is not None:
            sample[f"{label}_rows"] = scored
    ev["sample"] = sample
    ev["seconds"] = round(time.monotonic() - started, 3)
    return None


def write_snapshot(spec, splits, result):
    """Write the snapshot files of spec["snapshot_dir"] (layout in docs/interfaces.md)."""
    task = spec["task"]
    out = spec["snapshot_dir"]
    parts = dict(zip(("X_train", "X_test", "y_train", "y_test"), splits, strict=True))
    for name, value in parts.items():
        # Lists (and tuples) become arrays; DataFrames and arrays are kept as they are.
        if isinstance(value, (list, tuple)):
            parts[name] = np.asarray(value)
    targets = {
        "X_train": "public/X_train.pkl",
        "y_train": "public/y_train.pkl",
        "X_test": "public/X_test.pkl",
        "y_test": "sealed/y_test.pkl",
    }
    for name, relative in targets.items():
        with open(os.path.join(out, relative), "wb") as handle:
            pickle.dump(parts[name], handle, protocol=PICKLE_PROTOCOL)
    n_test = _shape(parts["y_test"])[0]
    validation, holdout = split_positions(
        parts["y_test"], n=n_test, ratio=spec["holdout_ratio"], seed=spec["seed"],
        stratify=task["is_classification"],
    )
    with open(os.path.join(out, "sealed/split.json"), "w") as handle:
        json.dump({"validation": validation, "holdout": holdout}, handle)
    info = {
        "n_train": _shape(parts["X_train"])[0],
        "n_test": n_test,
        "n_validation": len(validation),
        "n_holdout": len(holdout),
        "shapes": {k: list(_shape(v)) for k, v in parts.items()},
        "types": {k: type(v).__name__ for k, v in parts.items()},
        "dtypes": {k: _dtype_summary(v) for k, v in parts.items()},
    }
    if task["is_classification"]:
        classes = np.unique(np.concatenate([_labels(parts["y_train"]), _labels(parts["y_test"])]))
        info["classes"] = [c.item() if hasattr(c, "item") else c for c in classes]
    result["snapshot"] = info


def _progress(spec, phase):
    with open(spec["output"] + ".phase", "w") as handle:
        handle.write(phase)


def main(spec_path):
    with open(spec_path) as handle:
        spec = json.load(handle)
    contracts = _import_by_path("dojo_contracts", spec["contracts_path"])
    tt = contracts.TASK_TYPES[spec["task_type"]]
    spec["task"] = {
        "name": tt.name,
        "metrics": list(tt.metrics),
        "is_classification": tt.is_classification,
        "primary_metric": spec["primary_metric"],
        "direction": spec["direction"],
    }
    state = {"printed": {}, "print_limit": spec.get("print_limit_bytes", 1_000_000), "phase": ""}
    result = {
        "load_data": {"errors": [], "sample": {}, "seconds": None},
        "evaluate": {"errors": [], "sample": {}, "seconds": None},
    }
    splits = verify(spec, state, result)
    if spec["mode"] == "snapshot" and splits is not None:
        _progress(spec, "snapshot")
        write_snapshot(spec, splits, result)
    result["printed_bytes"] = state["printed"]
    # This process's own peak (load_data and the snapshot writer run here); sandbox-level
    # accounting may miss a process inside a PID namespace.
    result["peak_rss_mb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    _write_result(spec, result)
    if state.get("splits") is not None:
        # After the checks' result is written: an audit that dies (memory, time) costs the
        # audit, not the verification.
        _progress(spec, "audit")
        result["audit"] = measure_leaks(state.pop("splits"), spec["task"])
        _write_result(spec, result)


def _write_result(spec, result):
    tmp = spec["output"] + ".tmp"
    with open(tmp, "w") as handle:
        json.dump(result, handle, default=str)
    os.replace(tmp, spec["output"])


if __name__ == "__main__":
    main(sys.argv[1])
