from pathlib import Path

import pytest

from dojo_site.errors import Conflict, InvalidInput, NotFound
from domains import services
from domains.models import CurrentDomain, Domain, Task
from domains.services import (
    domain_create,
    domain_current,
    domain_delete,
    domain_file_read,
    domain_file_write,
    domain_resolve,
    domain_update,
    domain_use,
)

pytestmark = pytest.mark.django_db


def _create(workspace, **kwargs):
    options = {"name": "houses", "task_type": "regression", "workspace": workspace} | kwargs
    return domain_create(**options)


def test_it_creates_the_domain_its_unfrozen_task_and_both_files(workspace):
    domain = _create(
        workspace, data_path="data/train.csv", target_column="price", id_columns=["id"], description="Predict prices."
    )

    task = domain.task
    assert domain.workspace_path == str(workspace)
    assert task.task_type == "regression"
    assert (task.primary_metric, task.direction) == ("rmse", "minimize")
    assert task.expected_metrics == ["rmse", "mae", "r2"]
    assert task.config == {
        "data_path": "data/train.csv", "target_column": "price", "id_columns": ["id"],
        "test_ratio": 0.2, "seed": 42, "holdout_ratio": 0.5,
    }
    assert not task.is_frozen
    program = (workspace / "PROGRAM.md").read_text()
    for heading in ("## Goal", "## Target", "## Success", "## Notes"):
        assert heading in program
    assert "Predict prices." in program
    setup = (workspace / "SETUP.md").read_text()
    assert "## Dataset" in setup and "## Evaluate" in setup
    assert "- data: data/train.csv" in setup and "- target: price" in setup and "- id columns: id" in setup
    assert domain_current() == domain


def test_it_writes_a_setup_md_the_template_generator_reads(workspace):
    from domains.generation import setup_parse

    domain = _create(workspace, data_path="data/train.csv", target_column="price", id_columns="id, uuid")
    spec = setup_parse(path=domain.file_path("setup"))

    assert (spec.data, spec.target, spec.id_columns, spec.loader) == ("data/train.csv", "price", ["id", "uuid"], "")


def test_it_writes_a_scikit_learn_loader_as_a_loader_line(workspace):
    from domains.generation import setup_parse

    domain = _create(workspace, data_path="sklearn:load_diabetes")

    assert "- loader: load_diabetes" in domain.file_path("setup").read_text()
    assert setup_parse(path=domain.file_path("setup")).loader == "load_diabetes"


def test_it_names_no_loader_when_no_data_was_given(workspace):
    from domains.generation import setup_parse

    spec = setup_parse(path=_create(workspace).file_path("setup"))

    assert (spec.loader, spec.data, spec.target) == ("", "", "")


def test_it_takes_a_chosen_metric_and_its_direction(workspace):
    task = _create(workspace, task_type="binary", metric="log_loss").task

    assert (task.primary_metric, task.direction) == ("log_loss", "minimize")
    assert task.expected_metrics == ["roc_auc", "log_loss", "accuracy", "f1"]


def test_it_keeps_existing_program_and_setup_files(workspace):
    (workspace / "PROGRAM.md").write_text("my own program\n")
    (workspace / "SETUP.md").write_text("my own setup\n")

    _create(workspace)

    assert (workspace / "PROGRAM.md").read_text() == "my own program\n"
    assert (workspace / "SETUP.md").read_text() == "my own setup\n"


def _assert_nothing_created(workspace):
    assert not Domain.objects.exists()
    assert not Task.objects.exists()
    assert not CurrentDomain.objects.exists()
    assert sorted(p.name for p in workspace.iterdir()) == []


@pytest.mark.parametrize(
    ("kwargs", "error", "message"),
    [
        ({"task_type": "classification"}, InvalidInput, "unknown task type 'classification'; choose one of: regression, binary, multiclass"),
        ({"metric": "roc_auc"}, InvalidInput, "metric 'roc_auc' is not a regression metric"),
        ({"name": "has space"}, InvalidInput, "invalid domain name 'has space'"),
        ({"name": ""}, InvalidInput, "invalid domain name ''"),
    ],
)
def test_it_refuses_bad_input_and_creates_nothing(workspace, kwargs, error, message):
    with pytest.raises(error, match=message.replace("(", r"\(").replace(")", r"\)")):
        _create(workspace, **kwargs)
    _assert_nothing_created(workspace)


def test_it_refuses_a_duplicate_name_and_leaves_the_first_alone(workspace, tmp_path):
    first = _create(workspace)
    other = tmp_path / "other"
    other.mkdir()

    with pytest.raises(Conflict, match="a domain named 'houses' already exists"):
        _create(other)

    assert list(Domain.objects.all()) == [first]
    assert list(other.iterdir()) == []


def test_it_refuses_a_missing_workspace(tmp_path):
    with pytest.raises(InvalidInput, match="workspace does not exist"):
        _create(tmp_path / "nope")
    assert not Domain.objects.exists()
    assert not (tmp_path / "nope").exists()


def test_it_refuses_the_filesystem_root_as_workspace():
    with pytest.raises(InvalidInput, match="cannot be the filesystem root"):
        _create("/")
    assert not Domain.objects.exists()
    assert not Path("/PROGRAM.md").exists()


def test_it_refuses_a_workspace_under_a_regular_file(tmp_path):
    (tmp_path / "file.txt").write_text("x")

    with pytest.raises(InvalidInput, match="workspace does not exist"):
        _create(tmp_path / "file.txt" / "ws")
    with pytest.raises(InvalidInput, match="workspace is not a directory"):
        _create(tmp_path / "file.txt")
    assert not Domain.objects.exists()


def test_it_refuses_a_setup_md_that_is_a_directory(workspace):
    (workspace / "SETUP.md").mkdir()

    with pytest.raises(InvalidInput, match="SETUP.md exists and is not a file"):
        _create(workspace)
    assert not Domain.objects.exists()
    assert not (workspace / "PROGRAM.md").exists()


def test_it_rolls_everything_back_when_a_file_write_fails(workspace, monkeypatch):
    real_write = services._write_new_file

    def write_then_fail_on_setup(path, text):
        if path.name == "SETUP.md":
            raise OSError(28, "No space left on device", str(path))
        return real_write(path, text)

    monkeypatch.setattr(services, "_write_new_file", write_then_fail_on_setup)

    with pytest.raises(InvalidInput, match="could not write .*SETUP.md: No space left on device"):
        _create(workspace)
    _assert_nothing_created(workspace)


def test_it_updates_fields_and_refuses_a_taken_name(workspace, tmp_path):
    domain = _create(workspace)
    other_ws = tmp_path / "o"
    other_ws.mkdir()
    _create(other_ws, name="other")

    domain_update(domain=domain, description="new goal", status="paused", env_vars={"A": "1"})
    domain.refresh_from_db()
    assert (domain.description, domain.status, domain.env_vars) == ("new goal", "paused", {"A": "1"})

    with pytest.raises(Conflict):
        domain_update(domain=domain, name="other")
    with pytest.raises(InvalidInput, match="unknown status 'gone'"):
        domain_update(domain=domain, status="gone")
    with pytest.raises(InvalidInput, match="workspace python is not an executable file"):
        domain_update(domain=domain, workspace_python=str(workspace / "PROGRAM.md"))
    domain.refresh_from_db()
    assert domain.name == "houses" and domain.status == "paused"


def test_it_switches_and_resolves_the_current_domain(workspace, tmp_path):
    first = _create(workspace)
    other_ws = tmp_path / "o"
    other_ws.mkdir()
    second = _create(other_ws, name="second")
    assert domain_resolve(name=None) == second

    domain_use(domain=first)

    assert domain_resolve(name=None) == first
    assert domain_resolve(name="second") == second
    assert domain_resolve(name=str(second.pk)) == second
    assert CurrentDomain.objects.count() == 1
    with pytest.raises(NotFound, match="no domain named 'nope'"):
        domain_resolve(name="nope")
    for odd in ("²", "9" * 5000):
        with pytest.raises(NotFound):
            domain_resolve(name=odd)


def test_it_says_how_to_get_a_current_domain_when_there_is_none():
    with pytest.raises(NotFound, match="dojo_init"):
        domain_resolve(name=None)


def test_it_deletes_the_domain_but_keeps_the_users_files(workspace):
    domain = _create(workspace)

    domain_delete(domain=domain)

    assert not Domain.objects.exists() and not Task.objects.exists()
    assert domain_current() is None
    assert (workspace / "PROGRAM.md").exists()


def test_it_reads_and_writes_program_and_setup(workspace):
    domain = _create(workspace)

    domain_file_write(domain=domain, which="program", text="# New\r\nline")

    assert (workspace / "PROGRAM.md").read_text() == "# New\nline\n"
    assert domain_file_read(domain=domain, which="program") == "# New\nline\n"
    (workspace / "SETUP.md").unlink()
    assert domain_file_read(domain=domain, which="setup") == ""
    assert sorted(p.name for p in workspace.iterdir()) == ["PROGRAM.md"]  # no temp file left
