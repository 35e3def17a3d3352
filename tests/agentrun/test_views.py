"""The runs pages: the domain's Runs tab with the start form, the list, the live run page."""

import pytest
from django.urls import reverse
from django_q.conf import Conf

from agentrun.models import AgentEvent, AgentRun
from agentrun.services import run_create, run_execute

HX = {"HTTP_HX_REQUEST": "true"}


def _events(run: AgentRun, *types: str) -> None:
    for seq, type_ in enumerate(types, start=run.events.count() + 1):
        data = {"text": f"event {seq}"} if type_ == "text" else {"status": run.status}
        AgentEvent.objects.create(run=run, seq=seq, type=type_, data=data)


def test_the_runs_tab_is_a_fragment_for_htmx_and_a_page_otherwise(client_logged_in, frozen_domain_in_transaction):
    url = reverse("agentrun:domain_list", args=[frozen_domain_in_transaction.pk])
    assert url == f"/runs/domain/{frozen_domain_in_transaction.pk}/"
    fragment = client_logged_in.get(url, **HX)
    assert fragment.status_code == 200
    assert "agentrun/partials/domain_runs.html" in [t.name for t in fragment.templates]
    html = fragment.content.decode()
    assert "<html" not in html and 'id="run-start-form"' in html and 'name="max_experiments"' in html
    page = client_logged_in.get(url)
    assert "<html" in page.content.decode() and 'id="domain-runs"' in page.content.decode()


def test_the_start_form_queues_a_run_after_commit(client_logged_in, frozen_domain_in_transaction, django_capture_on_commit_callbacks, monkeypatch):
    monkeypatch.setattr(Conf, "SYNC", False)
    url = reverse("agentrun:start", args=[frozen_domain_in_transaction.pk])
    with django_capture_on_commit_callbacks() as callbacks:
        response = client_logged_in.post(url, {"backend": "builtin", "max_experiments": "4", "max_minutes": "2", "prompt": "  "})
    run = AgentRun.objects.get()
    assert response.status_code == 302 and response["Location"] == run.get_absolute_url()
    assert (run.backend, run.max_experiments, run.max_minutes, run.status) == ("builtin", 4, 2.0, "queued")
    assert run.prompt.startswith("# Program: diabetes")
    assert len(callbacks) == 1


def test_the_start_form_refuses_an_unfrozen_task(client_logged_in, workspace, django_capture_on_commit_callbacks):
    from domains.services import domain_create

    domain = domain_create(name="raw", task_type="regression", workspace=workspace, data_path="sklearn:load_diabetes")
    with django_capture_on_commit_callbacks() as callbacks:
        response = client_logged_in.post(reverse("agentrun:start", args=[domain.pk]), {"backend": "builtin"})
    assert response.status_code == 422
    assert "not frozen" in response.content.decode()
    assert not AgentRun.objects.exists() and callbacks == []


def test_the_start_form_shows_field_errors(client_logged_in, frozen_domain_in_transaction):
    response = client_logged_in.post(
        reverse("agentrun:start", args=[frozen_domain_in_transaction.pk]), {"backend": "gpt", "max_experiments": "0"}
    )
    assert response.status_code == 422
    form = response.context["form"]
    assert set(form.errors) == {"backend", "max_experiments"}
    assert not AgentRun.objects.exists()


def test_the_live_page_polls_until_the_run_is_over(client_logged_in, frozen_domain_in_transaction):
    run = run_create(domain=frozen_domain_in_transaction)
    AgentRun.objects.filter(pk=run.pk).update(status="running")
    run.refresh_from_db()
    _events(run, "text", "text")
    page = client_logged_in.get(run.get_absolute_url()).content.decode()
    assert 'id="event-2"' in page and 'id="run-stop"' in page
    poll_url = reverse("agentrun:poll", args=[run.pk])
    assert f'hx-get="{poll_url}?after=2&show=all" hx-trigger="every 1s"' in page

    _events(run, "text")
    partial = client_logged_in.get(poll_url, {"after": 2}, **HX)
    html = partial.content.decode()
    assert 'id="event-3"' in html and 'id="event-2"' not in html
    assert 'hx-swap-oob="beforeend:#run-events"' in html and 'id="run-status" class="card" hx-swap-oob="true"' in html
    assert f'hx-get="{poll_url}?after=3&show=all"' in html

    nothing_new = client_logged_in.get(poll_url, {"after": 3}, **HX).content.decode()
    assert "run-events" not in nothing_new and "?after=3" in nothing_new

    AgentRun.objects.filter(pk=run.pk).update(status="completed")
    _events(run, "result", "finalized")
    final = client_logged_in.get(poll_url, {"after": 3}, **HX).content.decode()
    assert 'id="event-5"' in final and "hx-trigger" not in final and "hx-get" not in final
    assert 'data-status="completed"' in final and 'id="run-stop"' not in final


def test_the_live_page_shows_best_so_far_and_cost(client_logged_in, frozen_domain, scripted):
    from tests.agentrun.conftest import GOOD_TRAIN, MEAN_TRAIN

    scripted([
        {"tool": "run_experiment", "args": {"code": MEAN_TRAIN, "hypothesis": "mean"}},
        {"tool": "run_experiment", "args": {"code": GOOD_TRAIN, "hypothesis": "ridge"}},
        {"cost": 0.0123},
    ])
    run = run_execute(run_id=run_create(domain=frozen_domain, backend="scripted").pk)
    best = run.experiments.order_by("primary_value").first()
    html = client_logged_in.get(run.get_absolute_url()).content.decode()
    assert f"#{best.pk}</a> rmse = " in html and "$0.0123" in html and "2 completed" in html
    assert "★ best so far" in html
    assert '<span id="run-probes">0 probes</span>' in html and "0 quarantined" in html


def test_the_stop_button_requests_a_stop(client_logged_in, frozen_domain_in_transaction):
    run = run_create(domain=frozen_domain_in_transaction)
    AgentRun.objects.filter(pk=run.pk).update(status="running")
    response = client_logged_in.post(reverse("agentrun:stop", args=[run.pk]))
    assert response.status_code == 302
    run.refresh_from_db()
    assert run.stop_requested and run.status == "running"
    AgentRun.objects.filter(pk=run.pk).update(status="completed")
    followed = client_logged_in.post(reverse("agentrun:stop", args=[run.pk]), follow=True)
    assert "has already finished (completed)" in followed.content.decode()


def test_the_runs_list_shows_every_run(client_logged_in, frozen_domain_in_transaction):
    run = run_create(domain=frozen_domain_in_transaction)
    html = client_logged_in.get(reverse("agentrun:list")).content.decode()
    assert f'id="run-row-{run.pk}"' in html and "diabetes" in html


@pytest.mark.django_db
@pytest.mark.parametrize("name, args", [("list", []), ("detail", [1]), ("poll", [1]), ("domain_list", [1])])
def test_pages_need_a_login(client, name, args):
    response = client.get(reverse(f"agentrun:{name}", args=args))
    assert response.status_code == 302 and response["Location"].startswith("/login/")


def test_the_start_form_refuses_counts_no_database_can_hold(client_logged_in, frozen_domain_in_transaction):
    response = client_logged_in.post(
        reverse("agentrun:start", args=[frozen_domain_in_transaction.pk]), {"backend": "builtin", "max_experiments": str(10**20)}
    )
    assert response.status_code == 422
    assert "max experiments must be at most" in response.content.decode()
    assert not AgentRun.objects.exists()


def test_the_live_page_reaches_every_event_of_a_long_run_through_earlier_pages(client_logged_in, frozen_domain_in_transaction):
    run = run_create(domain=frozen_domain_in_transaction)
    AgentEvent.objects.bulk_create(
        AgentEvent(run=run, seq=seq, type="experiment" if seq % 10 == 0 else "text", data={"text": f"event {seq}"})
        for seq in range(1, 1001)
    )
    page = client_logged_in.get(run.get_absolute_url())
    html = page.content.decode()
    # The newest page is shown; the rest is one click away per page, by seq (a keyset, not an offset).
    assert 'id="event-1000"' in html and 'id="event-901"' in html and 'id="event-900"' not in html
    earlier_url = reverse("agentrun:earlier", args=[run.pk])
    assert f"{earlier_url}?before=901&show=all" in html
    seen, before = set(), 901
    while before:
        part = client_logged_in.get(earlier_url, {"before": before}, **HX)
        seen |= {e.seq for e in part.context["events"]}
        before = part.context["first_seq"] if part.context["earlier"] else 0
    assert seen == set(range(1, 901))
    # Filtered by type, the first page and the earlier pages keep only that type.
    experiments = client_logged_in.get(run.get_absolute_url(), {"show": "experiments"})
    assert {e.type for e in experiments.context["events"]} == {"experiment"} and len(experiments.context["events"]) == 100
    assert 'id="event-999"' not in experiments.content.decode()
    assert client_logged_in.get(run.get_absolute_url(), {"show": "bogus"}).context["show"] == "all"


def test_the_live_page_poll_keeps_the_filter_and_says_when_experiments_ended(client_logged_in, frozen_domain_in_transaction):
    run = run_create(domain=frozen_domain_in_transaction)
    AgentRun.objects.filter(pk=run.pk).update(status="running")
    run.refresh_from_db()
    _events(run, "text", "experiment", "text")
    poll_url = reverse("agentrun:poll", args=[run.pk])
    html = client_logged_in.get(poll_url, {"after": 0, "show": "experiments"}, **HX).content.decode()
    assert 'id="event-2"' in html and 'id="event-1"' not in html and 'id="event-3"' not in html
    # The cursor moves past hidden events too, and the chart is told to redraw.
    assert f'{poll_url}?after=3&show=experiments' in html and 'id="run-new-experiments"' in html


def test_the_live_page_shows_elapsed_time_progress_and_failures_apart_from_stops(client_logged_in, frozen_domain_in_transaction):
    from datetime import timedelta

    from django.utils import timezone

    from tests.knowledge.helpers import make_experiment

    run = run_create(domain=frozen_domain_in_transaction, max_experiments=10, max_minutes=30, budget_usd=2)
    AgentRun.objects.filter(pk=run.pk).update(status="running", started_at=timezone.now() - timedelta(minutes=3, seconds=5))
    for state in ["completed", "completed", "failed", "stopped"]:
        exp = make_experiment(frozen_domain_in_transaction)
        type(exp).objects.filter(pk=exp.pk).update(run=run, state=state)
    html = client_logged_in.get(run.get_absolute_url()).content.decode()
    assert '<progress max="10" value="4"' in html and "4 of 10" in html
    assert "2 completed" in html and "1 failed" in html and "1 stopped" in html
    assert "3m 05s of 30m 00s" in html or "3m 06s of 30m 00s" in html
    assert "of $2.00" in html


def test_the_run_metric_chart_data_is_the_validation_metric_and_the_best_so_far(client_logged_in, frozen_domain_in_transaction):
    from tests.knowledge.helpers import make_experiment

    run = run_create(domain=frozen_domain_in_transaction)
    ids = []
    for value in [5.0, 3.0, 4.0]:
        exp = make_experiment(frozen_domain_in_transaction)
        type(exp).objects.filter(pk=exp.pk).update(run=run, state="completed", primary_value=value)
        ids.append(exp.pk)
    data = client_logged_in.get(reverse("agentrun:metrics", args=[run.pk])).json()
    assert data["ids"] == ids
    assert data["series"][0]["y"] == [5.0, 3.0, 4.0]
    assert data["series"][1]["y"] == [5.0, 3.0, 3.0]  # rmse: lower is better


def test_the_runs_tab_pages(client_logged_in, frozen_domain_in_transaction):
    runs = [run_create(domain=frozen_domain_in_transaction) for _ in range(27)]
    url = reverse("agentrun:domain_list", args=[frozen_domain_in_transaction.pk])
    first = client_logged_in.get(url, **HX).content.decode()
    assert f'id="run-row-{runs[-1].pk}"' in first and f'id="run-row-{runs[0].pk}"' not in first
    assert "page 1 of 2 · 27 runs" in first
    second = client_logged_in.get(url, {"page": 2}, **HX).content.decode()
    assert f'id="run-row-{runs[0].pk}"' in second and f'id="run-row-{runs[-1].pk}"' not in second


def test_the_domains_results_show_the_best_by_the_ranking_counts_and_the_active_run(
    client_logged_in, frozen_domain_in_transaction, django_assert_max_num_queries
):
    from experiments.ranking import best_experiment
    from tests.knowledge.helpers import make_experiment

    domain = frozen_domain_in_transaction
    task = domain.task
    values = [5.0, 3.0, 4.0]
    for value in values:
        exp = make_experiment(domain)
        type(exp).objects.filter(pk=exp.pk).update(
            state="completed", primary_value=value, holdout_primary_value=value + 0.5,
            task_fingerprint=task.fingerprint, data_fingerprint=task.data_fingerprint,
        )
    run = run_create(domain=domain, max_experiments=8)
    AgentRun.objects.filter(pk=run.pk).update(status="running")
    best = best_experiment(domain)
    assert best.primary_value == 3.0

    with django_assert_max_num_queries(12):
        html = client_logged_in.get(reverse("agentrun:domains_results"), **HX).content.decode()
    cell = html[html.index(f'id="domain-results-{domain.pk}"'):]
    assert f"best #{best.pk}" in cell and "<strong>3</strong>" in cell and "holdout 3.5" in cell
    assert "3 experiments · 1 run" in cell and f"run #{run.pk} running" in cell
    assert '<svg class="spark"' not in cell or "polyline" in cell

    # Rows with a stored rank value rank by it (experiments.ranking), ahead of validation-only rows.
    ranked = make_experiment(domain)
    type(ranked).objects.filter(pk=ranked.pk).update(
        state="completed", primary_value=9.0, rank_value=2.0,
        task_fingerprint=task.fingerprint, data_fingerprint=task.data_fingerprint,
    )
    assert best_experiment(domain).pk == ranked.pk
    html = client_logged_in.get(reverse("agentrun:domains_results"), **HX).content.decode()
    assert f"best #{ranked.pk}" in html
    best = ranked
    overview = client_logged_in.get(reverse("agentrun:domain_results", args=[domain.pk]), **HX).content.decode()
    assert f"best #{best.pk}" in overview and 'data-chart="history"' in overview
    # The domains list and the overview load them.
    assert "/runs/domains/results/" in client_logged_in.get(reverse("domains:list")).content.decode()
    assert f"/runs/domain/{domain.pk}/results/" in client_logged_in.get(domain.get_absolute_url()).content.decode()


def test_the_domains_results_hide_holdout_from_viewers_when_the_owner_says_so(client, frozen_domain_in_transaction, other_user):
    from domains.models import DomainMember
    from tests.knowledge.helpers import make_experiment

    domain = frozen_domain_in_transaction
    type(domain).objects.filter(pk=domain.pk).update(hide_holdout_from_viewers=True)
    DomainMember.objects.create(domain=domain, user=other_user, role="viewer")
    exp = make_experiment(domain)
    type(exp).objects.filter(pk=exp.pk).update(
        state="completed", primary_value=1.0, holdout_primary_value=7.25,
        task_fingerprint=domain.task.fingerprint, data_fingerprint=domain.task.data_fingerprint,
    )
    client.force_login(other_user)
    html = client.get(reverse("agentrun:domain_results", args=[domain.pk]), **HX).content.decode()
    assert f"best #{exp.pk}" in html and "7.25" not in html
