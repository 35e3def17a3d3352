"""The trusted evaluator: scores a trainer's y_pred with the frozen evaluate. Only its answer
becomes an experiment's metrics.

It imports nothing from Django or the project except domains/contracts.py, loaded by path
(it has no Django imports), for the per-task-type y_pred checks.

    evaluator.py serve --snapshot DIR --contracts PATH --task-type T --metrics a,b,c --work DIR
                       [--evaluate-sha SHA] [--idle SECONDS]

At start it loads the whole snapshot (y_test and the split included), checks that the
materialized evaluate.py has the frozen sha256, imports it, and prints {"ready": true} (or
{"ready": false, "error": ...}) on its protocol channel, the original stdout; the frozen code's
own prints go to stderr. Then one JSON request per line on stdin:
{"id", "y_pred_bytes": N}, followed by N raw bytes: y_pred in .npy format (no file, no copy) →
{"id", "ok", "metrics", "holdout_metrics", "artifacts", "error", "seconds"}.
evaluate writes its artifacts into empty folders under --work made ahead of time; a folder it
wrote into is renamed to <work>/e<id>-<part> and listed in "artifacts" ({part: path}) for the
harness to take, and a fresh empty one is made; an unused one is simply used again, so the usual
request costs no file-system work at all.
y_pred is read with allow_pickle=False: the trainer wrote it and is not trusted.
"""

import hashlib
import importlib.util
import io
import json
import math
import numbers
import os
import pickle
import select
import sys
import time
import traceback
from pathlib import Path


def _arg(name: str, default: str | None = None) -> str | None:
    if name in sys.argv:
        return sys.argv[sys.argv.index(name) + 1]
    return default


def _load_module(name: str, path: Path):
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _take(obj, idx):
    if hasattr(obj, "iloc"):
        return obj.iloc[idx]
    import numpy as np

    if isinstance(obj, np.ndarray):
        return obj[idx]
    return [obj[i] for i in idx]


def _metrics_check(result, expected: list[str], part: str) -> tuple[dict | None, str | None]:
    if not isinstance(result, dict):
        return None, f"evaluate returned {type(result).__name__} on the {part} rows; expected a dict"
    keys = sorted(str(k) for k in result)
    if keys != sorted(expected):
        return None, f"evaluate returned keys {keys} on the {part} rows; the contract expects {sorted(expected)}"
    clean = {}
    for key, value in result.items():
        if isinstance(value, bool) or not isinstance(value, numbers.Real):
            return None, f"evaluate returned {key}={value!r} on the {part} rows; expected a number"
        value = float(value)
        if not math.isfinite(value):
            return None, f"evaluate returned {key}={value} on the {part} rows; expected a finite number"
        clean[str(key)] = value
    return clean, None


def _skip_sklearn_parameter_checks() -> None:
    """scikit-learn re-validates every metric call's *arguments* (types and allowed values, not
    the data: check_array still runs), about 0.1 ms per call. The frozen evaluate's calls passed
    that check in verification and its code cannot change, so it is skipped here: the scores are
    the same numbers, each experiment about 0.5 ms sooner."""
    try:
        import sklearn
    except ImportError:
        return
    sklearn.set_config(skip_parameter_validation=True)


class Evaluator:
    def __init__(self, snapshot: Path, contracts_path: Path, task_type: str, metrics: list[str],
                 evaluate_sha: str | None, work: Path) -> None:
        import numpy as np

        self.work = work
        self.scratch = {part: work / f"next-{part}" for part in ("validation", "holdout")}
        for folder in self.scratch.values():
            folder.mkdir(parents=True, exist_ok=True)
        self.np = np
        self.task_type = task_type
        self.metrics = metrics
        self.contracts = _load_module("dojo_contracts", contracts_path)
        source = (snapshot / "tools" / "evaluate.py").read_bytes()
        if evaluate_sha and hashlib.sha256(source).hexdigest() != evaluate_sha:
            raise RuntimeError(
                "the materialized evaluate.py does not match the frozen tool (it was changed on disk); "
                "re-freeze the task"
            )
        # The frozen evaluate may import the workspace's own modules (our working directory), as it
        # did in verification; their sources are part of the task fingerprint, checked before every
        # experiment. Appended, so they never shadow the libraries this trusted process uses; no
        # bytecode read or written (a stale __pycache__ must not stand in for the checked source).
        sys.dont_write_bytecode = True
        sys.pycache_prefix = str(work / ".pycache")
        sys.path.append(os.getcwd())
        self.evaluate = _load_module("evaluate", snapshot / "tools" / "evaluate.py").evaluate
        _skip_sklearn_parameter_checks()
        public, sealed = snapshot / "public", snapshot / "sealed"
        with open(public / "X_train.pkl", "rb") as fh:
            self.X_train = pickle.load(fh)
        with open(public / "y_train.pkl", "rb") as fh:
            self.y_train = pickle.load(fh)
        with open(public / "X_test.pkl", "rb") as fh:
            self.X_test = pickle.load(fh)
        with open(sealed / "y_test.pkl", "rb") as fh:
            self.y_test = pickle.load(fh)
        split = json.loads((sealed / "split.json").read_text())
        manifest = json.loads((snapshot / "manifest.json").read_text())
        classes = manifest.get("classes")
        self.n_classes = len(classes) if classes else None
        self.classes = classes or None
        # Loaded by path (not sys.path): experiments/harness/noise.py beside this file, numpy only.
        self.noise = _load_module("dojo_noise", Path(__file__).resolve().with_name("noise.py"))
        self.n_rows = len(self.y_test)
        self.parts = {}
        for part in ("validation", "holdout"):
            idx = np.asarray(split.get(part) or [], dtype=np.int64)
            if len(idx):
                self.parts[part] = (idx, _take(self.X_test, idx), _take(self.y_test, idx))

    def score(self, request: dict, payload: bytes) -> dict:
        np = self.np
        if not payload:
            return {"ok": False, "error": "train() produced no predictions"}
        width = self.n_classes or 1
        if len(payload) > self.n_rows * width * 16 + 65536:
            return {"ok": False, "error": f"y_pred file is {len(payload)} bytes, far more than {self.n_rows} rows need"}
        try:
            raw = np.load(io.BytesIO(payload), allow_pickle=False)
        except Exception as exc:  # noqa: BLE001 - any unreadable file is the trainer's fault
            return {"ok": False, "error": f"y_pred could not be read ({type(exc).__name__}: {exc})"}
        y_pred, problem = self.contracts.prediction_check(
            self.task_type, raw, n_rows=self.n_rows, n_classes=self.n_classes
        )
        if problem:
            return {"ok": False, "error": problem}
        out = {"ok": True, "metrics": {}, "holdout_metrics": {}, "artifacts": {}}
        for part, key in (("validation", "metrics"), ("holdout", "holdout_metrics")):
            if part not in self.parts:
                continue
            idx, X_part, y_part = self.parts[part]
            artifacts = self.scratch[part]
            # The frozen evaluate may draw diagnostics; it is told which part it scores, so they
            # are drawn for the validation rows only, never for the holdout.
            os.environ["DOJO_EVALUATE_PART"] = part
            try:
                result = self.evaluate(
                    y_pred[idx], X_train=self.X_train, X_test=X_part, y_train=self.y_train,
                    y_test=y_part, artifacts_dir=artifacts,
                )
            except Exception as exc:  # noqa: BLE001 - a frozen-tool failure fails the experiment
                traceback.print_exc()
                return {"ok": False, "error": f"the frozen evaluate failed on the {part} rows: {type(exc).__name__}: {exc}"}
            finally:
                self._hand_over_artifacts(part, request.get("id"), out)
            clean, problem = _metrics_check(result, self.metrics, part)
            if problem:
                return {"ok": False, "error": problem}
            out[key] = clean
            # Confidence intervals (experiments/harness/noise.py); never a reason to fail the score.
            out.setdefault("ci", {})[part] = {
                name: ci for name, value in clean.items()
                if (ci := self.noise.bootstrap_ci(name, y_part, y_pred[idx], reported=value, classes=self.classes))
            }
        return out

    def _hand_over_artifacts(self, part: str, request_id, out: dict) -> None:
        """If evaluate wrote into this part's folder, rename it for the harness and make a fresh one."""
        folder = self.scratch[part]
        try:
            with os.scandir(folder) as entries:
                used = any(True for _ in entries)
        except FileNotFoundError:
            used = False  # evaluate removed it: just make a new one
        if used:
            target = self.work / f"e{int(request_id or 0)}-{part}-{time.monotonic_ns()}"
            os.rename(folder, target)
            out["artifacts"][part] = str(target)
        folder.mkdir(parents=True, exist_ok=True)


def main() -> int:
    # The protocol gets a private copy of stdout; prints from the frozen code go to stderr.
    proto = os.fdopen(os.dup(1), "w", buffering=1)
    os.dup2(2, 1)
    sys.stdout = sys.stderr
    try:
        evaluator = Evaluator(
            Path(_arg("--snapshot")), Path(_arg("--contracts")), _arg("--task-type"),
            [m for m in (_arg("--metrics") or "").split(",") if m], _arg("--evaluate-sha"), Path(_arg("--work")),
        )
    except Exception as exc:  # noqa: BLE001 - told to the harness, which fails the experiment
        traceback.print_exc()
        proto.write(json.dumps({"ready": False, "error": f"{type(exc).__name__}: {exc}"}) + "\n")
        return 1
    proto.write(json.dumps({"ready": True, "pid": os.getpid()}) + "\n")
    idle = float(_arg("--idle", "600"))
    buf = bytearray()
    while True:
        if b"\n" not in buf:
            ready, _, _ = select.select([0], [], [], idle)
            if not ready:
                return 0
            chunk = os.read(0, 1 << 20)
            if not chunk:
                return 0
            buf += chunk
            continue
        end = buf.index(b"\n")
        line = bytes(buf[:end])
        del buf[:end + 1]
        try:
            request = json.loads(line)
        except ValueError:
            continue
        size = request.get("y_pred_bytes") if isinstance(request, dict) else None
        size = size if isinstance(size, int) and size > 0 else 0
        while len(buf) < size:  # the harness sends the payload right after the line
            chunk = os.read(0, max(1 << 20, size - len(buf)))
            if not chunk:
                return 0
            buf += chunk
        payload = bytes(buf[:size])
        del buf[:size]
        if not isinstance(request, dict):
            continue
        started = time.perf_counter()
        try:
            answer = evaluator.score(request, payload)
        except Exception as exc:  # noqa: BLE001
            traceback.print_exc()
            answer = {"ok": False, "error": f"evaluator error: {type(exc).__name__}: {exc}"}
        answer["id"] = request.get("id")
        answer["seconds"] = time.perf_counter() - started
        proto.write(json.dumps(answer) + "\n")


if __name__ == "__main__":
    sys.exit(main())
