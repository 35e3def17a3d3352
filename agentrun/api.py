"""Runs API: start, list, show, stop, events after a cursor, and an SSE stream of events."""

import json
import time
from collections.abc import Iterator
from datetime import datetime
from typing import Any, Literal

from django.conf import settings
from django.http import HttpRequest, StreamingHttpResponse
from ninja import Field, Query, Router, Schema, Status

from agentrun.models import AgentEvent, AgentRun
from agentrun.services import run_start, run_stop_request
from dojo_site.errors import NotFound
from dojo_site.schemas import DB_ID_MAX, DB_INT_MAX, Id, ListOut, Offset, Seed
from domains.permissions import domain_get_for_user, domain_may, domain_require, domains_for_user

router = Router(tags=["runs"])

RunStatus = Literal["queued", "running", "completed", "failed", "stopped"]
EVENTS_LIMIT_MAX = 1000
# The SSE stream polls the DB this often, and sends a comment line when idle this long.
STREAM_POLL_SECONDS = 0.5
STREAM_KEEPALIVE_SECONDS = 15.0


class RunIn(Schema):
    domain_id: Id
    backend: str = Field(default_factory=lambda: settings.DOJO_DEFAULT_BACKEND, description="builtin or claude")
    max_turns: int | None = Field(None, ge=1, le=DB_INT_MAX)
    max_experiments: int | None = Field(None, ge=1, le=DB_INT_MAX)
    budget_usd: float | None = Field(None, gt=0, allow_inf_nan=False)
    max_minutes: float | None = Field(None, gt=0, allow_inf_nan=False)
    prompt: str | None = Field(None, description="Used instead of PROGRAM.md for this run.")
    seed: Seed = 0


class RunOut(Schema):
    id: int
    domain_id: int
    domain: str
    backend: str
    model: str
    status: str
    error: str
    cost_usd: float
    turns: int
    max_turns: int | None
    max_experiments: int | None
    budget_usd: float | None
    max_minutes: float | None
    seed: int
    stop_requested: bool
    result: dict[str, Any]
    created_at: datetime
    started_at: datetime | None
    finished_at: datetime | None
    url: str

    @staticmethod
    def resolve_domain(obj: AgentRun) -> str:
        return obj.domain.name

    @staticmethod
    def resolve_url(obj: AgentRun) -> str:
        return obj.get_absolute_url()


class EventOut(Schema):
    seq: int
    type: str
    data: dict[str, Any]
    created_at: datetime


class EventsOut(Schema):
    run_id: int
    status: str
    terminal: bool
    next_cursor: int = Field(..., description="Pass as ?after= to get the events that follow.")
    prev_cursor: int = Field(..., description="Pass as ?before= to get the page of events before these (0: none).")
    events: list[EventOut]


def _run_get(request: HttpRequest, run_id: int, action: str = "view") -> AgentRun:
    """The run when the user may see its domain (404 otherwise, as for a missing run); `action` checked too."""
    run = AgentRun.objects.select_related("domain").filter(pk=run_id).first()
    if run is None or not domain_may(request.user, run.domain, "view"):
        raise NotFound(f"no run {run_id}")
    domain_require(request.user, run.domain, action)
    return run


@router.post("/runs", response={201: RunOut})
def runs_start(request: HttpRequest, payload: RunIn) -> Status:
    """Start a run in the background (a django-q2 worker executes it). 409 if the task is not frozen."""
    domain = domain_get_for_user(request.user, payload.domain_id, "edit")
    run = run_start(domain=domain, **payload.dict(exclude={"domain_id"}), created_by=request.user)
    return Status(201, run)


@router.get("/runs", response=ListOut[RunOut])
def runs_list(
    request: HttpRequest,
    domain_id: Id | None = None,
    status: RunStatus | None = None,
    limit: int = Query(50, ge=1, le=500),
    offset: Offset = 0,
) -> dict[str, Any]:
    """Runs, newest first, of the domains the user sees: one page (`limit`, `offset`) and the total `count`."""
    runs = AgentRun.objects.select_related("domain").filter(domain__in=domains_for_user(request.user))
    runs = runs.order_by("-created_at", "-pk")
    if domain_id is not None:
        runs = runs.filter(domain=domain_get_for_user(request.user, domain_id))
    if status is not None:
        runs = runs.filter(status=status)
    return {"items": list(runs[offset:offset + limit]), "count": runs.count()}


@router.get("/runs/{run_id}", response=RunOut)
def runs_show(request: HttpRequest, run_id: Id) -> AgentRun:
    return _run_get(request, run_id)


@router.post("/runs/{run_id}/stop", response=RunOut)
def runs_stop(request: HttpRequest, run_id: Id) -> AgentRun:
    """Ask the run to stop (409 when it has already finished)."""
    return run_stop_request(run=_run_get(request, run_id, "edit"))


@router.get("/runs/{run_id}/events", response=EventsOut)
def runs_events(
    request: HttpRequest,
    run_id: Id,
    after: int = Query(0, ge=0, le=DB_ID_MAX, description="Return events with seq greater than this."),
    before: int | None = Query(
        None, ge=1, le=DB_ID_MAX, description="Instead: the `limit` events just before this seq (paging backwards)."
    ),
    limit: int = Query(500, ge=1, le=EVENTS_LIMIT_MAX),
) -> dict[str, Any]:
    """A run's events by seq cursor: after `after` (oldest first), or the page before `before`."""
    # The run before its events: a terminal status is committed together with `finalized`.
    run = _run_get(request, run_id)
    if before is not None:
        events = list(run.events.filter(seq__gt=after, seq__lt=before).order_by("-seq")[:limit])[::-1]
    else:
        events = list(run.events.filter(seq__gt=after).order_by("seq")[:limit])
    first = events[0].seq if events else 0
    return {
        "prev_cursor": first if first and run.events.filter(seq__lt=first).exists() else 0,
        "run_id": run.pk,
        "status": run.status,
        "terminal": run.is_terminal,
        "next_cursor": events[-1].seq if events else after,
        "events": events,
    }


@router.get("/runs/{run_id}/stream")
def runs_stream(
    request: HttpRequest,
    run_id: Id,
    after: int = Query(0, ge=0, le=DB_ID_MAX, description="Start after this seq (the Last-Event-ID header also works)."),
) -> StreamingHttpResponse:
    """Server-sent events: one `event: <type>` per run event (id = seq, data = JSON), ending after
    `finalized`. A sync generator, so it works under `manage.py runserver` (reference/stack.md §3)."""
    run = _run_get(request, run_id)
    last_id = request.headers.get("Last-Event-ID", "")
    # isdigit() also accepts non-ASCII digits ("²") that int() refuses; bound the length too.
    if last_id.isascii() and last_id.isdigit() and len(last_id) <= 18:
        after = max(after, int(last_id))
    response = StreamingHttpResponse(_event_stream(run.pk, after), content_type="text/event-stream")
    response["Cache-Control"] = "no-cache"
    response["X-Accel-Buffering"] = "no"
    return response


def _sse(event: AgentEvent) -> str:
    payload = json.dumps({"seq": event.seq, "type": event.type, "data": event.data, "created_at": event.created_at.isoformat()})
    return f"id: {event.seq}\nevent: {event.type}\ndata: {payload}\n\n"


def _event_stream(run_id: int, after: int) -> Iterator[str]:
    yield ": connected\n\n"
    cursor = after
    idle_since = time.monotonic()
    while True:
        # Re-read the DB every time: a run whose worker died is finalized by the reaper, and the
        # stream ends then too (dojoml's stream never ended for a run left "running" on disk).
        status = AgentRun.objects.filter(pk=run_id).values_list("status", flat=True).first()
        events = list(AgentEvent.objects.filter(run_id=run_id, seq__gt=cursor).order_by("seq")[:200])
        for event in events:
            yield _sse(event)
            cursor = event.seq
            if event.type == AgentEvent.Type.FINALIZED:
                return
        if events:
            idle_since = time.monotonic()
            continue
        if status is None or status in AgentRun.TERMINAL:
            # Terminal and nothing more to send (a run finalized before `after`, or an old run).
            yield f"event: end\ndata: {json.dumps({'status': status})}\n\n"
            return
        if time.monotonic() - idle_since >= STREAM_KEEPALIVE_SECONDS:
            yield ": keep-alive\n\n"
            idle_since = time.monotonic()
        time.sleep(STREAM_POLL_SECONDS)
