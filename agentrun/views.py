"""Pages of agent runs: the list, a domain's runs with the start form, and the live run page."""


from django.contrib import messages
from django.contrib.auth.decorators import login_required
from django.core.paginator import Paginator
from django.db.models import (
    Case,
    Count,
    F,
    IntegerField,
    Max,
    Min,
    OuterRef,
    Q,
    QuerySet,
    Subquery,
    Value,
    When,
)
from django.http import HttpRequest, HttpResponse, JsonResponse
from django.shortcuts import get_object_or_404, redirect, render
from django.utils import timezone
from django.views.decorators.http import require_POST

from agentrun.forms import RunStartForm
from agentrun.models import AgentEvent, AgentRun
from agentrun.services import run_start, run_stop_request
from dojo_site.errors import DojoError
from domains.models import Domain
from domains.permissions import (
    domain_may,
    domains_for_user,
    holdout_visible,
    web_domain_get,
    web_domain_require,
)
from experiments.models import Experiment
from experiments.ranking import ranked_filter

# Events per poll response, on the first render of the live page and per "earlier" click.
POLL_EVENTS = 200
PAGE_EVENTS = 100
RUNS_PAGE = 25
# The live page's event filter: a name in the URL (?show=) → the event types it keeps.
EVENT_FILTERS = {
    "all": None,
    "experiments": [AgentEvent.Type.EXPERIMENT],
    "knowledge": [AgentEvent.Type.KNOWLEDGE],
    "errors": [AgentEvent.Type.ERROR],
    "agent": [AgentEvent.Type.TEXT, AgentEvent.Type.RESULT],
    "tools": [AgentEvent.Type.TOOL_CALL, AgentEvent.Type.TOOL_RESULT],
}


def _with_counts(runs: list[AgentRun]) -> list[AgentRun]:
    """Set n_experiments / n_completed / n_failed / n_stopped / n_running on each run, from one
    grouped query over these runs only (the (run, state) index), not a join over every run."""
    counts: dict[tuple[int, str], int] = {}
    rows = Experiment.objects.filter(run_id__in=[r.pk for r in runs]).values("run_id", "state").annotate(n=Count("pk"))
    for row in rows.order_by():
        counts[(row["run_id"], row["state"])] = row["n"]
    for run in runs:
        by_state = {state: counts.get((run.pk, state), 0) for state in Experiment.State.values}
        run.n_experiments = sum(by_state.values())
        # Stopped experiments were ended by a person: counted apart, never as failures.
        run.n_completed = by_state[Experiment.State.COMPLETED]
        run.n_failed = by_state[Experiment.State.FAILED]
        run.n_stopped = by_state[Experiment.State.STOPPED]
        run.n_running = by_state[Experiment.State.RUNNING] + by_state[Experiment.State.PENDING]
    return runs


def _get_run(request: HttpRequest, pk: int, action: str = "view") -> AgentRun:
    """The run when the user may see its domain (else 404); `action` on it checked too (else 403)."""
    run = get_object_or_404(AgentRun.objects.select_related("domain", "domain__task"), pk=pk)
    _with_counts([run])
    web_domain_require(request.user, run.domain, action)
    return run


@login_required
def run_list(request: HttpRequest) -> HttpResponse:
    runs = AgentRun.objects.select_related("domain").filter(domain__in=domains_for_user(request.user))
    page = Paginator(runs.order_by("-created_at", "-pk"), 50).get_page(request.GET.get("page"))
    return render(request, "agentrun/run_list.html", {"page": page, "runs": _with_counts(list(page.object_list))})


def _domain_runs_context(request: HttpRequest, domain: Domain, form: RunStartForm, page: str | None = None) -> dict:
    task = domain.task_or_none
    runs = Paginator(domain.runs.order_by("-created_at", "-pk"), RUNS_PAGE).get_page(page)
    return {
        "domain": domain,
        "form": form,
        "may_edit": domain_may(request.user, domain, "edit"),
        "task": task,
        "page": runs,
        "runs": _with_counts(list(runs.object_list)),
    }


@login_required
def run_domain_list(request: HttpRequest, domain_id: int) -> HttpResponse:
    domain = web_domain_get(request.user, domain_id)
    context = _domain_runs_context(request, domain, RunStartForm(), request.GET.get("page"))
    # The domain page's Runs tab loads the fragment; a plain visit gets the whole page.
    template = "agentrun/partials/domain_runs.html" if request.htmx else "agentrun/domain_runs.html"
    return render(request, template, context)


@login_required
@require_POST
def run_start_view(request: HttpRequest, domain_id: int) -> HttpResponse:
    domain = web_domain_get(request.user, domain_id, "edit")
    form = RunStartForm(request.POST)
    if form.is_valid():
        try:
            run = run_start(domain=domain, **form.cleaned_data, created_by=request.user)
        except DojoError as exc:
            form.add_error(None, str(exc))
        else:
            messages.success(request, f"Run {run.pk} queued: a worker (manage.py qcluster) picks it up.")
            return redirect(run)
    return render(request, "agentrun/domain_runs.html", _domain_runs_context(request, domain, form), status=422)


def _status_context(run: AgentRun) -> dict:
    """The status panel: the run, and its best experiment so far (id, validation value)."""
    if run.is_terminal:
        best_id, best_value = run.result.get("best_experiment_id"), run.result.get("best_value")
    else:
        # Live: the last experiment event knows the best so far.
        event = run.events.filter(type=AgentEvent.Type.EXPERIMENT).exclude(data__best_value=None).order_by("-seq").first()
        best_id, best_value = (event.data.get("best_experiment_id"), event.data.get("best_value")) if event else (None, None)
    task = run.domain.task_or_none
    # The audit's view of this run (experiments/quarantine.py): probes flagged, experiments held back.
    audit = Experiment.objects.filter(run=run).aggregate(
        probes=Count("pk", filter=Q(probe_of__isnull=False)),
        quarantined=Count("pk", filter=Q(quarantine_state="quarantined")),
    )
    return {
        "run": run,
        "probes": audit["probes"],
        "quarantined": audit["quarantined"],
        "best_id": best_id,
        "best_value": best_value,
        "primary_metric": task.primary_metric if task else "",
        "direction": task.direction if task else "",
    }


def _event_filter(request: HttpRequest) -> str:
    show = request.GET.get("show", "all")
    return show if show in EVENT_FILTERS else "all"


def _events(run: AgentRun, show: str) -> QuerySet[AgentEvent]:
    types = EVENT_FILTERS[show]
    return run.events.filter(type__in=types) if types else run.events.all()


def _seq_param(request: HttpRequest, name: str, default: int) -> int:
    try:
        return max(0, min(int(request.GET.get(name, default)), 2**62))
    except ValueError:
        return default


def _elapsed(run: AgentRun) -> float | None:
    if run.started_at is None:
        return None
    return ((run.finished_at or timezone.now()) - run.started_at).total_seconds()


def _duration(seconds: float | None) -> str:
    if seconds is None:
        return ""
    seconds = int(seconds)
    hours, rest = divmod(seconds, 3600)
    return f"{hours}h {rest // 60:02d}m" if hours else f"{rest // 60}m {rest % 60:02d}s"


def _live_context(run: AgentRun) -> dict:
    """The status panel plus the progress figures: elapsed time, experiments of the limit, cost."""
    elapsed = _elapsed(run)
    limit_seconds = run.max_minutes * 60 if run.max_minutes else None
    return {
        **_status_context(run),
        "elapsed": _duration(elapsed),
        "time_limit": _duration(limit_seconds),
        "time_fraction": min(1.0, elapsed / limit_seconds) if elapsed is not None and limit_seconds else None,
    }


@login_required
def run_detail(request: HttpRequest, pk: int) -> HttpResponse:
    run = _get_run(request, pk)
    show = _event_filter(request)
    # Keyset, newest first, then shown oldest first: the unique (run, seq) index serves it at any size.
    events = list(_events(run, show).order_by("-seq")[:PAGE_EVENTS])[::-1]
    last_seq = run.events.order_by("-seq").values_list("seq", flat=True).first() or 0
    context = {
        **_live_context(run),
        "events": events,
        "earlier": bool(events) and _events(run, show).filter(seq__lt=events[0].seq).exists(),
        "first_seq": events[0].seq if events else 0,
        # The poll continues after the newest event of any type: a filter only hides events.
        "cursor": last_seq,
        "more": False,
        "show": show,
        "filters": list(EVENT_FILTERS),
    }
    return render(request, "agentrun/run_detail.html", context)


@login_required
def run_earlier(request: HttpRequest, pk: int) -> HttpResponse:
    """The events before ?before=SEQ (a page of them, oldest first), for "Load earlier events"."""
    run = _get_run(request, pk)
    show = _event_filter(request)
    before = _seq_param(request, "before", 0)
    events = list(_events(run, show).filter(seq__lt=before).order_by("-seq")[:PAGE_EVENTS])[::-1]
    context = {
        "run": run,
        "events": events,
        "show": show,
        "earlier": bool(events) and _events(run, show).filter(seq__lt=events[0].seq).exists(),
        "first_seq": events[0].seq if events else before,
    }
    return render(request, "agentrun/partials/run_earlier.html", context)


@login_required
def run_poll(request: HttpRequest, pk: int) -> HttpResponse:
    """The live page's poll: new events after ?after=SEQ, the status, and the poller itself —
    rendered without hx-trigger once the run is terminal and every event is out, which ends polling."""
    # The run is read before its events: a terminal status is committed with `finalized`,
    # so a terminal run read here has all its events visible below.
    run = _get_run(request, pk)
    show = _event_filter(request)
    after = _seq_param(request, "after", 0)
    scanned = list(run.events.filter(seq__gt=after).order_by("seq")[:POLL_EVENTS])
    types = EVENT_FILTERS[show]
    context = {
        **_live_context(run),
        "events": [e for e in scanned if types is None or e.type in types],
        "cursor": scanned[-1].seq if scanned else after,
        "more": len(scanned) == POLL_EVENTS,
        "show": show,
        "new_experiments": any(e.type == AgentEvent.Type.EXPERIMENT for e in scanned),
    }
    return render(request, "agentrun/partials/run_poll.html", context)


@login_required
def run_metrics(request: HttpRequest, pk: int) -> JsonResponse:
    """The run's metric over time for the live page's chart (charts.js `series`): the validation
    primary metric of each completed experiment in finishing order, and the best so far."""
    run = _get_run(request, pk)
    task = run.domain.task_or_none
    rows = list(
        run.experiments.filter(state=Experiment.State.COMPLETED, primary_value__isnull=False)
        .order_by("finished_at", "pk")
        .values_list("pk", "primary_value")
    )
    minimize = task is not None and task.direction == "minimize"
    best, best_so_far = None, []
    for _, value in rows:
        best = value if best is None or (value < best if minimize else value > best) else best
        best_so_far.append(best)
    metric = task.primary_metric if task else "primary metric"
    return JsonResponse({
        "x": list(range(1, len(rows) + 1)),
        "x_title": "completed experiment",
        "y_title": f"{metric} (validation)",
        "series": [
            {"name": metric, "y": [value for _, value in rows], "mode": "markers"},
            {"name": "best so far", "y": best_so_far, "mode": "lines"},
        ],
        "ids": [pk for pk, _ in rows],
        "url": "/experiments/{id}/",
    })


@login_required
@require_POST
def run_stop(request: HttpRequest, pk: int) -> HttpResponse:
    run = _get_run(request, pk, "edit")
    try:
        run = run_stop_request(run=run)
    except DojoError as exc:
        messages.error(request, str(exc))
    else:
        messages.success(request, f"Stop requested for run {run.pk}.")
    return redirect(run)


# --- Results of domains: the domains list's Results column and the domain overview ---------------
# These read experiments and runs, so they live in the highest app and the domains pages load them
# with htmx (docs/interfaces.md, "Web composition"). Every figure comes from a fixed number of
# aggregate queries, whatever the number of domains or experiments.

SPARK_W, SPARK_H, SPARK_POINTS = 120, 28, 40


def _best_by_domain(domains: QuerySet[Domain]) -> dict[int, Experiment]:
    """{domain id: its best experiment}, by experiments.ranking's definition, in three queries.

    Ranking orders by Coalesce(rank_value, primary_value). Ordering by that expression cannot use
    an index (a sort of every completed row per domain), so the best is the better of two
    index walks: the best by rank_value (domain, state, rank_value), and the best by validation
    among rows without a rank value (domain, state, primary_value) — asked only of domains that
    have such rows, since walking the validation index to find none reads every row. Same order,
    ties by id."""
    ranked = ranked_filter(
        Experiment.objects.filter(
            domain=OuterRef("pk"), state=Experiment.State.COMPLETED,
            task_fingerprint=OuterRef("task__fingerprint"), data_fingerprint=OuterRef("task__data_fingerprint"),
        )
    )
    by_rank = ranked.filter(rank_value__isnull=False)
    by_value = ranked.filter(rank_value__isnull=True, primary_value__isnull=False)

    def best_of(qs: QuerySet, field: str) -> Case:
        lowest = qs.order_by(F(field).asc(), "pk").values("pk")[:1]
        highest = qs.order_by(F(field).desc(), "pk").values("pk")[:1]
        return Case(When(task__direction="maximize", then=Subquery(highest)), default=Subquery(lowest))

    unranked = set(
        Experiment.objects.filter(
            domain__in=domains, state=Experiment.State.COMPLETED, rank_value__isnull=True, primary_value__isnull=False
        ).values_list("domain_id", flat=True).distinct()
    )
    rows = list(
        domains.annotate(
            a=best_of(by_rank, "rank_value"),
            b=best_of(by_value, "primary_value") if unranked else Value(None, output_field=IntegerField()),
        ).values_list("pk", "task__direction", "a", "b")
    )
    found = Experiment.objects.only(
        "pk", "domain_id", "primary_value", "holdout_primary_value", "rank_value", "hypothesis"
    ).in_bulk([pk for row in rows for pk in row[2:] if pk])
    best: dict[int, Experiment] = {}
    for domain_id, direction, *candidates in rows:
        options = [found[pk] for pk in candidates if pk in found]
        if not options:
            continue
        sign = -1 if direction == "maximize" else 1

        def key(exp: Experiment, sign: int = sign) -> tuple[float, int]:
            value = exp.rank_value if exp.rank_value is not None else exp.primary_value
            return (sign * value, exp.pk)

        best[domain_id] = min(options, key=key)
    return best


def _sparkline(points: list[float], *, maximize: bool) -> str:
    """SVG polyline points of the best-so-far series, scaled into SPARK_W × SPARK_H ("" if < 2)."""
    if len(points) < 2:
        return ""
    best, series = None, []
    for value in points:
        best = value if best is None or (value > best if maximize else value < best) else best
        series.append(best)
    lo, hi = min(series), max(series)
    span = (hi - lo) or 1.0
    step = SPARK_W / (len(series) - 1)
    # Up is better on the picture, whatever the metric's direction.
    ys = [(hi - v) / span if maximize else (v - lo) / span for v in series]
    return " ".join(f"{i * step:.1f},{2 + y * (SPARK_H - 4):.1f}" for i, y in enumerate(ys))


def _domain_results(request: HttpRequest, domains: QuerySet[Domain]) -> list[dict]:
    """One dict per domain: best (with holdout when the user may see it), experiment and run counts,
    the active run with its progress, the last activity and a best-so-far sparkline."""
    domains = domains.select_related("task").annotate(
        n_experiments=Subquery(
            Experiment.objects.filter(domain=OuterRef("pk")).values("domain").annotate(n=Count("pk")).values("n")
        ),
        last_experiment=Subquery(
            Experiment.objects.filter(domain=OuterRef("pk")).order_by("-created_at").values("created_at")[:1]
        ),
        n_runs=Subquery(AgentRun.objects.filter(domain=OuterRef("pk")).values("domain").annotate(n=Count("pk")).values("n")),
        last_run=Subquery(AgentRun.objects.filter(domain=OuterRef("pk")).order_by("-created_at").values("created_at")[:1]),
    )
    domains = list(domains)
    ids = [d.pk for d in domains]
    best = _best_by_domain(Domain.objects.filter(pk__in=ids))
    active: dict[int, AgentRun] = {}
    live = AgentRun.objects.filter(domain_id__in=ids, status__in=[AgentRun.Status.RUNNING, AgentRun.Status.QUEUED])
    for run in live.order_by("created_at"):
        active.setdefault(run.domain_id, run)
    _with_counts(list(active.values()))
    # The trend: best so far over SPARK_POINTS buckets of experiment ids (ids grow with time).
    # Integer arithmetic in SQL, so it stays one index-backed aggregate at any size.
    completed = Experiment.objects.filter(domain_id__in=ids, state=Experiment.State.COMPLETED).exclude(primary_value=None)
    bounds = completed.aggregate(first=Min("pk"), last=Max("pk"))
    daily: dict[int, list[tuple]] = {}
    if bounds["first"] is not None:
        width = (bounds["last"] - bounds["first"]) // SPARK_POINTS + 1
        rows = (
            completed.annotate(bucket=(F("pk") - bounds["first"]) / width)
            .values("domain_id", "bucket")
            .annotate(lo=Min("primary_value"), hi=Max("primary_value"))
            .order_by("domain_id", "bucket")
        )
        for row in rows:
            daily.setdefault(row["domain_id"], []).append((row["lo"], row["hi"]))
    results = []
    for domain in domains:
        task = domain.task_or_none
        maximize = task is not None and task.direction == "maximize"
        days = daily.get(domain.pk, [])
        last = max((t for t in (domain.last_experiment, domain.last_run) if t), default=None)
        results.append({
            "domain": domain,
            "task": task,
            "best": best.get(domain.pk),
            "show_holdout": not domain.hide_holdout_from_viewers or holdout_visible(request.user, domain),
            "n_experiments": domain.n_experiments or 0,
            "n_runs": domain.n_runs or 0,
            "active": active.get(domain.pk),
            "last_activity": last,
            "spark": _sparkline([hi if maximize else lo for lo, hi in days], maximize=maximize),
        })
    return results


@login_required
def domains_results(request: HttpRequest) -> HttpResponse:
    """The domains list's Results cells, swapped in out of band (one request for the whole list)."""
    results = _domain_results(request, domains_for_user(request.user))
    return render(request, "agentrun/partials/domains_results.html", {"results": results, "w": SPARK_W, "h": SPARK_H})


@login_required
def domain_results(request: HttpRequest, domain_id: int) -> HttpResponse:
    """The domain overview's Results card."""
    domain = web_domain_get(request.user, domain_id)
    (result,) = _domain_results(request, Domain.objects.filter(pk=domain.pk))
    return render(request, "agentrun/partials/domain_results.html", {"r": result, "w": SPARK_W, "h": SPARK_H})
