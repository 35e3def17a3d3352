"""Writing the contract tools: from SETUP.md by template or by Claude, or imported by hand.

Everything here returns code as text (`GeneratedTools`); saving, verifying and freezing are in
domains/services.py.

SETUP.md format (the `dojo_init` scaffold writes it; the template generator reads it):

    ## Dataset
    - loader: load_diabetes          # a scikit-learn bundled loader, or
    - data: data/train.csv           # a CSV or Parquet file, relative to the workspace
    - target: price                  # the target column of that file
    - id columns: id, uuid           # optional, dropped from X
    ## Evaluate
    free text (the metrics themselves come from the task type)

Keys are case-insensitive, the leading dash is optional and `key = value` works too.
"""

from __future__ import annotations

import ast
import json
import re
import socket
from dataclasses import dataclass, field
from pathlib import Path

from django.conf import settings
from django.utils import timezone

from dojo_site.errors import InvalidInput
from domains.contracts import CONTRACT_VERSION, TASK_TYPES, contract_text

TOOL_NAMES = ("load_data", "evaluate")

# scikit-learn's loaders that ship their data in the wheel (no download), with their task type.
SKLEARN_LOADERS: dict[str, str] = {
    "load_diabetes": "regression",
    "load_breast_cancer": "binary",
    "load_wine": "multiclass",
    "load_iris": "multiclass",
    "load_digits": "multiclass",
}

_KEY_ALIASES = {
    "loader": "loader",
    "sklearn_loader": "loader",
    "dataset": "loader",
    "data": "data",
    "data_path": "data",
    "data_file": "data",
    "file": "data",
    "path": "data",
    "target": "target",
    "target_column": "target",
    "label": "target",
    "id_columns": "id_columns",
    "id_column": "id_columns",
    "ids": "id_columns",
    "drop_columns": "id_columns",
    "drop": "id_columns",
    "drop_column": "id_columns",
    "test_ratio": "test_ratio",
    "test_size": "test_ratio",
    "test_fraction": "test_ratio",
    "seed": "seed",
    "random_seed": "seed",
    "random_state": "seed",
    "holdout_ratio": "holdout_ratio",
    "holdout_fraction": "holdout_ratio",
    "primary_metric": "primary_metric",
    "metric": "primary_metric",
    "date_column": "date_column",
    "time_column": "date_column",
    "split_by_date": "date_column",
    "order_by": "date_column",
    "group_column": "group_column",
    "groups": "group_column",
    "group_by": "group_column",
    "stratify": "stratify",
    "stratified": "stratify",
}
# Keys the scaffold writes that are informational for the generator (the task type and the
# metric list come from the task itself).
_KNOWN_KEYS = {"task_type", "metrics", "type"}
# Sentences the `dojo_init` scaffold writes; never instructions.
_SCAFFOLD_LINES = (
    "How the data is loaded and how predictions are scored.",
    "and `evaluate` tools from this file",
    "Describe the data here:",
    "No data set yet:",
    "`- target: column`, or `- loader:",
    "`train()` returns",
)
# Words that make a prose line an instruction the generator should act on (or say it cannot).
_INSTRUCTION = re.compile(
    r"\b(drop|remove|exclude|ignore|skip|filter|keep only|use only|only use|split|stratif\w*|group\w*|"
    r"sort|order(ed)? by|chronolog\w*|time[- ]ordered|oversample|undersample|balance|weight\w*|impute|"
    r"fill|normali[sz]e|scale|encode|dedup\w*|deduplicate|sample|hold ?out|test (set|ratio|size)|seed|"
    r"optimi[sz]e|primary metric|target|predict)\b",
    re.IGNORECASE,
)
_ALL_METRICS = sorted({m for t in TASK_TYPES.values() for m in t.metrics}, key=len, reverse=True)
_LINE = re.compile(r"^\s*(?:[-*]\s*)?([A-Za-z][A-Za-z0-9 _-]*?)\s*[:=]\s*(.*?)\s*$")
_HEADING = re.compile(r"^##\s+(.+?)\s*#*\s*$")
_PLACEHOLDER = re.compile(r"^(<.*>|\(.*\)|none|n/?a|todo|tbd|-|\.\.\.|…)$", re.IGNORECASE)


class GenerationError(InvalidInput):
    """The tools could not be generated; the message says why and what to do."""


@dataclass
class SetupSpec:
    """What SETUP.md says about the data."""

    path: Path
    text: str
    sections: dict[str, str]
    loader: str = ""
    data: str = ""
    target: str = ""
    id_columns: list[str] = field(default_factory=list)
    # Read from `- test ratio:`-style lines or plain words; None = not said (the config decides).
    test_ratio: float | None = None
    seed: int | None = None
    holdout_ratio: float | None = None
    primary_metric: str = ""
    primary_metric_line: str = ""  # where it was said, for an error naming the line
    date_column: str = ""  # time-ordered split on this column
    group_column: str = ""  # grouped split: rows sharing a value stay on one side
    stratify: bool | None = None
    understood: list[str] = field(default_factory=list)  # "line 12: test ratio 0.25"
    not_understood: list[str] = field(default_factory=list)  # the lines as written, with where

    def notes(self, *, hint: str = "") -> dict:
        """What generation read and could not read, as stored on the task (Task.setup_notes)."""
        return {"understood": self.understood, "not_understood": self.not_understood, "hint": hint}


@dataclass
class GeneratedTools:
    load_data: str
    evaluate: str
    origin: str  # TaskTool.Origin value
    description: str
    raw_reply: str = ""


# --- SETUP.md --------------------------------------------------------------------------------

SETUP_EXAMPLE = (
    "## Dataset\n- data: data/train.csv\n- target: price\n- id columns: id\n"
    "(or `- loader: load_diabetes`)\n## Evaluate\n<how the predictions are judged>"
)


def data_file_resolve(*, data: str, workspace: Path) -> Path:
    """A data path from SETUP.md or the task config: absolute, or relative to the workspace."""
    path = Path(data).expanduser()
    return path if path.is_absolute() else workspace / path


def task_data_file(*, task) -> Path | None:
    """The raw data file the template's load_data reads (SETUP.md first, then the task config),
    when it exists; None for scikit-learn loaders or when there is no such file."""
    workspace = Path(task.domain.workspace_path)
    try:
        data = setup_parse(path=Path(task.domain.setup_path)).data
    except GenerationError:
        data = ""
    data = data or str((task.config or {}).get("data_path") or "")
    if not data or data.startswith("sklearn:"):
        return None
    path = data_file_resolve(data=data, workspace=workspace).resolve()
    return path if path.exists() else None


def setup_parse(*, path: Path) -> SetupSpec:
    """Read SETUP.md; raise GenerationError when it is missing, empty or lacks its sections."""
    if not path.is_file():
        raise GenerationError(f"SETUP.md not found at {path}; write it with a '## Dataset' and an '## Evaluate' section")
    try:
        text = path.read_text(encoding="utf-8", errors="replace")
    except OSError as exc:
        raise GenerationError(f"SETUP.md at {path} cannot be read: {exc.strerror}") from None
    if not text.strip():
        raise GenerationError(
            f"SETUP.md at {path} is empty; it needs a '## Dataset' section (e.g. '- data: data/train.csv' "
            "and '- target: price', or '- loader: load_diabetes') and an '## Evaluate' section"
        )
    sections: dict[str, str] = {}
    current: str | None = None
    for line in text.splitlines():
        heading = _HEADING.match(line)
        if heading:
            current = heading.group(1).strip().lower()
            sections.setdefault(current, "")
        elif current is not None:
            sections[current] += line + "\n"
    missing = [name for name in ("dataset", "evaluate") if name not in sections]
    if missing:
        found = ", ".join(f"'## {name}'" for name in sections) or "no '## ' headings"
        raise GenerationError(
            f"SETUP.md at {path} is missing its {' and '.join(repr('## ' + m.title()) for m in missing)} "
            f"section{'s' if len(missing) > 1 else ''} (found {found})"
        )
    spec = SetupSpec(path=path, text=text, sections=sections)
    current = None
    fenced = False
    for number, line in enumerate(text.splitlines(), start=1):
        if line.strip().startswith("```"):
            fenced = not fenced
            continue
        heading = _HEADING.match(line)
        if heading:
            current = heading.group(1).strip().lower()
            continue
        if fenced or current is None or not line.strip():
            continue
        setup_line_read(spec, line, where=f"SETUP.md line {number}")
    if not spec.loader and not spec.data:
        # Prose such as "scikit-learn's load_wine dataset" names a loader too.
        named = re.search(r"\b(" + "|".join(SKLEARN_LOADERS) + r")\b", sections["dataset"])
        if named:
            spec.loader = named.group(1)
    return spec


def setup_hint_read(spec: SetupSpec, hint: str) -> None:
    """Apply a `--hint` / hint field to the spec: read like SETUP.md lines, and winning over them."""
    for number, line in enumerate((hint or "").splitlines(), start=1):
        if line.strip():
            setup_line_read(spec, line, where=f"hint line {number}")


def _number(value: str, *, where: str, line: str, what: str, low: float, high: float, high_open: bool = True) -> float:
    text = value.strip().rstrip(".")
    try:
        number = float(text[:-1]) / 100 if text.endswith("%") else float(text)
    except ValueError:
        number = float("nan")
    ok = number == number and low <= number and (number < high if high_open else number <= high)
    if not ok or (what != "holdout ratio" and number == low):
        bound = f"between {low:g} and {high:g}" + (" (0 turns the holdout off)" if what == "holdout ratio" else "")
        raise GenerationError(f"{where} ({line.strip()!r}): {what} must be a number {bound}, like 0.2 or 20%")
    return number


def _set(spec: SetupSpec, key: str, value: str, *, where: str, line: str) -> None:
    """Set one understood key; raise GenerationError naming the line on a bad value."""
    names = [c.strip().strip("`'\"").strip() for c in value.split(",") if c.strip().strip("`'\"").strip()]
    if key == "test_ratio":
        spec.test_ratio = _number(value, where=where, line=line, what="test ratio", low=0, high=1)
        said = f"test ratio {spec.test_ratio:g}"
    elif key == "holdout_ratio":
        spec.holdout_ratio = _number(value, where=where, line=line, what="holdout ratio", low=0, high=1)
        said = f"holdout ratio {spec.holdout_ratio:g}"
    elif key == "seed":
        text = value.strip().rstrip(".")
        if not re.fullmatch(r"\d{1,10}", text) or int(text) > 2**32 - 1:
            raise GenerationError(f"{where} ({line.strip()!r}): seed must be a whole number from 0 to {2**32 - 1}")
        spec.seed = int(text)
        said = f"seed {spec.seed}"
    elif key == "primary_metric":
        # "rmse (lower is better)" → rmse
        word = re.split(r"[\s(,;]", value.strip().strip("`'\""), maxsplit=1)[0].lower()
        spec.primary_metric, spec.primary_metric_line = word, f"{where} ({line.strip()!r})"
        said = f"primary metric {word}"
    elif key == "stratify":
        flag = value.strip().strip("`'\".").lower()
        if flag not in ("yes", "no", "true", "false", "on", "off"):
            raise GenerationError(f"{where} ({line.strip()!r}): stratify must be yes or no")
        spec.stratify = flag in ("yes", "true", "on")
        said = "stratified split" if spec.stratify else "no stratification"
    elif key == "id_columns":
        spec.id_columns = list(dict.fromkeys([*spec.id_columns, *names]))
        said = f"drop columns {', '.join(names)}"
    elif key in ("date_column", "group_column", "target", "data"):
        if not names:
            raise GenerationError(f"{where} ({line.strip()!r}): name the column")
        setattr(spec, key, names[0] if key != "data" else value.strip().strip("`'\"").strip())
        said = {"date_column": "time-ordered split on", "group_column": "grouped split on",
                "target": "target", "data": "data file"}[key] + f" {getattr(spec, key)}"
    else:  # loader
        spec.loader = value.strip().strip("`'\"").split(".")[-1].removesuffix("()")
        said = f"loader {spec.loader}"
    spec.understood.append(f"{where}: {said}")


def _backticked(line: str) -> list[str]:
    return [c.strip() for c in re.findall(r"`([^`]+)`", line) if c.strip()]


# Plain-word instructions: (pattern, key). Column names are the `backticked` words of the line.
_PLAIN: list[tuple[re.Pattern[str], str]] = [
    (re.compile(r"\b(drop|remove|exclude|ignore)\b", re.I), "id_columns"),
    (re.compile(r"\b(time[- ]ordered|chronolog\w*|by date|by time|on the date|date column|time column|"
                r"temporal|ordered by|sort(ed)? by|order by|split (on|by))\b", re.I), "date_column"),
    (re.compile(r"\b(group(ed|s)?|same (patient|user|customer|group))\b", re.I), "group_column"),
    (re.compile(r"\b(target|predict(ing)?|label)\b", re.I), "target"),
]


def _plain_read(spec: SetupSpec, line: str, *, where: str) -> bool:
    """Understand a plain-words line; False when it says something the generator cannot map."""
    low = line.lower()
    columns = _backticked(line)
    if re.search(r"\b(no|not|don't|do not|without)\b[^.]*\bstratif", low):
        _set(spec, "stratify", "no", where=where, line=line)
        return True
    if re.search(r"\bstratif", low):
        _set(spec, "stratify", "yes", where=where, line=line)
        return True
    amount = re.search(r"(\d+(?:\.\d+)?\s*%|\b0?\.\d+\b)", low)
    if amount and re.search(r"\b(test\w*|hold ?out)\b", low):
        key = "test_ratio" if re.search(r"\btest\w*", low) else "holdout_ratio"
        _set(spec, key, amount.group(1).replace(" ", ""), where=where, line=line)
        return True
    seed = re.search(r"\bseed\b\D{0,20}(\d+)", low)
    if seed:
        _set(spec, "seed", seed.group(1), where=where, line=line)
        return True
    if re.search(r"\b(primary metric|optimi[sz]e|judge\w* (by|on)|scored? (by|on))\b", low):
        named = next((m for m in _ALL_METRICS if re.search(rf"\b{m}\b", low)), "")
        if named:
            _set(spec, "primary_metric", named, where=where, line=line)
            return True
    if columns:
        for pattern, key in _PLAIN:
            if pattern.search(line):
                _set(spec, key, ", ".join(columns) if key == "id_columns" else columns[0], where=where, line=line)
                return True
    return False


def setup_line_read(spec: SetupSpec, line: str, *, where: str) -> None:
    """Read one line of SETUP.md (or of a hint) into the spec: a `- key: value` line, or plain
    words for the common cases. An instruction it cannot map goes to spec.not_understood."""
    stripped = line.strip()
    if any(marker in stripped for marker in _SCAFFOLD_LINES):
        return
    match = _LINE.match(line)
    bullet = bool(re.match(r"^\s*[-*]\s+", line))
    if match:
        raw_key = re.sub(r"[\s-]+", "_", match.group(1).strip().lower())
        key = _KEY_ALIASES.get(raw_key)
        value = match.group(2).strip().strip("`'\"").strip()
        if key:
            if value and not _PLACEHOLDER.match(value):
                _set(spec, key, match.group(2).strip(), where=where, line=line)
            return
        if raw_key in _KNOWN_KEYS:
            return
        if bullet and len(raw_key.split("_")) <= 4:
            # An unknown setting is reported; a descriptive bullet ("- rows: one per customer") is not.
            if not _plain_read(spec, line, where=where) and _INSTRUCTION.search(stripped):
                spec.not_understood.append(f"{where}: {stripped}")
            return
    if _plain_read(spec, line, where=where):
        return
    if _INSTRUCTION.search(stripped):
        spec.not_understood.append(f"{where}: {stripped}")


# --- Template generator ----------------------------------------------------------------------


def template_matches(spec: SetupSpec, *, config: dict) -> bool:
    return bool(spec.loader or spec.data or config.get("data_path"))


def generate_from_template(*, spec: SetupSpec, task_type: str, config: dict, workspace: Path) -> GeneratedTools:
    """Write load_data + evaluate for a scikit-learn loader or a local CSV/Parquet file.

    SETUP.md wins over the task config for the data path, target and ID columns. Raise
    GenerationError on a loader of the wrong task type, a missing file or a missing column."""
    test_ratio = spec.test_ratio if spec.test_ratio is not None else float(config.get("test_ratio", 0.2))
    seed = spec.seed if spec.seed is not None else int(config.get("seed", 42))
    classification = TASK_TYPES[task_type].is_classification
    stratify = classification if spec.stratify is None else spec.stratify and classification
    if spec.stratify and not classification:
        spec.not_understood.append("stratification: a regression target has no classes to stratify on")
    if spec.loader and (spec.date_column or spec.group_column):
        raise GenerationError(
            "a time-ordered or grouped split needs a data file with that column; a scikit-learn loader has none"
        )
    if spec.loader:
        kind = SKLEARN_LOADERS.get(spec.loader)
        if kind is None:
            raise GenerationError(
                f"SETUP.md names the loader {spec.loader!r}; the template knows "
                f"{', '.join(SKLEARN_LOADERS)} (other data: '- data: FILE' and '- target: COLUMN')"
            )
        if kind != task_type:
            raise GenerationError(
                f"{spec.loader} is a {kind} dataset but this task is {task_type}; change the task type "
                "or the loader in SETUP.md"
            )
        load_data = _LOADER_TEMPLATE.format(loader=spec.loader, test_ratio=test_ratio, seed=seed, **_split_parts(stratify))
        description = f"scikit-learn {spec.loader}, {test_ratio:g} test split, seed {seed}"
    else:
        data = spec.data or str(config.get("data_path", ""))
        target = spec.target or str(config.get("target_column", ""))
        id_columns = spec.id_columns or list(config.get("id_columns") or [])
        if not target:
            raise GenerationError(
                f"SETUP.md names the data file {data} but no target column; add '- target: COLUMN' "
                "under '## Dataset'"
            )
        path = data_file_resolve(data=data, workspace=workspace)
        suffix = path.suffix.lower()
        if suffix not in (".csv", ".parquet", ".pq"):
            raise GenerationError(f"the data file {data} is neither .csv nor .parquet; the template reads only those")
        if not path.is_file():
            raise GenerationError(f"the data file {data} does not exist (looked for {path})")
        columns = _file_columns(path)
        wanted = {target: "target column", **{c: "ID column" for c in id_columns},
                  spec.date_column: "date column", spec.group_column: "group column"}
        missing = [c for c in wanted if c and c not in columns]
        if missing:
            shown = ", ".join(columns[:50]) + (", …" if len(columns) > 50 else "")
            raise GenerationError(
                f"{wanted[missing[0]]} {missing[0]!r} is not in {data}; columns found: {shown}"
            )
        if spec.date_column and spec.group_column:
            raise GenerationError("SETUP.md asks for both a time-ordered and a grouped split; choose one")
        if spec.date_column in id_columns or spec.group_column in id_columns:
            raise GenerationError("the split column is also listed as a column to drop; keep it (or drop it after the split)")
        template = _FILE_TEMPLATE
        split_note = ""
        if spec.date_column:
            template = _FILE_TEMPLATE.replace(_SPLIT_HELPER, _TIME_SPLIT_HELPER)
            split_note = f", time-ordered on {spec.date_column}"
        elif spec.group_column:
            template = _FILE_TEMPLATE.replace(_SPLIT_HELPER, _GROUP_SPLIT_HELPER)
            split_note = f", grouped by {spec.group_column}"
        load_data = template.format(
            data=json.dumps(data),
            reader=_PARQUET_READ if suffix in (".parquet", ".pq") else _CSV_READ,
            target=json.dumps(target),
            id_columns=json.dumps(id_columns),
            test_ratio=test_ratio,
            seed=seed,
            split_column=json.dumps(spec.date_column or spec.group_column),
            **_split_parts(stratify),
        )
        description = f"{data} (target {target}), {test_ratio:g} test split{split_note}, seed {seed}"
    return GeneratedTools(
        load_data=load_data,
        evaluate=EVALUATE_TEMPLATES[task_type],
        origin="template",
        description=description,
    )


def _split_parts(stratify: bool) -> dict[str, str]:
    """How the generated _split groups rows: per class (stratified) or all together."""
    if stratify:
        return {
            "stratify_doc": ", class by class (stratified)",
            "groups": "[np.flatnonzero(labels == c) for c in np.unique(labels)]",
        }
    return {"stratify_doc": "", "groups": "[np.arange(len(labels))]"}


def _file_columns(path: Path) -> list[str]:
    import pandas as pd

    try:
        if path.suffix.lower() == ".csv":
            return [str(c) for c in pd.read_csv(path, nrows=0).columns]
        import pyarrow.parquet as pq

        return [str(c) for c in pq.read_schema(path).names]
    except Exception as exc:  # unreadable or malformed file: say so in one line
        raise GenerationError(f"could not read the columns of {path.name}: {exc}") from None


_SPLIT_HELPER = '''

def _split(X, y):
    """Shuffle deterministically from SEED and hold out TEST_RATIO of the rows{stratify_doc}."""
    rng = np.random.default_rng(SEED)
    labels = np.asarray(y)
    groups = {groups}
    test = []
    for positions in groups:
        shuffled = rng.permutation(positions)
        take = int(round(len(shuffled) * TEST_RATIO))
        if len(shuffled) >= 2:
            take = min(max(take, 1), len(shuffled) - 1)
        test.append(shuffled[:take])
    test = rng.permutation(np.concatenate(test))
    is_test = np.zeros(len(labels), dtype=bool)
    is_test[test] = True
    train = rng.permutation(np.flatnonzero(~is_test))
    # Positions, not the original index, identify rows from here on.
    return (
        X.iloc[train].reset_index(drop=True),
        X.iloc[test].reset_index(drop=True),
        y.iloc[train].reset_index(drop=True),
        y.iloc[test].reset_index(drop=True),
    )
'''

_TIME_SPLIT_HELPER = '''
SPLIT_COLUMN = {split_column}


def _split(X, y):
    """Time-ordered: the latest TEST_RATIO of the rows by SPLIT_COLUMN are the test rows."""
    when = pd.to_datetime(X[SPLIT_COLUMN].astype(str), errors="coerce")
    order = np.argsort(when.to_numpy(), kind="stable")  # unparseable dates (NaT) sort last
    take = int(round(len(order) * TEST_RATIO))
    if len(order) >= 2:
        take = min(max(take, 1), len(order) - 1)
    train, test = order[: len(order) - take], order[len(order) - take :]
    # Positions, not the original index, identify rows from here on.
    return (
        X.iloc[train].reset_index(drop=True),
        X.iloc[test].reset_index(drop=True),
        y.iloc[train].reset_index(drop=True),
        y.iloc[test].reset_index(drop=True),
    )
'''

_GROUP_SPLIT_HELPER = '''
SPLIT_COLUMN = {split_column}


def _split(X, y):
    """Grouped: rows sharing a SPLIT_COLUMN value all land on one side; about TEST_RATIO of the
    rows, whole groups drawn deterministically from SEED, are the test rows."""
    rng = np.random.default_rng(SEED)
    keys = X[SPLIT_COLUMN].astype(str).to_numpy()
    names, inverse, sizes = np.unique(keys, return_inverse=True, return_counts=True)
    wanted = int(round(len(keys) * TEST_RATIO))
    chosen, count = [], 0
    for g in rng.permutation(len(names)):
        if count >= wanted or len(chosen) == len(names) - 1:
            break
        chosen.append(g)
        count += sizes[g]
    is_test = np.isin(inverse, chosen)
    train = rng.permutation(np.flatnonzero(~is_test))
    test = rng.permutation(np.flatnonzero(is_test))
    return (
        X.iloc[train].reset_index(drop=True),
        X.iloc[test].reset_index(drop=True),
        y.iloc[train].reset_index(drop=True),
        y.iloc[test].reset_index(drop=True),
    )
'''

_LOADER_TEMPLATE = (
    '''"""load_data: scikit-learn's {loader}, split deterministically. Written by Dojo's template."""

import numpy as np
from sklearn.datasets import {loader}

TEST_RATIO = {test_ratio}
SEED = {seed}


def load_data():
    X, y = {loader}(return_X_y=True, as_frame=True)
    return _split(X, y)
'''
    + _SPLIT_HELPER
)

_PARQUET_READ = "pd.read_parquet(DATA_PATH)"
# In chunks: the parser's buffers stay small, so the peak stays near twice the data, not four times.
_CSV_READ = "pd.concat(pd.read_csv(DATA_PATH, chunksize=200_000), ignore_index=True)"

_FILE_TEMPLATE = (
    '''"""load_data: a local data file with a target column, split deterministically.
Written by Dojo's template. Paths are relative to the workspace (load_data's working directory)."""

import numpy as np
import pandas as pd
from pandas.api.types import is_object_dtype, is_string_dtype

DATA_PATH = {data}
TARGET = {target}
ID_COLUMNS = {id_columns}
TEST_RATIO = {test_ratio}
SEED = {seed}


def load_data():
    df = {reader}
    missing = [c for c in [TARGET, *ID_COLUMNS] if c not in df.columns]
    if missing:
        raise ValueError(f"{{DATA_PATH}} has no column {{missing[0]!r}}; columns: {{list(df.columns)}}")
    y = df.pop(TARGET)
    X = df.drop(columns=ID_COLUMNS) if ID_COLUMNS else df
    # Rows without a label cannot be trained on or scored.
    labelled = y.notna()
    if not labelled.all():
        X, y = X[labelled], y[labelled]
    # Text columns become pandas categoricals; missing values stay NaN.
    for column in X.columns:
        if is_object_dtype(X[column]) or is_string_dtype(X[column]):
            X[column] = X[column].astype("category")
    return _split(X, y)
'''
    + _SPLIT_HELPER
)

_DIAGNOSTICS = '''

# --- diagnostics: small SVG charts for a reviewer, on the validation rows only ---------------
# The harness sets DOJO_EVALUATE_PART to the part being scored; the holdout never gets charts.
# Plain SVG written here (no plotting library): a few milliseconds per experiment.

def _diagnostics_wanted():
    return os.environ.get("DOJO_EVALUATE_PART") == "validation"


def _esc(text):
    return str(text).replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")


PANEL_W, PANEL_H = 360, 300


def _panel(title, body):
    return (f'<g><title>{_esc(title)}</title>'
            f'<text x="{PANEL_W / 2}" y="16" text-anchor="middle" font-size="13">{_esc(title)}</text>{body}</g>')


def _sheet(path, panels):
    """One SVG file with the panels side by side: one artifact per experiment keeps it cheap."""
    width = PANEL_W * len(panels)
    placed = "".join(f'<g transform="translate({i * PANEL_W},0)">{p}</g>' for i, p in enumerate(panels))
    Path(path).write_text(
        f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{PANEL_H}" '
        f'viewBox="0 0 {width} {PANEL_H}" font-family="sans-serif" font-size="11">'
        f'<rect width="100%" height="100%" fill="white"/>{placed}</svg>',
        encoding="utf-8",
    )


def _chart(title, xlabel, ylabel, points=(), lines=(), limits=None):
    """A panel: a scatter of `points` (xs, ys) plus `lines` [(xs, ys, colour)] on linear axes."""
    left, top, w, h = 50, 26, 290, 230
    xs_all = [np.asarray(p, dtype=float) for p in [points[0] if len(points) else [], *[l[0] for l in lines]]]
    ys_all = [np.asarray(p, dtype=float) for p in [points[1] if len(points) else [], *[l[1] for l in lines]]]
    xv, yv = np.concatenate(xs_all), np.concatenate(ys_all)
    keep = np.isfinite(xv) & np.isfinite(yv)
    if not keep.any():
        return _panel(title, "")
    x0, x1, y0, y1 = limits or (xv[keep].min(), xv[keep].max(), yv[keep].min(), yv[keep].max())
    x1, y1 = (x1 if x1 > x0 else x0 + 1), (y1 if y1 > y0 else y0 + 1)
    sx = lambda v: left + (v - x0) / (x1 - x0) * w  # noqa: E731
    sy = lambda v: top + h - (v - y0) / (y1 - y0) * h  # noqa: E731
    body = [f'<rect x="{left}" y="{top}" width="{w}" height="{h}" fill="none" stroke="#999"/>']
    for value, anchor in ((x0, "start"), (x1, "end")):
        body.append(f'<text x="{sx(value):.1f}" y="{top + h + 14}" text-anchor="{anchor}">{value:.3g}</text>')
    for value in (y0, y1):
        body.append(f'<text x="{left - 4}" y="{sy(value) + 4:.1f}" text-anchor="end">{value:.3g}</text>')
    body.append(f'<text x="{left + w / 2}" y="{top + h + 28}" text-anchor="middle">{_esc(xlabel)}</text>')
    body.append(f'<text x="12" y="{top + h / 2}" text-anchor="middle" transform="rotate(-90 12 {top + h / 2})">{_esc(ylabel)}</text>')
    for lx, ly, colour in lines:
        coords = " ".join(f"{sx(a):.1f},{sy(b):.1f}" for a, b in zip(lx, ly) if np.isfinite(a) and np.isfinite(b))
        body.append(f'<polyline points="{coords}" fill="none" stroke="{colour}" stroke-width="1.5"/>')
    if len(points):
        px, py = np.asarray(points[0], dtype=float), np.asarray(points[1], dtype=float)
        if len(px) > 1500:  # enough to see the shape; the file stays small
            pick = np.linspace(0, len(px) - 1, 1500).astype(int)
            px, py = px[pick], py[pick]
        finite = np.isfinite(px) & np.isfinite(py)
        body += [f'<circle cx="{a:.1f}" cy="{b:.1f}" r="2" fill="#3366cc" fill-opacity="0.5"/>'
                 for a, b in zip(sx(px[finite]).tolist(), sy(py[finite]).tolist())]
    return _panel(title, "".join(body))


def _confusion(y_true, y_hat, classes):
    index = {c: i for i, c in enumerate(classes)}
    n = len(classes)
    counts = np.zeros((n, n), dtype=int)
    for t, p in zip(y_true, y_hat):
        counts[index[t], index[p]] += 1
    cell = max(4, min(60, 230 // max(n, 1)))
    left, top = 90, 40
    body = [f'<text x="{left + n * cell / 2}" y="{top - 6}" text-anchor="middle">predicted</text>',
            f'<text x="12" y="{top + n * cell / 2}" text-anchor="middle" transform="rotate(-90 12 {top + n * cell / 2})">actual</text>']
    for i in range(n):
        total = counts[i].sum() or 1
        body.append(f'<text x="{left - 4}" y="{top + i * cell + cell / 2 + 4}" text-anchor="end">{_esc(classes[i])[:12]}</text>')
        for j in range(n):
            shade = int(255 - 200 * counts[i, j] / total)
            body.append(f'<rect x="{left + j * cell}" y="{top + i * cell}" width="{cell}" height="{cell}" '
                        f'fill="rgb({shade},{shade},255)" stroke="white"/>')
            if cell >= 24:
                body.append(f'<text x="{left + j * cell + cell / 2}" y="{top + i * cell + cell / 2 + 4}" text-anchor="middle">{counts[i, j]}</text>')
    return _panel("Confusion matrix (validation rows)", "".join(body))


def _calibration(confidence, correct, title):
    bins = np.linspace(0, 1, 11)
    which = np.clip(np.digitize(confidence, bins) - 1, 0, 9)
    mean_p = [confidence[which == b].mean() for b in range(10) if (which == b).any()]
    rate = [correct[which == b].mean() for b in range(10) if (which == b).any()]
    return _chart(title, "predicted probability", "observed frequency", points=(mean_p, rate),
           lines=[([0, 1], [0, 1], "#999"), (mean_p, rate, "#3366cc")], limits=(0, 1, 0, 1))
'''

_EVALUATE_REGRESSION = '''"""evaluate: rmse, mae and r2 of the predicted values. Written by Dojo's template."""

import os
import sys
from pathlib import Path

import numpy as np
from sklearn.metrics import mean_absolute_error, mean_squared_error, r2_score


def evaluate(y_pred, *, X_train, X_test, y_train, y_test, artifacts_dir):
    y_true = np.asarray(y_test, dtype=float).reshape(-1)
    y_pred = np.asarray(y_pred, dtype=float).reshape(-1)
    if y_pred.shape != y_true.shape:
        raise ValueError(f"y_pred has {y_pred.shape[0]} values; expected {y_true.shape[0]}")
    metrics = {
        "rmse": float(np.sqrt(mean_squared_error(y_true, y_pred))),
        "mae": float(mean_absolute_error(y_true, y_pred)),
        "r2": float(r2_score(y_true, y_pred)),
    }
    if _diagnostics_wanted():
        try:
            lo, hi = float(min(y_true.min(), y_pred.min())), float(max(y_true.max(), y_pred.max()))
            _sheet(artifacts_dir / "diagnostics.svg", [
                _chart("Residuals vs predicted (validation rows)", "predicted", "actual - predicted",
                       points=(y_pred, y_true - y_pred), lines=[([y_pred.min(), y_pred.max()], [0, 0], "#999")]),
                _chart("Predicted vs actual (validation rows)", "actual", "predicted",
                       points=(y_true, y_pred), lines=[([lo, hi], [lo, hi], "#999")]),
            ])
        except Exception as exc:  # noqa: BLE001 - a chart is never worth failing the score
            print(f"diagnostics skipped: {type(exc).__name__}: {exc}", file=sys.stderr)
    return metrics
''' + _DIAGNOSTICS

_EVALUATE_BINARY = '''"""evaluate: roc_auc, log_loss, accuracy and f1 of positive-class probabilities.
Written by Dojo's template. The positive class is the larger of the two sorted labels."""

import os
import sys
from pathlib import Path

import numpy as np
from sklearn.metrics import accuracy_score, f1_score, log_loss, roc_auc_score, roc_curve


def evaluate(y_pred, *, X_train, X_test, y_train, y_test, artifacts_dir):
    classes = np.unique(np.concatenate([np.asarray(y_train).ravel(), np.asarray(y_test).ravel()]))
    y_true = (np.asarray(y_test).ravel() == classes[-1]).astype(int)
    proba = np.asarray(y_pred, dtype=float).reshape(-1)
    if proba.shape != y_true.shape:
        raise ValueError(f"y_pred has {proba.shape[0]} values; expected {y_true.shape[0]}")
    predicted = (proba >= 0.5).astype(int)
    metrics = {
        "roc_auc": float(roc_auc_score(y_true, proba)),
        "log_loss": float(log_loss(y_true, proba, labels=[0, 1])),
        "accuracy": float(accuracy_score(y_true, predicted)),
        "f1": float(f1_score(y_true, predicted, zero_division=0)),
    }
    if _diagnostics_wanted():
        try:
            labels = [str(c) for c in classes[-2:]]
            fpr, tpr, _ = roc_curve(y_true, proba)
            _sheet(artifacts_dir / "diagnostics.svg", [
                _confusion([labels[t] for t in y_true], [labels[p] for p in predicted], labels),
                _chart(f"ROC curve (validation rows), AUC {metrics['roc_auc']:.3f}", "false positive rate",
                       "true positive rate", lines=[([0, 1], [0, 1], "#999"), (fpr, tpr, "#3366cc")],
                       limits=(0, 1, 0, 1)),
                _calibration(proba, y_true.astype(float), "Calibration (validation rows)"),
            ])
        except Exception as exc:  # noqa: BLE001 - a chart is never worth failing the score
            print(f"diagnostics skipped: {type(exc).__name__}: {exc}", file=sys.stderr)
    return metrics
''' + _DIAGNOSTICS

_EVALUATE_MULTICLASS = '''"""evaluate: log_loss, accuracy and macro_f1 of class probabilities.
Written by Dojo's template. Columns of y_pred follow the sorted labels of y_train and y_test."""

import os
import sys
from pathlib import Path

import numpy as np
from sklearn.metrics import accuracy_score, f1_score, log_loss


def evaluate(y_pred, *, X_train, X_test, y_train, y_test, artifacts_dir):
    classes = np.unique(np.concatenate([np.asarray(y_train).ravel(), np.asarray(y_test).ravel()]))
    y_true = np.asarray(y_test).ravel()
    proba = np.asarray(y_pred, dtype=float)
    if proba.shape != (y_true.shape[0], classes.shape[0]):
        raise ValueError(f"y_pred has shape {proba.shape}; expected {(y_true.shape[0], classes.shape[0])}")
    predicted = classes[proba.argmax(axis=1)]
    metrics = {
        "log_loss": float(log_loss(y_true, proba, labels=classes)),
        "accuracy": float(accuracy_score(y_true, predicted)),
        "macro_f1": float(f1_score(y_true, predicted, average="macro", zero_division=0)),
    }
    if _diagnostics_wanted():
        try:
            _sheet(artifacts_dir / "diagnostics.svg", [
                _confusion([str(c) for c in y_true], [str(c) for c in predicted], [str(c) for c in classes]),
                _calibration(proba.max(axis=1), (predicted == y_true).astype(float),
                             "Calibration of the top class (validation rows)"),
            ])
        except Exception as exc:  # noqa: BLE001 - a chart is never worth failing the score
            print(f"diagnostics skipped: {type(exc).__name__}: {exc}", file=sys.stderr)
    return metrics
''' + _DIAGNOSTICS

EVALUATE_TEMPLATES = {
    "regression": _EVALUATE_REGRESSION,
    "binary": _EVALUATE_BINARY,
    "multiclass": _EVALUATE_MULTICLASS,
}


# --- Claude generator ------------------------------------------------------------------------

TOOLGEN_SYSTEM_PROMPT = (
    "You write two small Python modules for a machine-learning evaluation contract. "
    "You reply with one JSON object and nothing else."
)


def toolgen_prompt(
    *, spec: SetupSpec, task_type: str, config: dict, workspace: Path, domain_name: str, hint: str = ""
) -> str:
    tt = TASK_TYPES[task_type]
    hints = {
        "data_path": spec.data or config.get("data_path", ""),
        "target_column": spec.target or config.get("target_column", ""),
        "id_columns": spec.id_columns or config.get("id_columns", []),
        "test_ratio": spec.test_ratio if spec.test_ratio is not None else config.get("test_ratio", 0.2),
        "seed": spec.seed if spec.seed is not None else config.get("seed", 42),
    }
    if spec.date_column:
        hints["time_ordered_split_on"] = spec.date_column
    if spec.group_column:
        hints["grouped_split_on"] = spec.group_column
    if spec.stratify is not None:
        hints["stratify"] = spec.stratify
    extra = f"\nExtra instructions from the user (follow them):\n-----\n{hint.strip()}\n-----\n" if hint.strip() else ""
    return f"""Write the frozen tools of the ML task "{domain_name}" (contract version {CONTRACT_VERSION}).

SETUP.md, the source of truth about the data:
-----
{spec.text.strip()}
-----
Hints from the task configuration: {json.dumps(hints)}
{extra}Working directory when load_data runs (relative paths resolve here): {workspace}

The contract the tools serve:
{contract_text(task_type)}

Write two modules:
1. load_data.py defining `def load_data():` returning the 4-tuple (X_train, X_test, y_train, y_test).
   - X as a pandas DataFrame; text columns as pandas `category`; missing values stay NaN;
     drop ID-like columns; rows without a label dropped.
   - A deterministic split: test_size={hints["test_ratio"]}, random_state={hints["seed"]}
     {"stratified on y" if tt.is_classification else "(not stratified)"}; reset the index of every part.
   - No printing, no network, no writes outside artifacts.
2. evaluate.py defining
   `def evaluate(y_pred, *, X_train, X_test, y_train, y_test, artifacts_dir):` returning a dict with
   exactly the keys {list(tt.metrics)} as finite floats, computed with sklearn.metrics.
   - It must work on any subset of the test rows (it is called on a validation part and a holdout part).
   - Classes are np.unique of y_train and y_test together (sorted); for binary tasks the positive class
     is the larger label and y_pred is its probability; for multiclass y_pred has one column per
     sorted class and log_loss uses labels= those classes.

Reply with exactly one JSON object, no prose and no code fence:
{{"load_data": "<the whole load_data.py source>", "evaluate": "<the whole evaluate.py source>"}}
"""


def generate_with_claude(
    *, spec: SetupSpec, task_type: str, config: dict, workspace: Path, domain_name: str, hint: str = ""
) -> GeneratedTools:
    """One completion; raise GenerationError (raw reply kept on disk) when the reply is unusable."""
    from dojo_site.claude import claude_complete

    prompt = toolgen_prompt(
        spec=spec, task_type=task_type, config=config, workspace=workspace, domain_name=domain_name, hint=hint
    )
    completion = claude_complete(
        prompt=prompt, system_prompt=TOOLGEN_SYSTEM_PROMPT, model=settings.DOJO_TOOLGEN_MODEL
    )
    try:
        tools = parse_tools_reply(completion.text)
    except GenerationError as exc:
        kept = _keep_raw_reply(domain_name=domain_name, reply=completion.text)
        # Queued (DOJO_INLINE_TASKS=0), this message is read on another machine than the one keeping the file.
        raise GenerationError(
            f"Claude's reply is not usable: {exc}. The raw reply is kept on {socket.gethostname()} in {kept}"
        ) from None
    return GeneratedTools(
        load_data=tools["load_data"],
        evaluate=tools["evaluate"],
        origin="claude",
        description=f"written by {completion.model}",
        raw_reply=completion.text,
    )


def parse_tools_reply(text: str) -> dict[str, str]:
    """Parse Claude's reply strictly: one JSON object (optionally in a single ```json fence) with
    exactly the keys load_data and evaluate, each valid Python defining that function."""
    body = text.strip()
    fence = re.fullmatch(r"```(?:json)?\s*\n(.*)\n```", body, flags=re.DOTALL)
    if fence:
        body = fence.group(1).strip()
    if not body:
        raise GenerationError("the reply is empty")
    try:
        data = json.loads(body)
    except json.JSONDecodeError as exc:
        raise GenerationError(f"the reply is not one JSON object ({exc.msg} at line {exc.lineno} column {exc.colno})") from None
    if not isinstance(data, dict):
        raise GenerationError(f"the reply is JSON {type(data).__name__}, expected an object")
    keys = set(data)
    if keys != set(TOOL_NAMES):
        raise GenerationError(
            f"the reply has keys {sorted(keys)}, expected exactly ['evaluate', 'load_data']"
        )
    for name in TOOL_NAMES:
        if not isinstance(data[name], str) or not data[name].strip():
            raise GenerationError(f"{name} is not a non-empty string of Python code")
        tool_code_check(name=name, code=data[name])
    return {name: data[name] for name in TOOL_NAMES}


def tool_code_check(*, name: str, code: str) -> None:
    """Raise GenerationError unless `code` parses and defines the top-level function `name`."""
    try:
        tree = ast.parse(code, filename=f"{name}.py")
    except SyntaxError as exc:
        raise GenerationError(f"{name}.py line {exc.lineno}: {exc.msg}") from None
    if not any(isinstance(node, ast.FunctionDef) and node.name == name for node in tree.body):
        raise GenerationError(f"{name}.py does not define a top-level function {name}()")


def _keep_raw_reply(*, domain_name: str, reply: str) -> Path:
    # Kept for a person to read on the machine that asked Claude: per-machine scratch, not a record.
    # A usable reply is a record and lives in the database (TaskTool.raw_reply); nothing reads these
    # files back, so no other machine needs them (docs/cluster.md).
    folder = Path(settings.DOJO_CACHE_DIR) / "toolgen"
    folder.mkdir(parents=True, exist_ok=True)
    safe = re.sub(r"[^A-Za-z0-9_.-]", "_", domain_name)
    path = folder / f"{safe}-{timezone.now():%Y%m%dT%H%M%S%f}.txt"
    path.write_text(reply, encoding="utf-8")
    return path


def no_generator_message(*, setup_path: Path, reason: str) -> str:
    return (
        f"SETUP.md ({setup_path}) matches no template and Claude is not available ({reason}). "
        "Ways forward: (1) name the data in SETUP.md's '## Dataset' section — '- loader: load_diabetes' "
        "or '- data: data/train.csv' with '- target: COLUMN' — and run `dojo_task generate` again; "
        "(2) write the tools yourself and run `dojo_task import --load-data FILE --evaluate FILE` "
        "(or paste them on the task page); (3) make Claude available (set ANTHROPIC_API_KEY, or "
        "DOJO_CLAUDE_CLI_PATH) and run `dojo_task generate --with claude`."
    )
