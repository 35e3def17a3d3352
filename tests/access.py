"""A small world for access tests: one domain owned by "olga" holding one of everything (task,
experiment with holdout values and a holdout artifact, run with events, atom), a viewer "vera", an
editor "eddie" and a stranger "sam" with no role. Every secret marker appears somewhere a leak
would show it."""

from dataclasses import dataclass

from django.conf import settings

from agentrun.models import AgentEvent, AgentRun
from domains.models import Domain, DomainMember
from experiments.models import Artifact, Experiment
from knowledge.models import KnowledgeAtom
from tests.factories import DomainFactory, TaskFactory

DOMAIN_NAME = "olgas-secret-domain"
HYPOTHESIS = "olgas-secret-hypothesis"
CLAIM = "olgas secret claim about gradient boosting"
HOLDOUT_VALUE = 0.123456789
MARKERS = (DOMAIN_NAME, HYPOTHESIS, "olgas secret claim")


@dataclass
class World:
    owner: object
    editor: object
    viewer: object
    stranger: object
    domain: Domain
    experiment: Experiment
    artifact: Artifact
    holdout_artifact: Artifact
    run: AgentRun
    atom: KnowledgeAtom


def world_build(django_user_model, workspace) -> World:
    make = django_user_model.objects.create_user
    owner, editor, viewer, stranger = (make(username=n, password="pw-for-tests-only") for n in ("olga", "eddie", "vera", "sam"))
    for name in ("PROGRAM.md", "SETUP.md"):
        (workspace / name).write_text(f"# {name}\n")
    domain = DomainFactory(name=DOMAIN_NAME, owner=owner, workspace_path=str(workspace))
    TaskFactory(domain=domain)
    DomainMember.objects.create(domain=domain, user=editor, role="editor")
    DomainMember.objects.create(domain=domain, user=viewer, role="viewer")
    run = AgentRun.objects.create(domain=domain, backend="builtin", status=AgentRun.Status.COMPLETED, created_by=owner)
    AgentEvent.objects.create(run=run, seq=1, type=AgentEvent.Type.FINALIZED, data={"status": "completed"})
    experiment = Experiment.objects.create(
        domain=domain, run=run, hypothesis=HYPOTHESIS, train_code="def train(X_train, y_train, X_test, *, artifacts_dir): ...",
        code_sha256="0" * 64, state=Experiment.State.COMPLETED, metrics={"rmse": 1.5}, primary_value=1.5,
        holdout_metrics={"rmse": HOLDOUT_VALUE}, holdout_primary_value=HOLDOUT_VALUE,
        holdout_ci={"rmse": [HOLDOUT_VALUE - 0.01, HOLDOUT_VALUE + 0.01]},
    )
    artifacts = []
    for path in ("train/notes.txt", "evaluate/holdout/residuals.txt"):
        file = settings.DOJO_HOME / "artifacts" / str(experiment.pk) / path
        file.parent.mkdir(parents=True, exist_ok=True)
        file.write_text(f"holdout {HOLDOUT_VALUE}" if "holdout" in path else "notes")
        artifacts.append(Artifact.objects.create(
            experiment=experiment, path=path, size=file.stat().st_size, content_type="text/plain",
            source="evaluate" if "holdout" in path else "train",
        ))
    atom = KnowledgeAtom.objects.create(domain=domain, context="tabular regression", claim=CLAIM, confidence=0.7)
    return World(owner, editor, viewer, stranger, domain, experiment, artifacts[0], artifacts[1], run, atom)
