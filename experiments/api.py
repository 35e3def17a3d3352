from datetime import datetime
from typing import Literal

from django.http import FileResponse, HttpRequest, HttpResponse
from ninja import Router, Schema, Status

from dojo_site.errors import Forbidden, NotFound
from dojo_site.schemas import Id, ListOut, Offset, Seed
from domains.models import Domain
from domains.permissions import domain_get_for_user, domain_require, holdout_visible
from domains.services import tasks_inline
from experiments.models import Artifact, Experiment
from experiments.services import (
    artifact_open,
    experiment_enqueue,
    experiment_get,
    experiment_leaderboard,
    experiment_run,
)

router = Router(tags=["experiments"])


Sort = Literal["rank", "validation", "holdout", "created"]
State = Literal["pending", "running", "completed", "failed", "stopped", "archived"]


class ArtifactOut(Schema):
    id: int
    path: str
    size: int
    content_type: str
    source: str
    url: str

    @staticmethod
    def resolve_url(obj: Artifact) -> str:
        return f"/api/experiments/{obj.experiment_id}/artifacts/{obj.pk}"


class ExperimentOut(Schema):
    id: int
    domain_id: int
    run_id: int | None
    parent_id: int | None
    state: str
    hypothesis: str
    variables: dict
    metrics: dict
    holdout_metrics: dict
    primary_value: float | None
    holdout_primary_value: float | None
    error: str
    warnings: list
    code_sha256: str
    seed: int | None
    train_seconds: float | None
    total_seconds: float | None
    peak_memory_mb: float | None
    task_fingerprint: str
    data_fingerprint: str
    environment: dict
    provenance: dict
    isolation: str
    code_flags: list
    audit_trail: list
    cv_value: float | None
    cv_rows: int | None
    rank_value: float | None
    seed_spread: float | None
    seed_count: int
    validation_ci: dict
    holdout_ci: dict
    probe_of_id: int | None
    quarantine_state: str
    quarantine_reasons: list
    created_at: datetime
    finished_at: datetime | None


class ExperimentDetailOut(ExperimentOut):
    stdout_tail: str
    stderr_tail: str
    artifacts: list[ArtifactOut]

    @staticmethod
    def resolve_artifacts(obj: Experiment):
        artifacts = list(obj.artifacts.all())
        if getattr(obj, "hidden_artifacts", False):
            artifacts = [a for a in artifacts if not a.is_holdout]
        return artifacts


class ExperimentIn(Schema):
    code: str
    hypothesis: str = ""
    variables: dict = {}
    parent_id: Id | None = None
    seed: Seed | None = None


class CodeOut(Schema):
    id: int
    code: str
    code_sha256: str
    parent_id: int | None
    parent_code: str | None


def _domain(request: HttpRequest, domain_id: int, action: str = "view") -> Domain:
    return domain_get_for_user(request.user, domain_id, action)


def _experiment(request: HttpRequest, experiment_id: int) -> Experiment:
    """The experiment when the user may see its domain (else 404), holdout blanked when hidden from them."""
    exp = experiment_get(experiment_id=experiment_id)
    try:
        domain_require(request.user, exp.domain, "view")
    except NotFound:
        raise NotFound(f"experiment #{experiment_id} does not exist") from None
    return _shown(request, exp.domain, exp)


class QueuedOut(Schema):
    experiment: ExperimentDetailOut
    status_url: str


def _shown(request: HttpRequest, domain: Domain, exp: Experiment) -> Experiment:
    if not holdout_visible(request.user, domain):
        exp.holdout_blanked()
        exp.hidden_artifacts = True
    return exp


@router.get("/domains/{domain_id}/experiments", response=ListOut[ExperimentOut])
def experiments_list(request: HttpRequest, domain_id: Id, sort: Sort = "rank", state: State | None = None,
                     limit: int = 50, offset: Offset = 0):
    """A domain's experiments ranked by `sort`: one page (`limit` 1–500, `offset`) and the total `count`."""
    limit = max(1, min(limit, 500))
    domain = _domain(request, domain_id)
    if sort == "holdout" and not holdout_visible(request.user, domain):
        raise Forbidden("the owner hides holdout values from viewers: sort by validation or created")
    qs = experiment_leaderboard(domain=domain, sort=sort, state=state)
    # The list shows no code and no logs: leave the widest columns in the database.
    items = list(qs.defer("train_code", "stdout_tail", "stderr_tail")[offset: offset + limit])
    if not holdout_visible(request.user, domain):  # asked once for the page, not per row
        for exp in items:
            exp.holdout_blanked()
            exp.hidden_artifacts = True
    return {"items": items, "count": qs.count()}


@router.post("/domains/{domain_id}/experiments", response={201: ExperimentDetailOut, 202: QueuedOut})
def experiments_create(request: HttpRequest, domain_id: Id, payload: ExperimentIn):
    """Run one experiment by hand; synchronous, returns it completed or failed. With
    DOJO_INLINE_TASKS=False: 202, the experiment `pending` and its URL (`pending`, `running`, then
    the result)."""
    domain = _domain(request, domain_id, "edit")
    if not tasks_inline():
        exp = experiment_enqueue(
            domain=domain, train_code=payload.code, hypothesis=payload.hypothesis,
            variables=payload.variables, parent=payload.parent_id, seed=payload.seed,
        )
        return Status(202, {"experiment": _shown(request, domain, exp), "status_url": f"/api/experiments/{exp.pk}"})
    exp = experiment_run(
        domain=domain, train_code=payload.code, hypothesis=payload.hypothesis,
        variables=payload.variables, parent=payload.parent_id, seed=payload.seed,
    )
    return Status(201, _shown(request, domain, exp))


@router.get("/experiments/{experiment_id}", response=ExperimentDetailOut)
def experiments_show(request: HttpRequest, experiment_id: Id):
    return _experiment(request, experiment_id)


@router.get("/experiments/{experiment_id}/code", response=CodeOut)
def experiments_code(request: HttpRequest, experiment_id: Id):
    exp = _experiment(request, experiment_id)
    return {"id": exp.pk, "code": exp.train_code, "code_sha256": exp.code_sha256, "parent_id": exp.parent_id,
            "parent_code": exp.parent.train_code if exp.parent else None}


@router.get("/experiments/{experiment_id}/artifacts/{artifact_id}")
def experiments_artifact(request: HttpRequest, experiment_id: Id, artifact_id: Id) -> HttpResponse:
    exp = _experiment(request, experiment_id)
    artifact = Artifact.objects.filter(experiment_id=experiment_id, pk=artifact_id).first()
    if artifact is None or (artifact.is_holdout and getattr(exp, "hidden_artifacts", False)):
        raise NotFound(f"experiment {experiment_id} has no artifact {artifact_id}")
    return FileResponse(artifact_open(artifact=artifact), as_attachment=True, filename=artifact.filename,
                        content_type=artifact.content_type or "application/octet-stream")
