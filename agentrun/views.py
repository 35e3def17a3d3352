"""Pages of agent runs: the list, a domain's runs with the start form, and the live run page."""

from django.contrib import messages
from django.contrib.auth.decorators import login_required
from django.core.paginator import Paginator
from django.db.models import Count, Q, QuerySet
from django.http import HttpRequest, HttpResponse
from django.shortcuts import get_object_or_404, redirect, render
from django.views.decorators.http import require_POST

from agentrun.forms import RunStartForm
from agentrun.models import AgentEvent, AgentRun
from agentrun.services import run_start, run_stop_request
from dojo_site.errors import DojoError
from domains.models import Domain
from domains.permissions import domain_may, domains_for_user, web_domain_get, web_domain_require

# Events per poll response and on the first render of the live page.
POLL_EVENTS = 200
PAGE_EVENTS = 500


def _runs_with_counts() -> QuerySet[AgentRun]:
    return AgentRun.objects.select_related("domain").annotate(
        n_experiments=Count("experiments"),
        n_completed=Count("experiments", filter=Q(experiments__state="completed")),
    )


def _get_run(request: HttpRequest, pk: int, action: str = "view") -> AgentRun:
    """The run when the user may see its domain (else 404); `action` on it checked too (else 403)."""
    run = get_object_or_404(_runs_with_counts(), pk=pk)
    web_domain_require(request.user, run.domain, action)
    return run


@login_required
def run_list(request: HttpRequest) -> HttpResponse:
    runs = _runs_with_counts().filter(domain__in=domains_for_user(request.user))
    page = Paginator(runs.order_by("-created_at", "-pk"), 50).get_page(request.GET.get("page"))
    return render(request, "agentrun/run_list.html", {"page": page, "runs": page.object_list})


def _domain_runs_context(request: HttpRequest, domain: Domain, form: RunStartForm) -> dict:
    task = domain.task_or_none
    return {
        "domain": domain,
        "form": form,
        "may_edit": domain_may(request.user, domain, "edit"),
        "task": task,
        "runs": _runs_with_counts().filter(domain=domain).order_by("-created_at", "-pk")[:30],
    }


@login_required
def run_domain_list(request: HttpRequest, domain_id: int) -> HttpResponse:
    domain = web_domain_get(request.user, domain_id)
    context = _domain_runs_context(request, domain, RunStartForm())
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
    return {
        "run": run,
        "best_id": best_id,
        "best_value": best_value,
        "primary_metric": task.primary_metric if task else "",
        "direction": task.direction if task else "",
    }


@login_required
def run_detail(request: HttpRequest, pk: int) -> HttpResponse:
    run = _get_run(request, pk)
    total = run.events.count()
    events = list(run.events.order_by("-seq")[:PAGE_EVENTS])[::-1]
    context = {
        **_status_context(run),
        "events": events,
        "hidden_events": max(0, total - len(events)),
        "cursor": events[-1].seq if events else 0,
        "more": False,
    }
    return render(request, "agentrun/run_detail.html", context)


@login_required
def run_poll(request: HttpRequest, pk: int) -> HttpResponse:
    """The live page's poll: new events after ?after=SEQ, the status, and the poller itself —
    rendered without hx-trigger once the run is terminal and every event is out, which ends polling."""
    # The run is read before its events: a terminal status is committed with `finalized`,
    # so a terminal run read here has all its events visible below.
    run = _get_run(request, pk)
    try:
        after = max(0, int(request.GET.get("after", 0)))
    except ValueError:
        after = 0
    events = list(run.events.filter(seq__gt=after).order_by("seq")[:POLL_EVENTS])
    context = {
        **_status_context(run),
        "events": events,
        "cursor": events[-1].seq if events else after,
        "more": len(events) == POLL_EVENTS,
    }
    return render(request, "agentrun/partials/run_poll.html", context)


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
