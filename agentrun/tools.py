"""The agent tool surface: the only way a backend touches the lab.

Every tool is scoped to the run's domain, validates its arguments against a JSON schema and
returns a dict — `{"ok": True, ...}` or `{"ok": False, "error": "..."}` — never an exception, so
an agent always gets something it can read and act on. Results are capped: a tool result never
carries megabytes (dojoml returned 5 MB of stdout in one result, reference §8).
"""

from __future__ import annotations

import json
import logging
import math
from collections.abc import Callable
from typing import Any, TypedDict

from django.conf import settings
from django.db import transaction
from django.db.models import Q
from django.utils import timezone
from jsonschema import Draft202012Validator
from jsonschema.exceptions import best_match

from agentrun.models import AgentRun
from dojo_site.errors import DojoError
from domains.permissions import domain_require
from experiments.models import Experiment
from knowledge.models import KnowledgeAtom

logger = logging.getLogger(__name__)

# A whole result, serialized, stays under this many characters; one string field under the next.
MAX_RESULT_CHARS = 16_000
MAX_FIELD_CHARS = 4_000
MAX_LIST_ITEMS = 100
# Intermediate values an agent may log on one experiment.
MAX_LOGGED_METRIC_ENTRIES = 1_000
MAX_LOGGED_PARAMS_CHARS = 20_000


class ToolSpec(TypedDict):
    description: str
    input_schema: dict[str, Any]


_ID = {"type": "integer", "minimum": 1}

TOOL_SPECS: dict[str, ToolSpec] = {
    "run_experiment": {
        "description": (
            "Run one experiment: your train code against the frozen task. The framework loads the "
            "data, runs train() in a sandbox, scores the predictions with the frozen evaluator and "
            "returns the validation metrics. The code must define "
            "train(X_train, y_train, X_test, *, artifacts_dir) -> y_pred."
        ),
        "input_schema": {
            "type": "object",
            "properties": {
                "code": {
                    "type": "string",
                    "minLength": 1,
                    "maxLength": 200_000,
                    "description": "A Python module defining train(X_train, y_train, X_test, *, artifacts_dir).",
                },
                "hypothesis": {
                    "type": "string",
                    "maxLength": 2_000,
                    "description": "What this experiment tests, in one or two sentences.",
                },
                "variables": {
                    "type": "object",
                    "description": "The knobs this experiment sets (model family, hyper-parameters, ...).",
                },
                "parent_id": {**_ID, "description": "The experiment this one refines."},
                "seed": {"type": "integer", "description": "Random seed (DOJO_SEED in the trainer)."},
            },
            "required": ["code", "hypothesis"],
            "additionalProperties": False,
        },
    },
    "get_experiment": {
        "description": "Show one experiment of this domain: code, metrics, error and log tails.",
        "input_schema": {
            "type": "object",
            "properties": {"experiment_id": _ID},
            "required": ["experiment_id"],
            "additionalProperties": False,
        },
    },
    "list_experiments": {
        "description": "List this domain's experiments, best first (or most recent first).",
        "input_schema": {
            "type": "object",
            "properties": {
                "state": {"type": "string", "enum": ["pending", "running", "completed", "failed", "stopped"]},
                "sort": {"type": "string", "enum": ["best", "recent"], "default": "best"},
                "limit": {"type": "integer", "minimum": 1, "maximum": 50, "default": 20},
            },
            "additionalProperties": False,
        },
    },
    "compare_experiments": {
        "description": "Compare experiments of this domain side by side (metrics, variables, parent).",
        "input_schema": {
            "type": "object",
            "properties": {
                "experiment_ids": {"type": "array", "items": _ID, "minItems": 1, "maxItems": 20},
            },
            "required": ["experiment_ids"],
            "additionalProperties": False,
        },
    },
    "write_knowledge": {
        "description": (
            "Record a durable finding for later runs: when it applies (context), what was found "
            "(claim), what to do about it (action), and the experiments that support or contradict it."
        ),
        "input_schema": {
            "type": "object",
            "properties": {
                "context": {"type": "string", "minLength": 1, "maxLength": 2_000},
                "claim": {"type": "string", "minLength": 1, "maxLength": 2_000},
                "action": {"type": "string", "maxLength": 2_000},
                "confidence": {"type": "number", "minimum": 0, "maximum": 1},
                "evidence": {
                    "type": "array",
                    "maxItems": 50,
                    "items": {
                        "type": "object",
                        "properties": {
                            "experiment_id": _ID,
                            "stance": {"type": "string", "enum": ["supports", "contradicts"]},
                        },
                        "required": ["experiment_id"],
                        "additionalProperties": False,
                    },
                },
            },
            "required": ["context", "claim"],
            "additionalProperties": False,
        },
    },
    "search_knowledge": {
        "description": "Search this domain's knowledge atoms, best match first.",
        "input_schema": {
            "type": "object",
            "properties": {
                "query": {"type": "string", "minLength": 1, "maxLength": 1_000},
                "limit": {"type": "integer", "minimum": 1, "maximum": 30, "default": 10},
            },
            "required": ["query"],
            "additionalProperties": False,
        },
    },
    "list_knowledge": {
        "description": "List the active knowledge atoms of this domain (and global ones), most confident first.",
        "input_schema": {
            "type": "object",
            "properties": {"limit": {"type": "integer", "minimum": 1, "maximum": 50, "default": 30}},
            "additionalProperties": False,
        },
    },
    "log_metrics": {
        "description": (
            "Log intermediate values (e.g. a training curve) on an experiment. They are kept apart "
            "from the scored metrics and never change them."
        ),
        "input_schema": {
            "type": "object",
            "properties": {
                "experiment_id": _ID,
                "metrics": {
                    "type": "object",
                    "minProperties": 1,
                    "maxProperties": 50,
                    "additionalProperties": {"type": "number"},
                },
                "step": {"type": "integer", "minimum": 0},
            },
            "required": ["experiment_id", "metrics"],
            "additionalProperties": False,
        },
    },
    "log_params": {
        "description": "Attach parameters (names to values) to an experiment, for the record.",
        "input_schema": {
            "type": "object",
            "properties": {
                "experiment_id": _ID,
                "params": {"type": "object", "minProperties": 1, "maxProperties": 50},
            },
            "required": ["experiment_id", "params"],
            "additionalProperties": False,
        },
    },
}

_VALIDATORS = {name: Draft202012Validator(spec["input_schema"]) for name, spec in TOOL_SPECS.items()}


# A run acts with its creator's rights, checked at every call (a member removed mid-run stops
# writing at once): tools that change the lab need "edit", the others "view".
_WRITING_TOOLS = frozenset({"run_experiment", "write_knowledge", "log_metrics", "log_params"})


class ToolError(Exception):
    """A bad call the agent can fix; becomes {"ok": False, "error": message}."""


def tool_call(
    *,
    run: AgentRun,
    name: str,
    arguments: dict[str, Any] | None,
    should_stop: Callable[[], bool] | None = None,
) -> dict[str, Any]:
    """Run one tool for `run` and return its (capped) result. Never raises.

    `should_stop` is handed to experiment_run so a stop request kills a running trainer.
    """
    handler = _HANDLERS.get(name)
    if handler is None:
        return {"ok": False, "error": f"unknown tool {name!r}; tools: {', '.join(TOOL_SPECS)}"}
    if arguments is None:
        arguments = {}
    if not isinstance(arguments, dict):
        return {"ok": False, "error": f"{name}: arguments must be a JSON object"}
    error = best_match(_VALIDATORS[name].iter_errors(arguments))
    if error is not None:
        where = ".".join(str(p) for p in error.absolute_path)
        return {"ok": False, "error": f"{name}: invalid arguments: {where + ': ' if where else ''}{error.message}"}
    try:
        if run.created_by_id is not None:  # None: started by a management command (administrator)
            domain_require(run.created_by, run.domain, "edit" if name in _WRITING_TOOLS else "view")
        result = handler(run, arguments, should_stop)
    except ToolError as exc:
        return {"ok": False, "error": f"{name}: {exc}"}
    except DojoError as exc:
        return {"ok": False, "error": f"{name}: {exc}"}
    except Exception as exc:  # the agent gets an error result and the run goes on
        logger.warning("tool %s failed for run %s: %r", name, run.pk, exc, exc_info=logger.isEnabledFor(logging.INFO))
        return {"ok": False, "error": f"{name} failed: {type(exc).__name__}: {str(exc)[:500]}"}
    return result_cap({"ok": True, **result})


# --- capping and JSON hygiene ---------------------------------------------------------------


def jsonable(value: Any, *, max_chars: int = MAX_FIELD_CHARS, max_items: int = MAX_LIST_ITEMS) -> Any:
    """A JSON-safe copy: NaN/inf become None, long strings and lists are cut (and say so)."""
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if value is None or isinstance(value, bool | int):
        return value
    if isinstance(value, str):
        if len(value) > max_chars:
            return value[:max_chars] + f"… [{len(value) - max_chars} more characters cut]"
        return value
    if isinstance(value, dict):
        items = list(value.items())
        out = {str(k): jsonable(v, max_chars=max_chars, max_items=max_items) for k, v in items[:max_items]}
        if len(items) > max_items:
            out["…"] = f"{len(items) - max_items} more keys cut"
        return out
    if isinstance(value, list | tuple):
        out_list = [jsonable(v, max_chars=max_chars, max_items=max_items) for v in value[:max_items]]
        if len(value) > max_items:
            out_list.append(f"… {len(value) - max_items} more items cut")
        return out_list
    if hasattr(value, "item"):  # numpy scalars
        return jsonable(value.item(), max_chars=max_chars, max_items=max_items)
    return jsonable(str(value), max_chars=max_chars, max_items=max_items)


def result_cap(result: dict[str, Any], *, limit: int = MAX_RESULT_CHARS) -> dict[str, Any]:
    """Shrink a result until its JSON fits in `limit` characters."""
    for max_chars, max_items in ((MAX_FIELD_CHARS, MAX_LIST_ITEMS), (1_000, 30), (200, 10)):
        capped = jsonable(result, max_chars=max_chars, max_items=max_items)
        if len(json.dumps(capped)) <= limit:
            return capped
    return {
        "ok": result.get("ok", False),
        "error": "result too large to return; ask for less (e.g. a smaller limit)",
        "truncated": True,
    }


# --- lookups scoped to the run's domain -----------------------------------------------------


def _experiment_for_run(run: AgentRun, experiment_id: int) -> Experiment:
    experiment = Experiment.objects.filter(pk=experiment_id).first()
    if experiment is None:
        raise ToolError(f"experiment {experiment_id} does not exist")
    if experiment.domain_id != run.domain_id:
        raise ToolError(
            f"experiment {experiment_id} belongs to another domain; this run works on domain "
            f"{run.domain.name!r} only"
        )
    return experiment


def _primary(run: AgentRun) -> tuple[str, str]:
    task = run.domain.task
    return task.primary_metric, task.direction


def _views(run: AgentRun, experiments) -> dict[int, dict]:
    """Validation scores as the task's feedback mode lets an agent see them (experiments/feedback.py)."""
    from experiments.feedback import agent_views

    return agent_views(experiments, task=run.domain.task)


def _experiment_brief(experiment: Experiment, view: dict[str, Any]) -> dict[str, Any]:
    """What an agent may see of an experiment in a list: validation feedback only, never holdout."""
    exact = view.get("feedback") == "exact"
    return {
        "experiment_id": experiment.pk,
        "state": experiment.state,
        "hypothesis": experiment.hypothesis[:300],
        "primary_value": view.get("primary_value"),
        "metrics": view.get("metrics") or {},
        "feedback": {k: v for k, v in view.items() if k not in ("primary_value", "metrics")},
        "seed_spread": experiment.seed_spread if exact else None,
        "seed_count": experiment.seed_count,
        "parent_id": experiment.parent_id,
        "run_id": experiment.run_id,
        "error": experiment.error[:300],
        "train_seconds": experiment.train_seconds,
    }


# --- handlers -------------------------------------------------------------------------------


def _run_experiment(run: AgentRun, args: dict, should_stop: Callable[[], bool] | None) -> dict:
    from experiments.services import experiment_dispatch, experiment_run

    parent = _experiment_for_run(run, args["parent_id"]) if "parent_id" in args else None
    # In this thread (one machine), or on whichever experiment worker is free (docs/cluster.md).
    run_one = experiment_dispatch if settings.DOJO_DISPATCH == "queue" else experiment_run
    experiment = run_one(
        domain=run.domain,
        train_code=args["code"],
        hypothesis=args["hypothesis"],
        variables=args.get("variables") or {},
        parent=parent,
        run=run,
        seed=args.get("seed", run.seed),
        should_stop=should_stop,
    )
    primary_metric, _ = _primary(run)
    view = _views(run, [experiment])[experiment.pk]
    return {
        "experiment_id": experiment.pk,
        "state": experiment.state,
        # Validation feedback only (exact or laddered, per the task): the holdout never reaches an agent.
        "metrics": view.get("metrics") or {},
        "primary_metric": primary_metric,
        "primary_value": view.get("primary_value"),
        "feedback": {k: v for k, v in view.items() if k not in ("primary_value", "metrics")},
        "error": experiment.error[:2_000],
        "train_seconds": experiment.train_seconds,
        "stdout_tail": experiment.stdout_tail[-1_500:],
        "stderr_tail": experiment.stderr_tail[-1_500:],
    }


def _get_experiment(run: AgentRun, args: dict, should_stop: Callable[[], bool] | None) -> dict:
    experiment = _experiment_for_run(run, args["experiment_id"])
    return {
        **_experiment_brief(experiment, _views(run, [experiment])[experiment.pk]),
        "hypothesis": experiment.hypothesis,
        "variables": experiment.variables,
        "code": experiment.train_code[:8_000],
        "error": experiment.error[:2_000],
        "stdout_tail": experiment.stdout_tail[-2_000:],
        "stderr_tail": experiment.stderr_tail[-2_000:],
        "logged_metrics": experiment.logged_metrics[-50:],
        "logged_params": experiment.logged_params,
        "seed": experiment.seed,
    }


def _list_experiments(run: AgentRun, args: dict, should_stop: Callable[[], bool] | None) -> dict:
    from domains.services import contract_current
    from experiments.feedback import agent_order, feedback_mode
    from experiments.ranking import rank_order, ranked_filter

    primary_metric, direction = _primary(run)
    # Quarantined experiments are out of every agent tool (experiments/quarantine.py).
    queryset = ranked_filter(Experiment.objects.filter(domain_id=run.domain_id).exclude(state=Experiment.State.ARCHIVED))
    if args.get("state"):
        queryset = queryset.filter(state=args["state"])
    total = queryset.count()
    if args.get("sort", "best") == "best":
        # Best first by the one meaning of "best" (experiments/ranking.py); scores from an
        # earlier contract are left out: they do not compare with these.
        queryset = rank_order(contract_current(queryset, task=run.domain.task), direction=direction)
    else:
        queryset = queryset.order_by("-created_at", "-pk")
    limit = args.get("limit", 20)
    if args.get("sort", "best") == "best" and feedback_mode(run.domain.task) != "exact":
        # Ordered by what the agent was shown, never by exact scores it was not (experiments/feedback.py).
        candidates = list(queryset[:5_000])
        views = _views(run, candidates)
        chosen = agent_order(candidates, views, task=run.domain.task)[:limit]
    else:
        chosen = list(queryset[:limit])
        views = _views(run, chosen)
    experiments = [_experiment_brief(e, views[e.pk]) for e in chosen]
    return {
        "primary_metric": primary_metric,
        "direction": direction,
        "total": total,
        "experiments": experiments,
    }


def _compare_experiments(run: AgentRun, args: dict, should_stop: Callable[[], bool] | None) -> dict:
    from experiments.feedback import agent_order, feedback_mode
    from experiments.ranking import UNRANKED_STATES, ranked_experiments

    primary_metric, direction = _primary(run)
    ids = list(dict.fromkeys(args["experiment_ids"]))
    experiments = [_experiment_for_run(run, i) for i in ids]
    experiments = [e for e in experiments if e.quarantine_state not in UNRANKED_STATES]
    views = _views(run, experiments)
    rows = [{**_experiment_brief(e, views[e.pk]), "variables": e.variables} for e in experiments]
    if feedback_mode(run.domain.task) == "exact":
        best = ranked_experiments(run.domain).filter(pk__in=[e.pk for e in experiments]).values_list("pk", flat=True).first()
    else:  # by what the agent was shown
        ordered = [e for e in agent_order(experiments, views, task=run.domain.task) if views[e.pk].get("primary_value") is not None]
        best = ordered[0].pk if ordered else None
    return {"primary_metric": primary_metric, "direction": direction, "best_id": best, "experiments": rows}


def _write_knowledge(run: AgentRun, args: dict, should_stop: Callable[[], bool] | None) -> dict:
    from knowledge.services import atom_write

    evidence = []
    for item in args.get("evidence", []):
        _experiment_for_run(run, item["experiment_id"])
        evidence.append((item["experiment_id"], item.get("stance", "supports")))
    result = atom_write(
        domain=run.domain,
        context=args["context"],
        claim=args["claim"],
        action=args.get("action", ""),
        confidence=args.get("confidence", 0.5),
        evidence=evidence,
        run=run,
    )
    atom = result.atom
    return {
        "atom_id": atom.pk,
        "outcome": result.outcome,
        "version": atom.version,
        "confidence": atom.confidence,
        "claim": atom.claim,
    }


def _atom_brief(atom: KnowledgeAtom) -> dict[str, Any]:
    return {
        "atom_id": atom.pk,
        "scope": "domain" if atom.domain_id else "global",
        "context": atom.context[:500],
        "claim": atom.claim[:500],
        "action": atom.action[:500],
        "confidence": atom.confidence,
        "version": atom.version,
    }


def _search_knowledge(run: AgentRun, args: dict, should_stop: Callable[[], bool] | None) -> dict:
    from knowledge.services import atom_search

    atoms = atom_search(query=args["query"], domain=run.domain, limit=args.get("limit", 10))
    # Scope check: whatever the search ranks, an agent sees its own domain and global atoms only.
    atoms = [a for a in atoms if a.domain_id in (None, run.domain_id)]
    return {"atoms": [_atom_brief(a) for a in atoms]}


def _list_knowledge(run: AgentRun, args: dict, should_stop: Callable[[], bool] | None) -> dict:
    atoms = KnowledgeAtom.objects.filter(
        Q(domain_id=run.domain_id) | Q(domain__isnull=True), status=KnowledgeAtom.Status.ACTIVE
    ).order_by("-confidence", "-created_at")
    total = atoms.count()
    return {"total": total, "atoms": [_atom_brief(a) for a in atoms[: args.get("limit", 30)]]}


def _log_metrics(run: AgentRun, args: dict, should_stop: Callable[[], bool] | None) -> dict:
    _experiment_for_run(run, args["experiment_id"])
    values = args["metrics"]
    bad = [k for k, v in values.items() if not math.isfinite(v)]
    if bad:
        raise ToolError(f"metric values must be finite numbers: {', '.join(bad)}")
    entry: dict[str, Any] = {"metrics": values, "at": timezone.now().isoformat(), "run_id": run.pk}
    if "step" in args:
        entry["step"] = args["step"]
    with transaction.atomic():
        # Row lock: the researcher logs from several threads; a read-modify-write must not lose one.
        experiment = Experiment.objects.select_for_update().get(pk=args["experiment_id"])
        if len(experiment.logged_metrics) >= MAX_LOGGED_METRIC_ENTRIES:
            raise ToolError(f"experiment {experiment.pk} already has {MAX_LOGGED_METRIC_ENTRIES} logged entries")
        # Only logged_metrics is written: the scored metrics, primary value and holdout stay untouched.
        Experiment.objects.filter(pk=experiment.pk).update(logged_metrics=[*experiment.logged_metrics, entry])
    return {"experiment_id": experiment.pk, "logged": len(values), "entries": len(experiment.logged_metrics) + 1}


def _log_params(run: AgentRun, args: dict, should_stop: Callable[[], bool] | None) -> dict:
    _experiment_for_run(run, args["experiment_id"])
    params = jsonable(args["params"], max_chars=1_000, max_items=50)
    with transaction.atomic():
        experiment = Experiment.objects.select_for_update().get(pk=args["experiment_id"])
        merged = {**experiment.logged_params, **params}
        if len(json.dumps(merged)) > MAX_LOGGED_PARAMS_CHARS:
            raise ToolError(f"logged params would exceed {MAX_LOGGED_PARAMS_CHARS} characters")
        Experiment.objects.filter(pk=experiment.pk).update(logged_params=merged)
    return {"experiment_id": experiment.pk, "params": sorted(merged)}


_HANDLERS: dict[str, Callable[[AgentRun, dict, Callable[[], bool] | None], dict]] = {
    "run_experiment": _run_experiment,
    "get_experiment": _get_experiment,
    "list_experiments": _list_experiments,
    "compare_experiments": _compare_experiments,
    "write_knowledge": _write_knowledge,
    "search_knowledge": _search_knowledge,
    "list_knowledge": _list_knowledge,
    "log_metrics": _log_metrics,
    "log_params": _log_params,
}
