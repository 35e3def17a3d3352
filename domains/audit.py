"""Leak audit of a task's contract, before it is frozen.

A contract can be "solved" without learning when the data itself leaks the answer. When a task is
verified, the sandboxed verification run measures the split load_data returned
(`verify_entry.measure_leaks`: numbers only, on a sample of at most 5,000 rows per side and the
first 200 columns), and this module — trusted side — judges those numbers and checks where the
data comes from. The findings ({"check", "severity", "detail"}) are stored on `Task.audit`.
Severities: "info" (recorded), "warning" (shown), "severe" (blocks freezing until a person
freezes with an explicit, recorded override: `task_freeze(override_reason=…)`).

Where it runs, and why: the checks need the data, which only exists inside the sandbox (the
snapshot is pickles the trusted side must never unpickle). The measurements therefore ride
along with verification's JSON result; load_data is the user's own contract code, so the numbers
are as trustworthy as the contract itself. The judgement and thresholds live here.

The checks:

- `duplicates` — test rows that repeat a training row exactly (rows hashed in full, not sampled).
  A model can memorise them. Severe when at least DUPLICATE_SEVERE_SHARE of the test rows (and at
  least DUPLICATE_SEVERE_MIN rows) are repeats; a warning for any repeat.
- `target_copy` — a feature equal to the target on at least TARGET_COPY_SHARE of the sampled
  training rows. Severe: the target is in the features.
- `feature_alone` — a one-feature model (quantile bins → mean / majority class, fitted on the
  training sample, scored on the test sample; for regression also the feature's squared
  correlation) predicts the target almost perfectly on its own: R² for regression, the share of
  the majority-class baseline's errors removed for classification. Severe at ALONE_SEVERE_R2 /
  ALONE_SEVERE, a warning at ALONE_WARNING_R2 / ALONE_WARNING. The honest bundled datasets top
  out near 0.9 (iris's petal width); a regression target that is one column plus 5% noise
  reaches R² 0.997 — a warning, since simulated data can be like that.
- `id_like` — a column unique per row that is integer-valued, strictly monotonic, or named like an
  identifier (id, uuid, index, key, …). A warning: ids carry no signal, unless the rows were
  sorted by the target, which `feature_alone` then catches.
- `public_source` — the data comes from a public source the trainer could reload: a scikit-learn
  loader (the task config or SETUP.md names one, or load_data imports a dataset module), or the
  raw data file is byte-identical (size, then sha256; .gz files by their uncompressed content) to
  a data file inside an installed package. A warning: the trainer sandbox hides the bundled
  datasets' folders (`bundled_data_paths`) and the matching package files, so a train() that
  reloads the data fails. Without bubblewrap nothing can be hidden; the detail says so.
- `audit_incomplete` — info: the measurement failed, or columns / rows were capped.
- `summary` — info: what was checked. An audited task always has at least this finding, so an
  empty `Task.audit` means "not audited" (verified before the audit existed).
"""

from __future__ import annotations

import ast
import functools
import gzip
import hashlib
import importlib.util
import os
import re
import struct
import sysconfig
from pathlib import Path

# Modules that ship or download public datasets: a train() importing one can reload the task's
# data and look the labels up. Shared with the static scan of train code (experiments/scan.py).
DATASET_MODULES = (
    "sklearn.datasets", "seaborn.load_dataset", "seaborn.get_dataset_names", "openml",
    "tensorflow_datasets", "torchvision.datasets", "torchtext.datasets", "keras.datasets",
    "tensorflow.keras.datasets", "datasets", "statsmodels.datasets", "pmlb", "vega_datasets", "pydataset",
    "ucimlrepo", "kaggle", "kagglehub", "plotly.data", "bokeh.sampledata", "pandas_datareader", "yellowbrick.datasets",
    "mlxtend.data", "imblearn.datasets", "lightgbm.datasets", "catboost.datasets", "shap.datasets",
)
# Folders of installed packages that hold bundled datasets (package, path inside it). Hidden from
# every trainer: no honest train() reads them, and a copy of a bundled dataset under another
# name would otherwise be a lookup away.
BUNDLED_DATA_DIRS = (
    ("sklearn", "datasets/data"),
    ("sklearn", "datasets/descr"),
    ("plotly", "package_data/datasets"),
    ("vega_datasets", "_data"),
    ("pydataset", "resources"),
)

DUPLICATE_SEVERE_SHARE = 0.10
DUPLICATE_SEVERE_MIN = 5
TARGET_COPY_SHARE = 0.99
ALONE_SEVERE = 0.99  # classification: share of the majority-class baseline's errors removed
ALONE_WARNING = 0.95
ALONE_SEVERE_R2 = 0.999  # regression: the target is (nearly) a function of this one column
ALONE_WARNING_R2 = 0.90
ID_MIN_ROWS = 20
ID_NAME_RE = re.compile(r"(^|[_\s.-])(id|ids|uuid|guid|index|idx|key|row|rownum|row_number|record)$", re.IGNORECASE)
SEVERITIES = ("info", "warning", "severe")
# Data files worth comparing with the user's raw file (by size first, so hashing stays rare).
DATA_SUFFIXES = (".csv", ".tsv", ".txt", ".data", ".arff", ".json", ".parquet", ".feather", ".xlsx", ".xls",
                 ".npy", ".npz", ".pkl", ".gz", ".bz2", ".zip")
PUBLIC_MATCH_MIN_BYTES = 512


def _finding(check: str, severity: str, detail: str, **extra) -> dict:
    return {"check": check, "severity": severity, "detail": detail, **extra}


def findings_severe(findings: list[dict]) -> list[dict]:
    return [f for f in findings or [] if isinstance(f, dict) and f.get("severity") == "severe"]


# --- Judging the sandbox's measurements ------------------------------------------------------


def _judge_duplicates(dup: dict) -> list[dict]:
    if not isinstance(dup, dict) or "test_rows" not in dup:
        return []
    n_test, repeats, same = int(dup.get("test_rows") or 0), int(dup.get("test_rows_in_train") or 0), int(dup.get("same_label") or 0)
    if repeats == 0:
        return []
    share = repeats / max(n_test, 1)
    detail = (f"{repeats} of {n_test} test rows ({share:.1%}) repeat a training row exactly; {same} of them "
              "with the same label. A model can memorise them; drop duplicates before splitting, or split by group.")
    severe = share >= DUPLICATE_SEVERE_SHARE and repeats >= DUPLICATE_SEVERE_MIN
    return [_finding("duplicates", "severe" if severe else "warning", detail, rows=repeats, share=round(share, 4))]


def _judge_columns(measured: dict, *, task_type: str) -> list[dict]:
    findings = []
    classification = task_type != "regression"
    what = "removes {:.1%} of the majority-class baseline's errors" if classification else "reaches R² {:.3f}"
    for col in measured.get("columns") or []:
        if not isinstance(col, dict):
            continue
        name = str(col.get("name", "?"))[:100]
        equal = float(col.get("equal_target") or 0.0)
        corr = col.get("correlation")
        alone = max(float(col.get("alone") or 0.0), float(corr) ** 2 if isinstance(corr, (int, float)) else 0.0)
        if equal >= TARGET_COPY_SHARE:
            findings.append(_finding("target_copy", "severe",
                                     f"feature {name!r} equals the target on {equal:.1%} of the sampled training rows",
                                     column=name))
        elif alone >= (ALONE_WARNING if classification else ALONE_WARNING_R2):
            severe = alone >= (ALONE_SEVERE if classification else ALONE_SEVERE_R2)
            findings.append(_finding(
                "feature_alone", "severe" if severe else "warning",
                f"feature {name!r} alone predicts the target almost perfectly: a one-feature model "
                + what.format(alone) + " on the test rows" + (" (is it derived from the target?)" if severe else ""),
                column=name, score=round(alone, 4),
            ))
        unique = float(col.get("unique_ratio") or 0.0)
        rows = (measured.get("rows_sampled") or [0])[0]
        named = bool(ID_NAME_RE.search(name.strip()))
        if unique >= 0.999 and rows >= ID_MIN_ROWS and not col.get("datetime") and (col.get("integer") or col.get("monotonic") or named
                                                         or not col.get("numeric", True)):
            why = ", ".join(w for w, ok in (("named like an identifier", named), ("integer-valued", col.get("integer")),
                                           ("strictly monotonic", col.get("monotonic"))) if ok) or "text"
            findings.append(_finding("id_like", "warning",
                                     f"column {name!r} is unique per row ({why}): an identifier carries no signal; "
                                     "drop it in load_data (or list it under id columns)", column=name))
    return findings


def audit_judge(*, measured: dict | None, task_type: str) -> list[dict]:
    """Findings from verify_entry.measure_leaks's numbers (an empty dict or None gives one
    audit_incomplete finding)."""
    if not isinstance(measured, dict) or not measured:
        return [_finding("audit_incomplete", "info", "the leak measurements did not come back from verification")]
    findings = _judge_duplicates(measured.get("duplicates") or {})
    findings += _judge_columns(measured, task_type=task_type)
    if measured.get("error"):
        findings.append(_finding("audit_incomplete", "info", f"the leak measurement failed: {str(measured['error'])[:300]}"))
    total, checked = measured.get("columns_total"), len(measured.get("columns") or [])
    if isinstance(total, int) and total > checked:
        findings.append(_finding("audit_incomplete", "info", f"only the first {checked} of {total} columns were checked"))
    skipped = (measured.get("duplicates") or {}).get("skipped")
    if skipped:
        findings.append(_finding("audit_incomplete", "info", f"duplicates not checked: {skipped}"))
    return findings


def audit_task(*, measured: dict | None, task_type: str, loader: str, load_data_code: str,
               data_file: Path | None, python: str = "", isolation: str = "bwrap") -> list[dict]:
    """All findings for a verified task, the summary last. Never raises."""
    findings = audit_judge(measured=measured, task_type=task_type)
    try:
        findings += public_source_findings(loader=loader, load_data_code=load_data_code, data_file=data_file,
                                           python=python, isolation=isolation)
    except Exception as exc:  # noqa: BLE001 - a broken package folder must not fail verification
        findings.append(_finding("audit_incomplete", "info", f"the public-source check failed: {exc}"))
    order = {s: i for i, s in enumerate(reversed(SEVERITIES))}
    findings.sort(key=lambda f: order.get(f.get("severity"), 9))
    return [*findings, audit_summary(findings, measured)]


# --- Public sources --------------------------------------------------------------------------


def _imports_dataset_module(code: str) -> str:
    """The dataset module load_data imports ("" when none, or when it does not parse)."""
    try:
        tree = ast.parse(code)
    except (SyntaxError, ValueError, RecursionError):
        return ""
    for node in ast.walk(tree):
        names = []
        if isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module:
            names = [node.module] + [f"{node.module}.{a.name}" for a in node.names]
        for name in names:
            if any(name == m or name.startswith(m + ".") for m in DATASET_MODULES):
                return name
    return ""


def site_packages_dirs(python: str = "") -> list[Path]:
    """The site-packages folders of Dojo's interpreter and, when given, of a workspace
    interpreter (found next to it: <venv>/bin/python → <venv>/lib/python*/site-packages)."""
    dirs = {Path(p) for p in (sysconfig.get_paths().get("purelib"), sysconfig.get_paths().get("platlib")) if p}
    if python:
        venv = Path(python).parent.parent
        dirs.update(venv.glob("lib/python3*/site-packages"))
    return sorted(d.resolve() for d in dirs if d.is_dir())


@functools.cache
def bundled_data_paths(python: str = "") -> list[Path]:
    """The bundled-dataset folders (BUNDLED_DATA_DIRS) that exist in the interpreters' site-packages
    (cached per process: the harness asks on every experiment)."""
    out = []
    for base in site_packages_dirs(python):
        for package, inside in BUNDLED_DATA_DIRS:
            path = base / package / inside
            if path.is_dir():
                out.append(path)
    spec = importlib.util.find_spec("sklearn")  # an install outside site-packages (a system package)
    for location in (spec.submodule_search_locations or []) if spec else []:
        for inside in ("datasets/data", "datasets/descr"):
            path = (Path(location) / inside).resolve()
            if path.is_dir() and path not in out:
                out.append(path)
    return out


def _gzip_size(path: Path) -> int | None:
    """The uncompressed size a .gz file records in its last 4 bytes (mod 2**32)."""
    try:
        with open(path, "rb") as fh:
            fh.seek(-4, os.SEEK_END)
            return struct.unpack("<I", fh.read(4))[0]
    except (OSError, struct.error):
        return None


@functools.cache
def _package_data_index(roots: tuple[Path, ...]) -> dict[int, tuple[tuple[Path, bool], ...]]:
    """size → ((path, gzipped), …) of the data-like files under `roots`; built once per process
    (a walk of site-packages costs a few hundred ms; sizes make hashing rare)."""
    index: dict[int, list[tuple[Path, bool]]] = {}
    for root in roots:
        for folder, dirs, files in os.walk(root):
            dirs[:] = [d for d in dirs if d != "__pycache__"]
            for name in files:
                if not name.lower().endswith(DATA_SUFFIXES):
                    continue
                path = Path(folder, name)
                try:
                    size = path.stat().st_size
                except OSError:
                    continue
                if size < PUBLIC_MATCH_MIN_BYTES // 8:
                    continue
                index.setdefault(size, []).append((path, False))
                if name.endswith(".gz"):
                    raw = _gzip_size(path)
                    if raw and raw >= PUBLIC_MATCH_MIN_BYTES:
                        index.setdefault(raw, []).append((path, True))
    return {size: tuple(paths) for size, paths in index.items()}


def _sha256(path: Path, *, gzipped: bool = False) -> str:
    digest = hashlib.sha256()
    opener = gzip.open if gzipped else open
    with opener(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def package_copies(*, data_file: Path, python: str = "") -> list[Path]:
    """Files inside installed packages with the same content as `data_file` (a .gz compared by
    its uncompressed content, both ways)."""
    try:
        size = data_file.stat().st_size
    except OSError:
        return []
    if size < PUBLIC_MATCH_MIN_BYTES:
        return []
    index = _package_data_index(tuple(site_packages_dirs(python)))
    candidates = list(index.get(size, ()))
    user_gz = data_file.name.endswith(".gz")
    if user_gz:
        raw = _gzip_size(data_file)
        candidates += [c for c in index.get(raw or -1, ())]
    if not candidates:
        return []
    try:
        mine = _sha256(data_file)
        mine_raw = _sha256(data_file, gzipped=True) if user_gz else mine
    except (OSError, EOFError, gzip.BadGzipFile):
        return []
    out = []
    for path, gzipped in candidates:
        try:
            theirs = _sha256(path, gzipped=gzipped)
        except (OSError, EOFError, gzip.BadGzipFile):
            continue
        if theirs in (mine, mine_raw) and path not in out:
            out.append(path)
    return out


def public_source_findings(*, loader: str, load_data_code: str, data_file: Path | None, python: str = "",
                           isolation: str = "bwrap") -> list[dict]:
    """The public_source finding (or none), with `hide`: the paths the trainer sandbox must hide."""
    hidden_note = (" The trainer sandbox hides these files, so a train() that reloads the data fails."
                   if isolation == "bwrap" else
                   " Without bubblewrap the sandbox cannot hide them: a train() could reload the data and "
                   "look the labels up. Install bubblewrap.")
    module = _imports_dataset_module(load_data_code)
    if loader or module:
        source = f"scikit-learn's {loader}" if loader else f"the dataset module {module}"
        hide = [str(p) for p in bundled_data_paths(python)]
        return [_finding("public_source", "warning",
                         f"the data comes from {source}, a public source any process on this machine can "
                         "reload." + hidden_note, hide=hide)]
    if data_file is not None:
        copies = package_copies(data_file=data_file, python=python)
        if copies:
            shown = ", ".join(str(p) for p in copies[:3])
            return [_finding("public_source", "warning",
                             f"the data file {data_file.name} is identical to a file shipped with an installed "
                             f"package ({shown})." + hidden_note, hide=[str(p) for p in copies])]
    return []


def audit_hidden_paths(findings: list[dict]) -> list[str]:
    """The paths the findings ask the trainer sandbox to hide."""
    out: list[str] = []
    for finding in findings or []:
        if isinstance(finding, dict):
            for path in finding.get("hide") or []:
                if isinstance(path, str) and path not in out:
                    out.append(path)
    return out


def audit_summary(findings: list[dict], measured: dict | None) -> dict:
    counts = {s: sum(1 for f in findings if f.get("severity") == s) for s in SEVERITIES}
    measured = measured if isinstance(measured, dict) else {}
    rows = measured.get("rows_sampled") or []
    detail = (f"checked {len(measured.get('columns') or [])} column(s) on {sum(rows)} sampled row(s) and "
              f"{(measured.get('duplicates') or {}).get('test_rows', 0)} test row(s) for duplicates in "
              f"{measured.get('seconds', '?')} s: {counts['severe']} severe, {counts['warning']} warning(s)")
    return _finding("summary", "info", detail)
