import factory

from domains.models import Domain


class DomainFactory(factory.django.DjangoModelFactory):
    class Meta:
        model = Domain

    name = factory.Sequence(lambda n: f"domain-{n}")
    workspace_path = factory.LazyFunction(lambda: "/tmp")
    program_path = factory.LazyAttribute(lambda o: f"{o.workspace_path}/PROGRAM.md")
    setup_path = factory.LazyAttribute(lambda o: f"{o.workspace_path}/SETUP.md")


# --- Frozen domains (experiments harness; shared by agentrun / researcher tests) --------------
# The first call per loader runs the real pipeline (domain_create + task_setup: template
# generation, sandboxed verification, freeze with its snapshot); later calls clone its rows and
# copy its snapshot into the current DOJO_HOME, which takes milliseconds instead of seconds.
_FROZEN_TEMPLATES: dict[str, dict] = {}


def frozen_domain(
    *, workspace, loader: str = "load_diabetes", name: str | None = None, config: dict | None = None,
    share_snapshot: bool = False,
):
    """A frozen domain on one of scikit-learn's bundled datasets (load_diabetes → regression,
    load_breast_cancer → binary, load_wine → multiclass). `config` is merged into task.config
    (e.g. {"limits": {"timeout_seconds": 5}}). Needs DB access (use in a django_db test).
    share_snapshot=True points the task at the session's cached snapshot instead of a copy, so
    warm harness processes (keyed by snapshot and workspace) carry over between tests."""
    import shutil
    import tempfile
    from pathlib import Path

    from django.conf import settings
    from django.forms.models import model_to_dict

    from domains.generation import SKLEARN_LOADERS
    from domains.models import Task, TaskTool
    from domains.services import domain_create, task_setup

    workspace = Path(workspace)
    name = name or f"{loader.removeprefix('load_').replace('_', '-')}-{Domain.objects.count() + 1}"
    template = _FROZEN_TEMPLATES.get(loader)
    if template is None:
        domain = domain_create(
            name=name, task_type=SKLEARN_LOADERS[loader], workspace=workspace, data_path=f"sklearn:{loader}"
        )
        task = task_setup(task=domain.task)
        keep = Path(tempfile.mkdtemp(prefix=f"dojo-frozen-{loader}-")) / Path(task.snapshot_path).name
        shutil.copytree(task.snapshot_path, keep)
        _FROZEN_TEMPLATES[loader] = {
            "task": model_to_dict(task, exclude=["id", "domain", "snapshot_path"]),
            "tools": [model_to_dict(t, exclude=["id", "task"]) for t in task.tools.all()],
            "snapshot": keep,
            "task_type": SKLEARN_LOADERS[loader],
        }
    else:
        domain = domain_create(
            name=name, task_type=template["task_type"], workspace=workspace, data_path=f"sklearn:{loader}"
        )
        snapshot = Path(settings.DOJO_HOME) / "snapshots" / f"domain-{domain.pk}" / template["snapshot"].name
        if share_snapshot:
            snapshot = template["snapshot"]
        else:
            shutil.copytree(template["snapshot"], snapshot)
        Task.objects.filter(domain=domain).update(**template["task"], snapshot_path=str(snapshot))
        for tool in template["tools"]:
            TaskTool.objects.create(task=domain.task, **tool)
    if config:
        task = Task.objects.get(domain=domain)
        task.config = {**task.config, **config}
        task.save(update_fields=["config"])
    return type(domain).objects.select_related("task").get(pk=domain.pk)


class TaskFactory(factory.django.DjangoModelFactory):
    """An unfrozen regression task on a DomainFactory domain (no files: use domain_create for those)."""

    class Meta:
        model = "domains.Task"

    domain = factory.SubFactory(DomainFactory)
    task_type = "regression"
    primary_metric = "rmse"
    direction = "minimize"
    expected_metrics = factory.LazyFunction(lambda: ["rmse", "mae", "r2"])
    config = factory.LazyFunction(
        lambda: {"data_path": "", "target_column": "", "id_columns": [], "test_ratio": 0.2, "seed": 42, "holdout_ratio": 0.5}
    )
