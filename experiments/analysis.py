"""Reading a domain's experiments for analysis: the leaderboard, comparing, lineage, chart data.

1. The leaderboard is one query built from what the URL says: columns to show (any metric on
   validation or holdout, params, family, run, parent, CV, seed spread, train seconds), one sort
   column, filters (state, run, family, text in the hypothesis). Only real, indexed columns sort
   (the `exp_*_idx` indexes on Experiment): a JSON metric or param is shown, never sorted on,
   because a sort without an index is what made deep pages slow at 10,000 rows.
2. "Best first" orders by the stored rank value of experiments.ranking (the one definition of
   best), so it walks an index; rows without one (failed, running) follow. The other sorts are
   plain column orders. A page is read in two steps: its ids from the covering index, then those
   25 rows (a "deferred join"): a deep page never reads the wide rows it skips.
3. Reproductions (`reproduction_of` set) are not leaderboard entries: they are shown on the page
   of the experiment they reproduce.
4. Compare lines up experiments' metrics, variables (flattened, differences marked) and code.
5. Lineage is the parent link: the path from a root, the children, and a domain's tree.
6. Chart data is sent as compact arrays of every completed experiment (no sampling).
"""

from __future__ import annotations

import difflib
import math
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

from django.db.models import F, QuerySet

from dojo_site.errors import InvalidInput, NotFound
from domains import contracts
from domains.models import Domain, Task
from experiments.models import Experiment
from experiments.ranking import UNRANKED_STATES

# --- The leaderboard ---------------------------------------------------------------------------

# Sort key → the model field it orders by. Every one has an index starting with `domain`.
SORT_FIELDS = {
    "best": "rank_value",
    "validation": "primary_value",
    "holdout": "holdout_primary_value",
    "created": "created_at",
    "train_seconds": "train_seconds",
    "id": "id",
    "cv": "cv_value",
    "seed_spread": "seed_spread",
}
# Fields read for a leaderboard row: never the train code or the logs (they dominate row size).
ROW_FIELDS = (
    "id", "domain_id", "run_id", "parent_id", "state", "hypothesis", "error", "variables", "family", "metrics",
    "holdout_metrics", "primary_value", "holdout_primary_value", "train_seconds", "created_at",
    "task_fingerprint", "data_fingerprint", "seed", "rank_value", "seed_spread", "cv_value", "quarantine_state",
    "validation_ci", "holdout_ci", "seed_count",
)
MAX_COLUMNS = 40
MAX_IDS = 50  # experiments compared at once


def sort_keys() -> list[str]:
    return [key for key in SORT_FIELDS if key != "best"]


def _maximize(task: Task | None, metric: str | None = None) -> bool:
    if task is None:
        return False
    if metric is None or metric == task.primary_metric:
        return task.direction == Task.Direction.MAXIMIZE
    kind = contracts.TASK_TYPES.get(task.task_type)
    directions = getattr(kind, "metric_directions", {}) or {}
    return directions.get(metric, "minimize") == "maximize"


@dataclass
class Column:
    key: str  # as in the URL: "val:rmse", "hold:rmse", "param:alpha", "family", …
    label: str
    sort: str = ""  # the sort key when this column sorts (an indexed field), else ""
    numeric: bool = True


def column_for(key: str, *, task: Task | None) -> Column | None:
    """The column a `cols` URL value names, or None for a value that names nothing."""
    primary = task.primary_metric if task else None
    if key.startswith(("val:", "hold:")):
        kind, metric = key.split(":", 1)
        if not metric or len(metric) > 100:
            return None
        sort = ("validation" if kind == "val" else "holdout") if metric == primary else ""
        return Column(key, f"{metric} ({'validation' if kind == 'val' else 'holdout'})", sort)
    if key.startswith("param:"):
        name = key.split(":", 1)[1]
        return Column(key, name, numeric=False) if name and len(name) <= 100 else None
    fixed = {
        "gap": Column("gap", "gap (holdout − val)"),
        "cv": Column("cv", "CV", "cv"),
        "seed_spread": Column("seed_spread", "seed spread", "seed_spread"),
        "train_seconds": Column("train_seconds", "train s", "train_seconds"),
        "family": Column("family", "family", numeric=False),
        "run": Column("run", "run", numeric=False),
        "parent": Column("parent", "parent", numeric=False),
        "seed": Column("seed", "seed"),
    }
    return fixed.get(key)


def default_columns(task: Task | None) -> list[str]:
    if task is None:
        return ["train_seconds", "family"]
    return [f"val:{task.primary_metric}", f"hold:{task.primary_metric}", "gap", "train_seconds", "family"]


def available_columns(task: Task | None, params: Iterable[str] = ()) -> list[Column]:
    """Every column the chooser offers: each of the task's metrics on validation and holdout, the
    fixed ones, and the params seen on recent experiments."""
    keys: list[str] = []
    metrics = list(contracts.TASK_TYPES[task.task_type].metrics) if task and task.task_type in contracts.TASK_TYPES else []
    if task and task.primary_metric not in metrics:
        metrics.insert(0, task.primary_metric)
    for metric in metrics:
        keys += [f"val:{metric}", f"hold:{metric}"]
    keys += ["gap", "cv", "seed_spread", "train_seconds", "family", "run", "parent", "seed"]
    keys += [f"param:{name}" for name in params]
    return [c for c in (column_for(k, task=task) for k in keys) if c is not None]


def flat_variables(variables: Any) -> dict[str, Any]:
    """A variables dict flattened for display: {"family": "ridge", "params": {"alpha": 1}} →
    {"family": "ridge", "alpha": 1}; deeper values are shown as they are."""
    if not isinstance(variables, dict):
        return {}
    out: dict[str, Any] = {}
    for key, value in variables.items():
        if key == "params" and isinstance(value, dict):
            for name, inner in value.items():
                out.setdefault(str(name), inner)
        else:
            out[str(key)] = value
    return out


def family_of(variables: Any) -> str:
    if isinstance(variables, dict):
        value = variables.get("family") or variables.get("model")
        if isinstance(value, str):
            return value[:100]
    return ""


def recent_params(*, domain: Domain, limit: int = 200) -> list[str]:
    """Param names on the domain's newest experiments (what the column chooser offers)."""
    names: dict[str, None] = {}
    rows = Experiment.objects.filter(domain=domain).order_by("-created_at").values_list("variables", flat=True)[:limit]
    for variables in rows:
        for name in flat_variables(variables):
            if name not in ("family", "phase", "reproduces", "members"):
                names.setdefault(name, None)
    return sorted(names)[:MAX_COLUMNS]


@dataclass
class LeaderboardQuery:
    sort: str = "best"  # "best" or a key of SORT_FIELDS
    direction: str = ""  # "asc" | "desc"; "" = the sort's natural direction
    state: str = ""
    run: int | None = None
    family: str = ""
    q: str = ""
    columns: list[str] = field(default_factory=list)


def natural_direction(sort: str, *, task: Task | None) -> str:
    """Best first for metrics, newest first for time and id, smallest first for seconds/spread."""
    if sort in ("best", "validation", "holdout", "cv"):
        return "desc" if _maximize(task) else "asc"
    if sort in ("created", "id"):
        return "desc"
    return "asc"


def leaderboard_query(*, domain: Domain, query: LeaderboardQuery, task: Task | None = None) -> QuerySet:
    """The domain's leaderboard as an ordered queryset (reproductions left out, archived ones only
    when asked for). Page it as `.values_list("id", flat=True)` and read the rows of one page with
    `leaderboard_rows`: the ids come from a covering index.

    Raises InvalidInput for an unknown sort, direction or state."""
    if task is None:
        task = Task.objects.filter(domain=domain).first()
    if query.sort != "best" and query.sort not in sort_keys():
        raise InvalidInput(f"sort must be one of best, {', '.join(sort_keys())}")
    if query.direction not in ("", "asc", "desc"):
        raise InvalidInput("dir must be asc or desc")
    if query.state and query.state not in Experiment.State.values:
        raise InvalidInput(f"state must be one of {', '.join(Experiment.State.values)}")
    column = SORT_FIELDS[query.sort]
    direction = query.direction or natural_direction(query.sort, task=task)
    order = F(column).desc(nulls_last=True) if direction == "desc" else F(column).asc(nulls_last=True)
    tie = "-id" if direction == "desc" else "id"
    qs = _filtered(Experiment.objects.filter(domain=domain), query)
    if query.sort == "best":
        # Quarantined experiments rank nowhere (experiments/ranking.py); other sorts show them.
        qs = qs.exclude(quarantine_state__in=UNRANKED_STATES)
    return qs.order_by(order, tie)


def leaderboard_rows(*, ids: list[int], task: Task | None) -> list[Experiment]:
    """The rows of one leaderboard page, in the order of `ids`: only ROW_FIELDS loaded,
    annotated with `gap` (holdout − validation) and `other_contract`."""
    from domains.services import contract_annotate

    qs = Experiment.objects.filter(pk__in=ids).only(*ROW_FIELDS).annotate(
        gap=F("holdout_primary_value") - F("primary_value")
    )
    if task is not None:
        qs = contract_annotate(qs, task=task)
    by_id = {e.pk: e for e in qs}
    return [by_id[i] for i in ids if i in by_id]


def _filtered(qs: QuerySet, query: LeaderboardQuery) -> QuerySet:
    qs = qs.filter(reproduction_of__isnull=True)
    if query.state:
        qs = qs.filter(state=query.state)
    else:
        qs = qs.exclude(state=Experiment.State.ARCHIVED)
    if query.run is not None:
        qs = qs.filter(run_id=query.run)
    if query.family:
        qs = qs.filter(family=query.family)
    if query.q:
        qs = qs.filter(hypothesis__icontains=query.q)
    return qs


def cell(exp: Experiment, key: str) -> Any:
    """The value of one leaderboard/compare column for one experiment."""
    if key.startswith("val:"):
        return (exp.metrics or {}).get(key[4:])
    if key.startswith("hold:"):
        return (exp.holdout_metrics or {}).get(key[5:])
    if key.startswith("param:"):
        return flat_variables(exp.variables).get(key[6:])
    if key == "gap":
        if exp.primary_value is None or exp.holdout_primary_value is None:
            return None
        return exp.holdout_primary_value - exp.primary_value
    if key == "cv":
        return exp.cv_value
    if key == "family":
        return exp.family
    if key == "run":
        return exp.run_id
    if key == "parent":
        return exp.parent_id
    return getattr(exp, key, None)


# --- Compare ----------------------------------------------------------------------------------


def parse_ids(raw: Iterable[str]) -> list[int]:
    """Experiment ids from `?ids=1,2&ids=3` / the CLI, in order, without repeats.
    InvalidInput for a non-number, fewer than one, or more than MAX_IDS."""
    ids: list[int] = []
    for chunk in raw:
        for part in str(chunk).replace(" ", ",").split(","):
            if not part:
                continue
            try:
                value = int(part)
            except ValueError:
                raise InvalidInput(f"experiment ids must be numbers, got {part!r}") from None
            if not 0 < value < 2**63:
                raise InvalidInput(f"no experiment #{value}")
            if value not in ids:
                ids.append(value)
    if not ids:
        raise InvalidInput("name at least one experiment to compare (ids=1,2,…)")
    if len(ids) > MAX_IDS:
        raise InvalidInput(f"compare at most {MAX_IDS} experiments at once")
    return ids


def experiments_for_compare(*, ids: list[int], domain: Domain | None = None) -> list[Experiment]:
    """The experiments, in the order asked for, all of one domain.

    Raises NotFound for an id that does not exist (or is in another domain than `domain`) and
    InvalidInput when they span several domains (their metrics are not comparable)."""
    qs = Experiment.objects.select_related("domain", "domain__task").filter(pk__in=ids)
    if domain is not None:
        qs = qs.filter(domain=domain)
    found = {e.pk: e for e in qs}
    missing = [i for i in ids if i not in found]
    if missing:
        where = f" in domain {domain.name!r}" if domain else ""
        raise NotFound(f"experiment{'s' if len(missing) > 1 else ''} {', '.join(f'#{i}' for i in missing)} "
                       f"do{'' if len(missing) > 1 else 'es'} not exist{where}")
    exps = [found[i] for i in ids]
    if len({e.domain_id for e in exps}) > 1:
        raise InvalidInput("the experiments belong to different domains; compare experiments of one domain")
    return exps


@dataclass
class CompareRow:
    label: str
    values: list[Any]
    differs: bool
    best: int | None = None  # index of the best value (metrics only)
    kind: str = "metric"  # "metric" | "variable" | "fact"


def _differs(values: list[Any]) -> bool:
    seen = []
    for value in values:
        if value not in seen:
            seen.append(value)
    return len(seen) > 1


def _best_index(values: list[Any], maximize: bool) -> int | None:
    numbers = [(v, i) for i, v in enumerate(values) if isinstance(v, int | float) and math.isfinite(v)]
    if len(numbers) < 2:
        return None
    return (max(numbers) if maximize else min(numbers))[1]


def experiments_compare(*, experiments: list[Experiment], holdout: bool = True) -> dict:
    """Side-by-side rows for experiments of one domain: `metrics` (each metric on validation and,
    when `holdout`, on holdout; CV and seed spread where recorded), `variables` (flattened, union
    of names), `facts` (state, run, parent, seed, seconds). Each row says whether the values
    differ and, for metrics, which is best. Plain data: the page, the CLI and --json share it."""
    task = experiments[0].domain.task_or_none if experiments else None
    metrics: list[str] = []
    for exp in experiments:
        for key in list(exp.metrics or {}) + (list(exp.holdout_metrics or {}) if holdout else []):
            if key not in metrics:
                metrics.append(key)
    if task is not None and task.primary_metric in metrics:
        metrics.remove(task.primary_metric)
        metrics.insert(0, task.primary_metric)
    metric_rows = []
    for metric in metrics:
        maximize = _maximize(task, metric)
        parts = [("validation", "metrics")] + ([("holdout", "holdout_metrics")] if holdout else [])
        for part, attr in parts:
            values = [(getattr(e, attr) or {}).get(metric) for e in experiments]
            metric_rows.append(CompareRow(f"{metric} ({part})", values, _differs(values), _best_index(values, maximize)))
    for attr, label, maximize in (("cv_value", "CV", _maximize(task)), ("seed_spread", "seed spread", False)):
        values = [getattr(e, attr, None) for e in experiments]
        if any(v is not None for v in values):
            metric_rows.append(CompareRow(label, values, _differs(values), _best_index(values, maximize)))
    flat = [flat_variables(e.variables) for e in experiments]
    names: list[str] = []
    for variables in flat:
        for name in variables:
            if name not in names:
                names.append(name)
    variable_rows = []
    for name in names:
        values = [v.get(name) for v in flat]
        variable_rows.append(CompareRow(name, values, _differs(values), kind="variable"))
    fact_rows = []
    for label, getter in (
        ("state", lambda e: e.state), ("run", lambda e: e.run_id), ("parent", lambda e: e.parent_id),
        ("seed", lambda e: e.seed), ("train seconds", lambda e: e.train_seconds),
        ("code sha256", lambda e: e.code_sha256[:12]), ("hypothesis", lambda e: e.hypothesis),
    ):
        values = [getter(e) for e in experiments]
        fact_rows.append(CompareRow(label, values, _differs(values), kind="fact"))
    return {
        "ids": [e.pk for e in experiments],
        "primary_metric": task.primary_metric if task else None,
        "direction": task.direction if task else None,
        "metrics": metric_rows, "variables": variable_rows, "facts": fact_rows,
    }


def compare_as_json(data: dict) -> dict:
    def rows(items: list[CompareRow]) -> list[dict]:
        return [{"label": r.label, "values": r.values, "differs": r.differs, "best_index": r.best} for r in items]

    return {**data, "metrics": rows(data["metrics"]), "variables": rows(data["variables"]), "facts": rows(data["facts"])}


def code_diff(a: Experiment, b: Experiment) -> list[tuple[str, str]]:
    """A unified diff of a's train code → b's, as (kind, line) with kind add/del/hunk/""."""
    lines = difflib.unified_diff(a.train_code.splitlines(), b.train_code.splitlines(),
                                 fromfile=f"#{a.pk}", tofile=f"#{b.pk}", lineterm="")
    out = []
    for line in lines:
        if line.startswith(("+++", "---")):
            kind = "file"
        elif line.startswith("+"):
            kind = "add"
        elif line.startswith("-"):
            kind = "del"
        elif line.startswith("@@"):
            kind = "hunk"
        else:
            kind = ""
        out.append((kind, line))
    return out


def parallel_data(*, domain: Domain, run: int | None = None, limit: int = 2_000) -> dict:
    """Parallel-coordinates data for a domain (or one run): numeric params plus the primary
    metric of its best `limit` completed experiments by rank value (beyond a few thousand lines
    the picture is a solid band, and each line costs a JSON parse). Params with one value
    everywhere carry no signal and are left out; at most 12 dimensions, the params most often
    set first. `total` says how many there were."""
    task = domain.task_or_none
    qs = Experiment.objects.filter(domain=domain, state=Experiment.State.COMPLETED, primary_value__isnull=False)
    qs = qs.filter(reproduction_of__isnull=True)
    if run is not None:
        qs = qs.filter(run_id=run)
    total = qs.count()
    order = F("rank_value").desc(nulls_last=True) if _maximize(task) else F("rank_value").asc(nulls_last=True)
    rows = list(qs.order_by(order, "id").values_list("id", "variables", "primary_value")[:limit])
    counts: dict[str, int] = {}
    flats = []
    for _, variables, _ in rows:
        flat = {k: v for k, v in flat_variables(variables).items()
                if isinstance(v, int | float) and not isinstance(v, bool) and math.isfinite(v)}
        flats.append(flat)
        for name in flat:
            counts[name] = counts.get(name, 0) + 1
    names = [n for n in sorted(counts, key=lambda n: (-counts[n], n))
             if len({f.get(n) for f in flats if n in f}) > 1][:12]
    return {
        "metric": task.primary_metric if task else "primary",
        "maximize": _maximize(task),
        "ids": [r[0] for r in rows],
        "values": [r[2] for r in rows],
        "total": total,
        "params": {name: [f.get(name) for f in flats] for name in names},
    }


# --- Lineage ----------------------------------------------------------------------------------

MAX_DEPTH = 1000


def experiment_lineage(*, experiment: Experiment, children_limit: int = 100) -> dict:
    """`path`: the experiments from the root to this one's parent (root first); `children`: its
    direct children (newest first, at most `children_limit`), `children_count`; `reproductions`:
    the experiments that reproduce it. Cycle-safe (a corrupted parent chain stops)."""
    path: list[Experiment] = []
    seen = {experiment.pk}
    parent_id = experiment.parent_id
    while parent_id is not None and parent_id not in seen and len(path) < MAX_DEPTH:
        parent = Experiment.objects.only("id", "parent_id", "state", "hypothesis", "primary_value").filter(pk=parent_id).first()
        if parent is None:
            break
        seen.add(parent.pk)
        path.append(parent)
        parent_id = parent.parent_id
    path.reverse()
    children = Experiment.objects.filter(parent=experiment, reproduction_of__isnull=True).only(
        "id", "state", "hypothesis", "primary_value", "created_at"
    )
    reproductions = list(Experiment.objects.filter(reproduction_of=experiment).order_by("-id")
                         .only("id", "state", "primary_value", "holdout_primary_value", "metrics",
                               "holdout_metrics", "created_at"))
    return {
        "path": path,
        "children": list(children.order_by("-id")[:children_limit]),
        "children_count": children.count(),
        "reproductions": reproductions,
    }


@dataclass(slots=True)
class Node:
    id: int
    state: str
    value: float | None
    hypothesis: str = ""
    children: list[Node] = field(default_factory=list)
    size: int = 1  # nodes in this subtree
    on_best_path: bool = False
    is_best: bool = False
    hidden_children: int = 0


@dataclass
class Forest:
    roots: list[Node]  # best path's root first, then newest first
    nodes: dict[int, Node]
    count: int


def lineage_forest(*, domain: Domain, best_id: int | None = None) -> Forest:
    """The domain's experiments as a forest by parent (reproductions and archived ones left out),
    read from the `exp_tree_idx` index alone. The path from a root to `best_id` is marked
    `on_best_path` (and sorts first among siblings); `size` counts each subtree. Hypotheses are
    not loaded: `lineage_rows` fills them in for the nodes a page shows."""
    qs = (Experiment.objects.filter(domain=domain, reproduction_of__isnull=True)
          .exclude(state=Experiment.State.ARCHIVED))
    nodes: dict[int, Node] = {}
    parents: dict[int, int | None] = {}
    # order_by(): the model's default ordering (-created_at) would pull in another index and
    # every table row; the tree needs no order from the database.
    for pk, parent_id, state, value in qs.order_by().values_list("id", "parent_id", "state", "primary_value"):
        nodes[pk] = Node(pk, state, value)
        parents[pk] = parent_id
    roots: list[Node] = []
    for pk, node in nodes.items():
        parent_id = parents[pk]
        if parent_id is not None and parent_id in nodes and parent_id != pk:
            nodes[parent_id].children.append(node)
        else:
            roots.append(node)
    # Subtree sizes, children first: a child is newer (larger id) than its parent; a hand-edited
    # cycle (which that rule excludes) only makes a size too small, never loops.
    for pk in sorted(nodes, reverse=True):
        node = nodes[pk]
        if node.children:
            node.size = 1 + sum(c.size for c in node.children if c.id > node.id)
    if best_id in nodes:
        nodes[best_id].is_best = True
        seen: set[int] = set()
        current: int | None = best_id
        while current is not None and current in nodes and current not in seen:
            seen.add(current)
            nodes[current].on_best_path = True
            current = parents.get(current)
    roots.sort(key=lambda r: (not r.on_best_path, -r.id))
    return Forest(roots=roots, nodes=nodes, count=len(nodes))


def lineage_children(children: list[Node], limit: int) -> list[Node]:
    return sorted(children, key=lambda c: (not c.on_best_path, -c.id))[:limit]


def lineage_rows(nodes: list[Node], *, children_limit: int = 200) -> list[tuple[str, Node]]:
    """What a page renders of these subtrees, flattened in document order: ("leaf", node),
    ("open", node) … ("close", node) around the children of a node on the best path (open), and
    ("open", node), ("close", node) for any other node with children (they load when opened).
    At most `children_limit` children per node (the rest counted in `hidden_children`). Fills in
    the hypotheses of exactly the nodes shown, in one query."""
    rows: list[tuple[str, Node]] = []
    stack: list[tuple[str, Node]] = [("visit", n) for n in reversed(nodes)]
    while stack:
        action, node = stack.pop()
        if action == "close":
            rows.append(("close", node))
        elif not node.children:
            rows.append(("leaf", node))
        else:
            rows.append(("open", node))
            stack.append(("close", node))
            if node.on_best_path:
                shown = lineage_children(node.children, children_limit)
                node.hidden_children = len(node.children) - len(shown)
                stack.extend(("visit", c) for c in reversed(shown))
    hypotheses = dict(Experiment.objects.filter(pk__in=[n.id for kind, n in rows if kind != "close"])
                      .values_list("id", "hypothesis"))
    for kind, node in rows:
        if kind != "close":
            node.hypothesis = (hypotheses.get(node.id) or "")[:120]
    return rows


def best_experiment_for(domain: Domain) -> Experiment | None:
    """The domain's best experiment per experiments.ranking (the one definition of best)."""
    from experiments.ranking import best_experiment

    return best_experiment(domain)


# --- Charts -----------------------------------------------------------------------------------


def history_data(*, domain: Domain, run: int | None = None) -> dict:
    """Every completed, scored experiment of the domain (or run) in creation order, as compact
    parallel arrays: ids, validation, holdout (null where absent) and the best-so-far validation.
    The page draws all of them; 10,000 points are ~250 KB of JSON."""
    task = domain.task_or_none
    maximize = _maximize(task)
    qs = Experiment.objects.filter(domain=domain, state=Experiment.State.COMPLETED, primary_value__isnull=False)
    qs = qs.filter(reproduction_of__isnull=True)
    if run is not None:
        qs = qs.filter(run_id=run)
    ids, validation, holdout, best = [], [], [], []
    current: float | None = None
    for pk, value, hold in qs.order_by("created_at", "id").values_list("id", "primary_value", "holdout_primary_value"):
        if not math.isfinite(value):
            continue
        ids.append(pk)
        validation.append(value)
        holdout.append(hold if hold is not None and math.isfinite(hold) else None)
        if current is None or (value > current if maximize else value < current):
            current = value
        best.append(current)
    return {
        "metric": task.primary_metric if task else "primary",
        "direction": task.direction if task else "minimize",
        "ids": ids, "validation": validation, "holdout": holdout, "best": best,
    }
