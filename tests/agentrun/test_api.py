"""The runs API: start / list / show / stop, events after a cursor, and the SSE stream."""

import json
import time

import pytest
from django_q.conf import Conf

from agentrun.models import AgentEvent, AgentRun
from agentrun.services import run_create, run_execute
from tests.agentrun.conftest import MEAN_TRAIN
from tests.agentrun.helpers import execute_in_thread, wait_for


def _post(client, url, payload=None):
    return client.post(url, payload or {}, content_type="application/json")


def test_it_starts_a_run_and_enqueues_it_after_commit(client_logged_in, frozen_domain_in_transaction, django_capture_on_commit_callbacks, monkeypatch):
    monkeypatch.setattr(Conf, "SYNC", False)
    with django_capture_on_commit_callbacks() as callbacks:
        response = _post(client_logged_in, "/api/runs", {"domain_id": frozen_domain_in_transaction.pk, "max_experiments": 3, "budget_usd": 0.5})
    assert response.status_code == 201
    body = response.json()
    assert body["status"] == "queued" and body["domain"] == "diabetes" and body["max_experiments"] == 3
    assert body["url"] == f"/runs/{body['id']}/"
    assert len(callbacks) == 1


def test_it_refuses_an_unfrozen_task_with_409(client_logged_in, workspace, django_capture_on_commit_callbacks):
    from domains.services import domain_create

    domain = domain_create(name="raw", task_type="regression", workspace=workspace, data_path="sklearn:load_diabetes")
    with django_capture_on_commit_callbacks() as callbacks:
        response = _post(client_logged_in, "/api/runs", {"domain_id": domain.pk})
    assert response.status_code == 409 and "not frozen" in response.json()["detail"]
    assert not AgentRun.objects.exists() and callbacks == []


@pytest.mark.parametrize(
    "payload, status",
    [({"domain_id": 999}, 404), ({"backend": "gpt"}, 422), ({"max_experiments": 0}, 422), ({"budget_usd": "lots"}, 422),
     # Numbers no database column holds: 422, not an OverflowError at insert.
     ({"seed": 2**70}, 422), ({"max_turns": 2**40}, 422), ({"domain_id": 2**70}, 422), ({"budget_usd": float("inf")}, 400)],
)
def test_it_rejects_bad_input_with_4xx_json(client_logged_in, frozen_domain_in_transaction, payload, status):
    response = _post(client_logged_in, "/api/runs", {"domain_id": frozen_domain_in_transaction.pk, **payload})
    assert response.status_code == status and "detail" in response.json()
    assert not AgentRun.objects.exists()


def test_it_lists_shows_and_stops_runs(client_logged_in, frozen_domain_in_transaction):
    first = run_create(domain=frozen_domain_in_transaction)
    second = run_create(domain=frozen_domain_in_transaction)
    AgentRun.objects.filter(pk=second.pk).update(status="running")
    listed = client_logged_in.get("/api/runs", {"domain_id": frozen_domain_in_transaction.pk}).json()
    assert [r["id"] for r in listed["items"]] == [second.pk, first.pk] and listed["count"] == 2
    assert [r["id"] for r in client_logged_in.get("/api/runs", {"status": "running"}).json()["items"]] == [second.pk]
    # `offset` pages; `count` stays the total.
    paged = client_logged_in.get("/api/runs", {"domain_id": frozen_domain_in_transaction.pk, "limit": 1, "offset": 1}).json()
    assert [r["id"] for r in paged["items"]] == [first.pk] and paged["count"] == 2
    assert client_logged_in.get(f"/api/runs/{first.pk}").json()["status"] == "queued"
    assert client_logged_in.get("/api/runs/4242").status_code == 404

    stopped = _post(client_logged_in, f"/api/runs/{second.pk}/stop").json()
    assert stopped["stop_requested"] is True and stopped["status"] == "running"
    queued_stop = _post(client_logged_in, f"/api/runs/{first.pk}/stop").json()
    assert queued_stop["status"] == "stopped"
    again = _post(client_logged_in, f"/api/runs/{first.pk}/stop")
    assert again.status_code == 409 and "already finished" in again.json()["detail"]


def test_it_returns_events_after_a_cursor(client_logged_in, frozen_domain_in_transaction):
    run = run_create(domain=frozen_domain_in_transaction)
    for seq in range(1, 6):
        AgentEvent.objects.create(run=run, seq=seq, type="text", data={"text": str(seq)})
    page = client_logged_in.get(f"/api/runs/{run.pk}/events", {"after": 2, "limit": 2}).json()
    assert [e["seq"] for e in page["events"]] == [3, 4] and page["next_cursor"] == 4 and page["terminal"] is False
    rest = client_logged_in.get(f"/api/runs/{run.pk}/events", {"after": page["next_cursor"]}).json()
    assert [e["data"]["text"] for e in rest["events"]] == ["5"] and rest["next_cursor"] == 5
    empty = client_logged_in.get(f"/api/runs/{run.pk}/events", {"after": 5}).json()
    assert empty["events"] == [] and empty["next_cursor"] == 5
    # Backwards from the end, a page at a time, until prev_cursor is 0.
    last = client_logged_in.get(f"/api/runs/{run.pk}/events", {"before": 6, "limit": 2}).json()
    assert [e["seq"] for e in last["events"]] == [4, 5] and last["prev_cursor"] == 4
    middle = client_logged_in.get(f"/api/runs/{run.pk}/events", {"before": last["prev_cursor"], "limit": 2}).json()
    assert [e["seq"] for e in middle["events"]] == [2, 3] and middle["prev_cursor"] == 2
    first = client_logged_in.get(f"/api/runs/{run.pk}/events", {"before": 2, "limit": 2}).json()
    assert [e["seq"] for e in first["events"]] == [1] and first["prev_cursor"] == 0


def _read_sse(response, *, timeout: float) -> list[tuple[str, dict]]:
    """(event name, data) pairs until the stream ends; fails if it does not end in time."""
    events, name, started = [], None, time.monotonic()
    for chunk in response.streaming_content:
        assert time.monotonic() - started < timeout, "the stream did not end"
        for line in chunk.decode().splitlines():
            if line.startswith("event: "):
                name = line[len("event: "):]
            elif line.startswith("data: "):
                events.append((name, json.loads(line[len("data: "):])))
    return events


def test_the_sse_stream_follows_a_live_run_and_ends_after_finalized(client_logged_in, frozen_domain, scripted):
    scripted([{"text": "first"}, {"sleep": 1.0}, {"tool": "run_experiment", "args": {"code": MEAN_TRAIN, "hypothesis": "mean"}}])
    run = run_create(domain=frozen_domain, backend="scripted")
    thread, _ = execute_in_thread(run.pk)
    wait_for(lambda: run.events.exists(), what="the first event")
    response = client_logged_in.get(f"/api/runs/{run.pk}/stream")
    assert response.status_code == 200 and response["Content-Type"] == "text/event-stream"
    events = _read_sse(response, timeout=60)
    thread.join(30)
    names = [name for name, _ in events]
    assert names[-1] == "finalized" and "experiment" in names
    assert [data["seq"] for _, data in events] == list(range(1, len(events) + 1))


def test_the_sse_stream_ends_for_a_finished_run_and_resumes_after_a_cursor(client_logged_in, frozen_domain, scripted):
    scripted([{"text": "only"}])
    run = run_execute(run_id=run_create(domain=frozen_domain, backend="scripted").pk)
    total = run.events.count()
    events = _read_sse(client_logged_in.get(f"/api/runs/{run.pk}/stream"), timeout=5)
    assert len(events) == total and events[-1][0] == "finalized"
    tail = _read_sse(client_logged_in.get(f"/api/runs/{run.pk}/stream", HTTP_LAST_EVENT_ID=str(total - 1)), timeout=5)
    assert [name for name, _ in tail] == ["finalized"]
    after_end = _read_sse(client_logged_in.get(f"/api/runs/{run.pk}/stream", {"after": total}), timeout=5)
    assert after_end == [("end", {"status": "completed"})]
    for bad in ("²", "9" * 5000, "abc"):
        ignored = _read_sse(client_logged_in.get(f"/api/runs/{run.pk}/stream", HTTP_LAST_EVENT_ID=bad), timeout=5)
        assert len(ignored) == total


@pytest.mark.django_db
def test_the_api_needs_authentication(client):
    assert client.get("/api/runs").status_code == 401
    assert client.post("/api/runs", {}, content_type="application/json").status_code == 401


def test_the_sse_stream_works_over_a_threaded_wsgi_server(live_server, user, frozen_domain, scripted):
    """live_server is a threaded WSGI server like `manage.py runserver`; the stream is read over
    real HTTP with a bearer token while the run executes, and the connection closes at the end."""
    import urllib.request

    from domains.services import token_create

    _, token = token_create(user=user)
    scripted([{"text": "over http"}, {"sleep": 1.0}, {"text": "still going"}])
    run = run_create(domain=frozen_domain, backend="scripted")
    thread, _ = execute_in_thread(run.pk)
    request = urllib.request.Request(f"{live_server.url}/api/runs/{run.pk}/stream", headers={"Authorization": f"Bearer {token}"})
    names, started = [], time.monotonic()
    with urllib.request.urlopen(request, timeout=30) as response:
        assert response.headers["Content-Type"] == "text/event-stream"
        for raw in response:  # ends when the server closes the stream
            line = raw.decode().strip()
            if line.startswith("event: "):
                names.append(line[len("event: "):])
    thread.join(30)
    assert names[-1] == "finalized" and names.count("text") >= 3
    assert time.monotonic() - started < 30


@pytest.mark.django_db
@pytest.mark.parametrize("url", ["/api/runs/99999999999999999999999", "/api/runs/1/events?after=99999999999999999999999",
                                 "/api/runs?domain_id=99999999999999999999999"])
def test_it_answers_422_to_numbers_no_database_can_hold(client_logged_in, url):
    response = client_logged_in.get(url)
    assert response.status_code == 422 and "detail" in response.json()
