"""Issue 11 item 4: workspace scan (CLI, API, web) and workspace status."""

import json
from io import StringIO

import numpy as np
import pandas as pd
import pytest
from django.core.management import CommandError, call_command
from django.test import Client

from domains.generation import setup_parse
from domains.models import Domain
from domains.services import domain_create

pytestmark = pytest.mark.django_db


def _call(*args):
    out = StringIO()
    call_command(*args, stdout=out, stderr=StringIO())
    return out.getvalue()


@pytest.fixture
def repo(workspace, user):
    rng = np.random.default_rng(0)
    (workspace / "data").mkdir()
    frame = pd.DataFrame({"customer_id": [f"c{i}" for i in range(300)], "rooms": rng.integers(1, 6, 300),
                          "area": rng.normal(80, 20, 300), "price": rng.normal(3e5, 5e4, 300)})
    frame.to_csv(workspace / "data" / "houses.csv", index=False)
    frame.head(40).to_parquet(workspace / "data" / "houses.parquet")
    pd.DataFrame({"id": range(10), "label": [0, 1] * 5, "x": range(10)}).to_json(
        workspace / "events.jsonl", orient="records", lines=True)
    (workspace / "broken.json").write_text("{not json")
    for skipped in (".venv/lib", "node_modules/pkg", ".git/objects", "env2"):
        (workspace / skipped).mkdir(parents=True)
        (workspace / skipped / "hidden.csv").write_text("a,b\n1,2\n")
    (workspace / "env2" / "pyvenv.cfg").write_text("home = /usr/bin\n")  # a venv by another name
    (workspace / "src").mkdir()
    (workspace / "src" / "metrics.py").write_text(
        "def rmse_score(y_true, y_pred):\n    return 0.0\n\ndef _private_score(a):\n    pass\n\ndef load():\n    pass\n"
    )
    domain = domain_create(name="scan", task_type="regression", workspace=workspace, owner=user)
    return domain


def test_the_cli_scans_and_fills_setup_md_only_when_asked(repo, workspace):
    before = (workspace / "SETUP.md").read_text()
    scan = json.loads(_call("dojo_domain", "scan", "--domain", "scan", "--json"))

    files = {f["path"]: f for f in scan["data_files"]}
    assert set(files) == {"data/houses.csv", "data/houses.parquet", "events.jsonl", "broken.json"}
    houses = files["data/houses.csv"]
    assert houses["shape"] == [300, 4] and houses["target"] == "price" and houses["task_type"] == "regression"
    assert houses["id_columns"] == ["customer_id"]
    assert {c["name"]: c["dtype"] for c in houses["columns"]}["area"] == "float64"
    assert files["data/houses.parquet"]["rows"] == 40
    assert files["events.jsonl"]["target"] == "label" and files["events.jsonl"]["task_type"] == "binary"
    assert files["events.jsonl"]["id_columns"] == ["id"]
    assert "error" in files["broken.json"]
    assert [(s["path"], s["name"]) for s in scan["scorers"]] == [("src/metrics.py", "rmse_score")]
    assert scan["suggestions"][0]["data"] == "data/houses.csv"
    assert (workspace / "SETUP.md").read_text() == before  # a scan writes nothing

    out = _call("dojo_domain", "scan", "--domain", "scan")
    assert "data/houses.csv" in out and "rmse_score" in out and "--apply 1" in out

    _call("dojo_domain", "scan", "--domain", "scan", "--apply", "1")
    spec = setup_parse(path=workspace / "SETUP.md")
    assert (spec.data, spec.target) == ("data/houses.csv", "price")
    assert "- id columns: customer_id" in (workspace / "SETUP.md").read_text()
    assert "## Evaluate" in (workspace / "SETUP.md").read_text()  # the rest is kept

    with pytest.raises(CommandError, match="no number 9"):
        _call("dojo_domain", "scan", "--domain", "scan", "--apply", "9")


def test_the_api_scans_and_reports_status(repo, client_logged_in, django_user_model):
    response = client_logged_in.post(f"/api/domains/{repo.pk}/workspace/scan")
    assert response.status_code == 200
    suggestion = response.json()["suggestions"][0]
    assert "- target: price" in suggestion["setup_text"]

    status = client_logged_in.get(f"/api/domains/{repo.pk}/workspace").json()
    assert status["exists"] and status["writable"]
    assert status["environment"]["state"] == "none" and not status["environment"]["ready"]
    assert status["interpreter"]["source"] == "dojo" and status["interpreter"]["version"].startswith("3.")

    stranger = Client()
    stranger.force_login(django_user_model.objects.create_user(username="eve", password="pw-for-tests-only"))
    assert stranger.post(f"/api/domains/{repo.pk}/workspace/scan").status_code == 404
    assert stranger.get(f"/api/domains/{repo.pk}/workspace").status_code == 404


def test_the_domain_page_scans_and_fills_the_setup_editor(repo, client_logged_in, workspace):
    hx = {"HTTP_HX_REQUEST": "true"}
    panel = client_logged_in.get(f"/domains/{repo.pk}/workspace/", **hx).content.decode()
    assert "Set up environment" in panel and "Scan workspace" in panel and "(writable)" in panel

    scanned = client_logged_in.post(f"/domains/{repo.pk}/workspace/scan/", **hx).content.decode()
    assert "data/houses.csv" in scanned and "300 × 4" in scanned and "Fill SETUP.md" in scanned

    before = (workspace / "SETUP.md").read_text()
    editor = client_logged_in.post(f"/domains/{repo.pk}/workspace/suggest/", {"n": "0"}, **hx).content.decode()
    assert "<textarea" in editor and "- data: data/houses.csv" in editor and "save to confirm" in editor
    assert (workspace / "SETUP.md").read_text() == before  # written only when the person saves

    missing = client_logged_in.post(f"/domains/{repo.pk}/workspace/suggest/", {"n": "42"}, **hx)
    assert "scan again" in missing.content.decode()
    Domain.objects.filter(pk=repo.pk).update(workspace_path=str(workspace / "gone"))
    gone = client_logged_in.get(f"/domains/{repo.pk}/workspace/", **hx).content.decode()
    assert "missing" in gone


def test_the_scan_skips_dojo_home_inside_the_workspace(repo, workspace, settings):
    settings.DOJO_HOME = workspace / "var"
    (workspace / "var" / "snapshots").mkdir(parents=True)
    (workspace / "var" / "snapshots" / "secret.csv").write_text("a,target\n1,2\n")
    scan = json.loads(_call("dojo_domain", "scan", "--domain", "scan", "--json"))
    assert not [f for f in scan["data_files"] if f["path"].startswith("var/")]
