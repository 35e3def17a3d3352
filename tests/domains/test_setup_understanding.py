"""SETUP.md understood offline (issue 11 item 5): the scaffolded lines, plain words, what is not
understood, and the hint — through the service, `dojo_task`, the API and the task page."""

import io
import os

import numpy as np
import pandas as pd
import pytest
from django.core.management import CommandError, call_command

from dojo_site.errors import InvalidInput
from domains.models import Task
from domains.services import task_generate
from tests.domains.taskkit import make_domain, task_of

pytestmark = pytest.mark.django_db

SETUP = """# Setup: shop
## Dataset
- data: data/customers.csv
- target: churned
{dataset}
## Evaluate
{evaluate}
"""


@pytest.fixture
def customers(workspace):
    rng = np.random.default_rng(3)
    n = 240
    frame = pd.DataFrame({
        "customer_id": [f"c{i:04d}" for i in range(n)],
        "signup_date": pd.date_range("2024-01-01", periods=n, freq="D").strftime("%Y-%m-%d")[rng.permutation(n)],
        "store": rng.choice([f"s{i}" for i in range(12)], n),
        "spend": rng.normal(50, 10, n).round(2),
        "visits": rng.integers(1, 20, n),
    })
    frame["churned"] = (frame["spend"] + rng.normal(0, 5, n) < 50).astype(int)
    (workspace / "data").mkdir()
    frame.to_csv(workspace / "data" / "customers.csv", index=False)
    return frame


def _domain(workspace, *, dataset="", evaluate="- primary metric: roc_auc", task_type="binary"):
    return make_domain(workspace, task_type=task_type, setup=SETUP.format(dataset=dataset, evaluate=evaluate))


def _load(workspace, task: Task):
    code = task.tools.get(name="load_data", is_current=True).code
    namespace: dict = {}
    cwd = os.getcwd()
    os.chdir(workspace)
    try:
        exec(compile(code, "load_data.py", "exec"), namespace)
        return namespace["load_data"]()
    finally:
        os.chdir(cwd)


def test_it_reads_test_ratio_seed_holdout_ratio_and_primary_metric(workspace, customers):
    domain = _domain(workspace, dataset="- test ratio: 25%\n- seed: 7",
                     evaluate="- primary metric: accuracy (higher is better)\n- holdout ratio: 0.4")
    task_generate(task=task_of(domain))
    task = task_of(domain)
    assert (task.config["test_ratio"], task.config["seed"], task.config["holdout_ratio"]) == (0.25, 7, 0.4)
    assert (task.primary_metric, task.direction) == ("accuracy", "maximize")
    X_train, X_test, _, _ = _load(workspace, task)
    assert (len(X_train), len(X_test)) == (180, 60)
    assert "SETUP.md line 6: seed 7" in task.setup_notes["understood"], task.setup_notes


@pytest.mark.parametrize(("line", "section", "words"), [
    ("- test ratio: lots", "dataset", "test ratio must be a number between 0 and 1"),
    ("- test ratio: 1.5", "dataset", "test ratio must be a number"),
    ("- seed: -3", "dataset", "seed must be a whole number"),
    ("- holdout ratio: 1", "evaluate", "holdout ratio must be a number"),
    ("- stratify: maybe", "dataset", "stratify must be yes or no"),
])
def test_it_refuses_a_bad_value_naming_the_line(workspace, customers, line, section, words):
    kwargs = {"dataset": line} if section == "dataset" else {"evaluate": line}
    domain = _domain(workspace, **kwargs)
    with pytest.raises(InvalidInput) as caught:
        task_generate(task=task_of(domain))
    number = SETUP.format(dataset=kwargs.get("dataset", ""), evaluate=kwargs.get("evaluate", "- primary metric: roc_auc")).splitlines().index(line) + 1
    assert f"SETUP.md line {number}" in str(caught.value) and line in str(caught.value) and words in str(caught.value)
    assert not task_of(domain).tools.exists()  # nothing half-written


def test_it_refuses_a_metric_of_another_task_type_naming_the_line(workspace, customers):
    domain = _domain(workspace, evaluate="- primary metric: rmse")
    with pytest.raises(InvalidInput, match=r"SETUP.md line 7 .*'rmse' is not a binary metric"):
        task_generate(task=task_of(domain))
    assert task_of(domain).primary_metric == "roc_auc"


def test_it_honours_plain_words_and_lists_what_it_cannot_map(workspace, customers):
    domain = _domain(workspace, dataset=(
        "Drop the ID column `customer_id`.\n"
        "Split by date on `signup_date`: the newest customers are the test rows.\n"
        "Oversample the minority class.\n"
        "- weighting: by spend\n"
        "Rows are customers of the shop.\n"
        "- source: the shop's CRM export"
    ))
    task_generate(task=task_of(domain))
    task = task_of(domain)
    X_train, X_test, y_train, y_test = _load(workspace, task)
    assert "customer_id" not in X_train.columns
    # Time-ordered: every test row signed up after every training row.
    assert pd.to_datetime(X_train["signup_date"].astype(str)).max() < pd.to_datetime(X_test["signup_date"].astype(str)).min()
    notes = task.setup_notes
    assert any("drop columns customer_id" in line for line in notes["understood"])
    assert any("time-ordered split on signup_date" in line for line in notes["understood"])
    assert notes["not_understood"] == [
        "SETUP.md line 7: Oversample the minority class.",
        "SETUP.md line 8: - weighting: by spend",
    ]


def test_it_splits_by_group_and_honours_no_stratification(workspace, customers):
    domain = _domain(workspace, dataset="- group column: `store`\nDo not stratify the split.\n- test ratio: 0.3")
    task_generate(task=task_of(domain))
    task = task_of(domain)
    X_train, X_test, _, _ = _load(workspace, task)
    assert not set(X_train["store"].astype(str)) & set(X_test["store"].astype(str))
    assert 0.15 < len(X_test) / len(customers) < 0.45
    assert "no stratification" in " ".join(task.setup_notes["understood"])


def test_the_cli_hint_is_read_like_setup_lines_and_shown_back(workspace, customers):
    domain = _domain(workspace)
    out = io.StringIO()
    call_command("dojo_task", "--domain", domain.name, "generate", "--with", "template",
                 "--hint", "drop the column `visits`\nbalance the classes", stdout=out)
    text = out.getvalue()
    assert "understood: hint line 1: drop columns visits" in text
    assert "not understood (ignored): hint line 2: balance the classes" in text
    X_train, *_ = _load(workspace, task_of(domain))
    assert "visits" not in X_train.columns and "spend" in X_train.columns
    shown = io.StringIO()
    call_command("dojo_task", "--domain", domain.name, "show", stdout=shown)
    assert "not understood (ignored): hint line 2: balance the classes" in shown.getvalue()
    with pytest.raises(CommandError, match="hint line 1"):
        call_command("dojo_task", "--domain", domain.name, "generate", "--hint", "- test ratio: nope", stdout=io.StringIO())


def test_the_api_and_the_task_page_pass_the_hint(client_logged_in, workspace, customers):
    domain = _domain(workspace)
    response = client_logged_in.post(
        f"/api/domains/{domain.pk}/task/tools/generate",
        {"method": "template", "hint": "the test set is 30% of the rows\nuse only weekdays"},
        content_type="application/json",
    )
    assert response.status_code == 200, response.content
    shown = client_logged_in.get(f"/api/domains/{domain.pk}/task").json()
    assert shown["config"]["test_ratio"] == 0.3
    assert shown["setup_notes"]["not_understood"] == ["hint line 2: use only weekdays"]
    assert shown["setup_notes"]["hint"].startswith("the test set is 30%")
    bad = client_logged_in.post(f"/api/domains/{domain.pk}/task/tools/generate", {"hint": "x" * 5000},
                                content_type="application/json")
    assert bad.status_code == 422

    page = client_logged_in.post(f"/domains/{domain.pk}/task/generate/",
                                 {"method": "template", "hint": "drop `store`\nremove outliers"}, HTTP_HX_REQUEST="true")
    body = page.content.decode()
    assert page.status_code == 200 and "Not understood" in body and "hint line 2: remove outliers" in body
    assert 'name="hint"' in body and "drop `store`" in body
    X_train, *_ = _load(workspace, task_of(domain))
    assert "store" not in X_train.columns


def test_the_scaffold_is_understood_whole(workspace, customers):
    domain = make_domain(workspace, task_type="binary", data_path="data/customers.csv", target_column="churned",
                         id_columns="customer_id")
    task_generate(task=task_of(domain))
    notes = task_of(domain).setup_notes
    assert notes["not_understood"] == []
    said = " ".join(notes["understood"])
    assert "test ratio 0.2" in said and "seed 42" in said and "holdout ratio 0.5" in said and "primary metric roc_auc" in said
