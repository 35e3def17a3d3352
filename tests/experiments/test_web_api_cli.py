import json
from io import StringIO

import pytest
from django.core.management import CommandError, call_command
from django.urls import reverse

from domains.models import Task
from experiments.models import Experiment
from experiments.services import experiment_run
from tests.experiments.conftest import LINEAR

PNG = """
def train(X_train, y_train, X_test, *, artifacts_dir):
    (artifacts_dir / "plot.png").write_bytes(b"\\x89PNG\\r\\n\\x1a\\n" + bytes(64))
    (artifacts_dir / "notes.html").write_text("<script>alert(1)</script>")
    from sklearn.linear_model import Ridge
    return Ridge(alpha=10.0).fit(X_train, y_train).predict(X_test)
"""


@pytest.fixture
def two(diabetes):
    parent = experiment_run(domain=diabetes, train_code=LINEAR, hypothesis="ols baseline")
    child = experiment_run(domain=diabetes, train_code=PNG, hypothesis="ridge <b>strong</b>", parent=parent)
    return parent, child


def test_it_renders_the_domain_tab_as_a_fragment_and_a_page(client_logged_in, diabetes, two):
    url = reverse("experiments:domain_list", args=[diabetes.pk])
    fragment = client_logged_in.get(url, HTTP_HX_REQUEST="true")
    assert fragment.status_code == 200
    html = fragment.content.decode()
    assert html.lstrip().startswith('<div id="domain-experiments"')
    assert 'data-chart="history"' in html and "ridge &lt;b&gt;strong&lt;/b&gt;" in html
    page = client_logged_in.get(url)
    assert page.status_code == 200 and "<html" in page.content.decode()


def test_it_sorts_filters_and_marks_other_contracts(client_logged_in, diabetes, two):
    parent, child = two
    failed = experiment_run(domain=diabetes, train_code="def train(*a, **k):\n    raise ValueError('nope')\n")
    url = reverse("experiments:domain_list", args=[diabetes.pk])
    ranked = [row["exp"] for row in client_logged_in.get(url, {"sort": "holdout"}).context["rows"]]
    assert ranked[-1] == failed
    only_failed = [row["exp"] for row in client_logged_in.get(url, {"state": "failed"}).context["rows"]]
    assert only_failed == [failed]
    Experiment.objects.filter(pk=parent.pk).update(task_fingerprint="0" * 64)
    html = client_logged_in.get(url).content.decode()
    assert html.count("other contract") >= 1
    bad = client_logged_in.get(url, {"sort": "nonsense", "page": "x"})
    assert bad.status_code == 200


def test_it_shows_an_experiment_with_code_diff_logs_and_artifacts(client_logged_in, two):
    parent, child = two
    response = client_logged_in.get(child.get_absolute_url())
    assert response.status_code == 200
    html = response.content.decode()
    assert "Diff against parent #" in html and "+    from sklearn.linear_model import Ridge" in html
    assert "ridge &lt;b&gt;strong&lt;/b&gt;" in html
    image = child.artifacts.get(path="train/plot.png")
    assert f"/experiments/{child.pk}/artifacts/{image.pk}/?inline=1" in html
    inline = client_logged_in.get(reverse("experiments:artifact", args=[child.pk, image.pk]), {"inline": "1"})
    assert inline.status_code == 200 and "attachment" not in inline["Content-Disposition"]
    page = child.artifacts.get(path="train/notes.html")
    download = client_logged_in.get(reverse("experiments:artifact", args=[child.pk, page.pk]), {"inline": "1"})
    assert "attachment" in download["Content-Disposition"] and "default-src 'none'" in download["Content-Security-Policy"]
    assert client_logged_in.get(reverse("experiments:artifact", args=[parent.pk, image.pk])).status_code == 404


def test_it_reproduces_from_the_web_in_the_background(client_logged_in, two, monkeypatch,
                                                        django_capture_on_commit_callbacks):
    from django_q.conf import Conf

    parent, _ = two
    queued = []
    monkeypatch.setattr("django_q.tasks.async_task", lambda *args, **kwargs: queued.append(args))
    with django_capture_on_commit_callbacks(execute=True):
        response = client_logged_in.post(reverse("experiments:reproduce", args=[parent.pk]), HTTP_HX_REQUEST="true")
    # The request returns at once with the copy pending, polled by the panel; nothing ran yet.
    again = Experiment.objects.latest("pk")
    assert response.status_code == 200 and again.state == "pending" and again.reproduction_of_id == parent.pk
    html = response.content.decode()
    assert 'hx-trigger="every 2s"' in html and "queued, waiting for a worker" in html
    assert queued == [("experiments.tasks.experiment_run_pending_task", again.pk)]
    # A django-q2 worker runs the task (here in-process, as the ORM broker's worker would).
    monkeypatch.undo()
    monkeypatch.setattr(Conf, "SYNC", True)
    from experiments.tasks import experiment_run_pending_task

    assert experiment_run_pending_task(again.pk) == "completed"
    assert experiment_run_pending_task(again.pk) == "completed"  # claimed once; a second call is a no-op
    panel = client_logged_in.get(reverse("experiments:reproductions", args=[parent.pk]), HTTP_HX_REQUEST="true")
    body = panel.content.decode()
    assert "identical" in body and "hx-trigger" not in body  # polling ends
    # Not a leaderboard entry; the original's page lists it.
    board = client_logged_in.get(reverse("experiments:domain_list", args=[parent.domain_id]))
    assert again.pk not in [row["exp"].pk for row in board.context["rows"]]
    assert f"/experiments/{again.pk}/" in client_logged_in.get(parent.get_absolute_url()).content.decode()


def test_it_needs_a_login(client, two):
    parent, _ = two
    assert client.get(parent.get_absolute_url()).status_code == 302


def test_it_serves_the_api(client_logged_in, diabetes, two):
    parent, child = two
    body = client_logged_in.get(f"/api/domains/{diabetes.pk}/experiments?sort=validation").json()
    listed = body["items"]
    assert body["count"] == len(listed) >= 2
    assert [e["id"] for e in listed][:2] == [parent.pk, child.pk] or {e["id"] for e in listed} == {parent.pk, child.pk}
    shown = client_logged_in.get(f"/api/experiments/{child.pk}").json()
    assert shown["holdout_metrics"] and shown["artifacts"][0]["url"].startswith(f"/api/experiments/{child.pk}/artifacts/")
    code = client_logged_in.get(f"/api/experiments/{child.pk}/code").json()
    assert code["parent_code"] == LINEAR and "Ridge" in code["code"]
    art = child.artifacts.get(path="train/plot.png")
    assert client_logged_in.get(f"/api/experiments/{child.pk}/artifacts/{art.pk}").status_code == 200
    created = client_logged_in.post(
        f"/api/domains/{diabetes.pk}/experiments",
        data=json.dumps({"code": LINEAR, "hypothesis": "by hand", "parent_id": parent.pk}),
        content_type="application/json",
    )
    assert created.status_code == 201 and created.json()["state"] == "completed"
    assert client_logged_in.get("/api/experiments/999999").status_code == 404
    empty = client_logged_in.post(f"/api/domains/{diabetes.pk}/experiments", data=json.dumps({"code": " "}),
                                  content_type="application/json")
    assert empty.status_code == 422 and "empty" in empty.json()["detail"]


def test_it_refuses_api_runs_on_an_unfrozen_task(client_logged_in, diabetes):
    Task.objects.filter(domain=diabetes).update(frozen_at=None)
    response = client_logged_in.post(f"/api/domains/{diabetes.pk}/experiments", data=json.dumps({"code": LINEAR}),
                                     content_type="application/json")
    assert response.status_code == 409 and "not frozen" in response.json()["detail"]


def test_it_drives_the_cli(diabetes, two, tmp_path):
    parent, child = two
    out = StringIO()
    call_command("dojo_experiments", "ls", "--domain", "diabetes", "--json", stdout=out)
    rows = json.loads(out.getvalue())
    assert {r["id"] for r in rows} == {parent.pk, child.pk}
    out = StringIO()
    call_command("dojo_experiments", "ls", "--domain", "diabetes", "--sort", "created", "--limit", "1", stdout=out)
    assert f"{child.pk}" in out.getvalue()
    out = StringIO()
    call_command("dojo_experiments", "best", "--domain", "diabetes", "--json", stdout=out)
    best = json.loads(out.getvalue())
    assert best["id"] == min((parent, child), key=lambda e: e.primary_value).pk
    out = StringIO()
    call_command("dojo_experiments", "show", str(child.pk), "--code", stdout=out)
    assert "Ridge" in out.getvalue() and "holdout" in out.getvalue()
    code = tmp_path / "train.py"
    code.write_text(LINEAR)
    out = StringIO()
    call_command("dojo_experiments", "run", "--domain", "diabetes", "--code-file", str(code), "--hypothesis", "cli",
                 "--parent", str(parent.pk), "--json", stdout=out)
    ran = json.loads(out.getvalue())
    assert ran["state"] == "completed" and ran["parent_id"] == parent.pk
    out = StringIO()
    call_command("dojo_experiments", "reproduce", str(parent.pk), stdout=out)
    assert "identical metrics" in out.getvalue()


def test_it_gives_one_line_cli_errors(diabetes, tmp_path):
    with pytest.raises(CommandError, match="does not exist"):
        call_command("dojo_experiments", "show", "424242", stdout=StringIO())
    with pytest.raises(CommandError, match="cannot read"):
        call_command("dojo_experiments", "run", "--domain", "diabetes", "--code-file", str(tmp_path / "nope.py"),
                     "--hypothesis", "x", stdout=StringIO())
    bad = tmp_path / "bad.py"
    bad.write_text("def train(*a, **k):\n    raise ValueError('broken')\n")
    with pytest.raises(CommandError, match="failed: ValueError: broken"):
        call_command("dojo_experiments", "run", "--domain", "diabetes", "--code-file", str(bad), "--hypothesis", "x",
                     stdout=StringIO())
    with pytest.raises(CommandError, match="no completed experiment"):
        call_command("dojo_experiments", "best", "--domain", "diabetes", stdout=StringIO())
    Task.objects.filter(domain=diabetes).update(frozen_at=None)
    with pytest.raises(CommandError) as info:
        call_command("dojo_experiments", "run", "--domain", "diabetes", "--code-file", str(bad), "--hypothesis", "x",
                     stdout=StringIO())
    assert info.value.returncode == 3
