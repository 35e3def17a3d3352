"""Bootstrap confidence intervals for the evaluator (trusted side; numpy only, no Django).

A validation split of a few dozen rows moves a score by several percent with the seed alone, so
every validation and holdout score gets a 95% percentile interval: RESAMPLES bootstrap resamples
of the scored rows, drawn with a fixed seed (the same resamples for every experiment of a task,
so two experiments' intervals are paired), each scored by a vectorised copy of the metric
computed from resample counts (one matrix product per metric, not a Python loop).

The frozen evaluate is the authority on what a metric means. The copy here is used only when it
reproduces evaluate's value on the full rows (relative tolerance AGREE); a metric it does not
know, or computes differently (a custom evaluate), gets no interval rather than a wrong one.
"""

import math

import numpy as np

RESAMPLES = 200
SEED = 20150
LEVEL = 0.95
AGREE = 1e-6
CELLS = 2_000_000  # resamples × rows held in memory at once


_cache: dict[tuple[int, int, int], list] = {}


def _counts(n: int, resamples: int, seed: int) -> list:
    """(B_chunk × n) matrices of how often each row is drawn in each resample. The same rows are
    scored for every experiment of a task, so the matrices are made once per size and kept."""
    key = (n, resamples, seed)
    if key in _cache:
        return _cache[key]
    rng = np.random.default_rng(seed)
    chunk = max(1, min(resamples, CELLS // max(1, n)))
    out, done = [], 0
    while done < resamples:
        b = min(chunk, resamples - done)
        idx = rng.integers(0, n, size=(b, n))
        flat = (idx + (np.arange(b) * n)[:, None]).ravel()
        out.append(np.bincount(flat, minlength=b * n).reshape(b, n).astype(np.float64))
        done += b
    if n * resamples <= CELLS:  # keep small ones (validation/holdout parts), recompute huge ones
        if len(_cache) > 8:
            _cache.clear()
        _cache[key] = out
    return out


def _per_row(metric: str, y_true, y_pred, classes):
    """What the metric averages per row, and how to finish it from weighted sums: (kind, data)."""
    y_pred = np.asarray(y_pred, dtype=np.float64)
    if metric in ("rmse", "mae", "r2", "mse"):
        y = np.asarray(y_true, dtype=np.float64).reshape(-1)
        p = y_pred.reshape(-1)
        if metric == "mae":
            return "mean", np.abs(y - p)
        if metric == "rmse":
            return "rmse", (y - p) ** 2
        if metric == "mse":
            return "mean", (y - p) ** 2
        return "r2", ((y - p) ** 2, y, y * y)
    if not classes:
        return None
    labels = np.asarray(sorted(classes))
    truth = np.asarray(y_true).reshape(-1)
    if y_pred.ndim == 1:  # binary: probability of the larger label
        t = (truth == labels[-1]).astype(np.float64)
        p = y_pred
        eps = np.finfo(np.float64).eps
        if metric == "log_loss":
            q = np.clip(p, eps, 1 - eps)
            return "mean", -(t * np.log(q) + (1 - t) * np.log(1 - q))
        if metric == "accuracy":
            return "mean", ((p >= 0.5).astype(np.float64) == t).astype(np.float64)
        if metric == "roc_auc":
            return "auc", (t, p)
        return None
    index = np.searchsorted(labels, truth)
    if np.any(index >= len(labels)) or not np.array_equal(labels[np.minimum(index, len(labels) - 1)], truth):
        return None
    rows = np.arange(len(truth))
    if metric == "log_loss":
        probs = y_pred / y_pred.sum(axis=1, keepdims=True)
        eps = np.finfo(np.float64).eps
        return "mean", -np.log(np.clip(probs[rows, index], eps, 1 - eps))
    if metric == "accuracy":
        return "mean", (np.argmax(y_pred, axis=1) == index).astype(np.float64)
    return None


def _finish(kind: str, data, W: np.ndarray) -> np.ndarray:
    total = W.sum(axis=1)
    if kind == "mean":
        return (W @ data) / total
    if kind == "rmse":
        return np.sqrt((W @ data) / total)
    if kind == "r2":
        sq, y, y2 = data
        sse = W @ sq
        mean = (W @ y) / total
        sst = (W @ y2) - total * mean * mean
        with np.errstate(divide="ignore", invalid="ignore"):
            return np.where(sst > 0, 1 - sse / sst, np.nan)
    if kind == "auc":
        t, p = data
        order = np.argsort(p, kind="stable")
        ps, ts = p[order], t[order]
        starts = np.flatnonzero(np.r_[True, ps[1:] != ps[:-1]])  # first row of each distinct score
        Ws = W[:, order]
        P = np.add.reduceat(Ws * ts, starts, axis=1)  # weight of positives at each distinct score
        N = np.add.reduceat(Ws * (1 - ts), starts, axis=1)
        below = np.cumsum(N, axis=1) - N
        with np.errstate(divide="ignore", invalid="ignore"):
            return (P * (below + 0.5 * N)).sum(axis=1) / (P.sum(axis=1) * N.sum(axis=1))
    raise ValueError(kind)


def bootstrap_ci(metric: str, y_true, y_pred, *, reported: float, classes=None, resamples: int = RESAMPLES,
                 seed: int = SEED) -> list[float] | None:
    """[lo, hi], the 95% percentile interval of `metric` over bootstrap resamples of the rows, or
    None when the metric is unknown here, does not reproduce `reported`, or there are < 2 rows."""
    n = len(y_true)
    if n < 2:
        return None
    try:
        rows = _per_row(metric, y_true, y_pred, classes)
        if rows is None:
            return None
        kind, data = rows
        full = float(_finish(kind, data, np.ones((1, n)))[0])
        if not math.isfinite(full) or abs(full - reported) > AGREE * max(1.0, abs(reported)):
            return None
        values = np.concatenate([_finish(kind, data, W) for W in _counts(n, resamples, seed)])
    except (ValueError, TypeError, FloatingPointError, MemoryError):
        return None
    values = values[np.isfinite(values)]
    if len(values) < resamples // 2:
        return None
    alpha = (1 - LEVEL) / 2
    lo, hi = np.quantile(values, [alpha, 1 - alpha])
    return [float(lo), float(hi)]
