from datetime import datetime
from typing import Literal

from django.http import HttpRequest
from ninja import Router, Schema, Status

from dojo_site.errors import NotFound
from dojo_site.schemas import Id
from domains.models import Domain
from domains.permissions import domain_get_for_user
from domains.services import (
    domain_create,
    domain_delete,
    domain_git_sync,
    domain_update,
    task_create,
    task_for_domain,
    task_freeze,
    task_generate,
    task_status,
    task_tools_import,
    task_tools_save,
    task_unfreeze,
    task_update,
    task_verify,
)

router = Router(tags=["domains"])

# --- Domains ---------------------------------------------------------------------------------

TaskTypeName = Literal["regression", "binary", "multiclass"]
DomainStatus = Literal["active", "paused", "archived"]


class DomainIn(Schema):
    name: str
    task_type: TaskTypeName
    workspace: str = ""
    git_url: str = ""
    git_ref: str = ""
    description: str = ""
    data_path: str = ""
    target_column: str = ""
    metric: str = ""
    id_columns: list[str] = []


class DomainPatch(Schema):
    name: str | None = None
    description: str | None = None
    status: DomainStatus | None = None
    workspace_python: str | None = None
    env_vars: dict[str, str] | None = None


class TaskSummaryOut(Schema):
    task_type: str
    primary_metric: str
    direction: str
    expected_metrics: list[str]
    config: dict
    contract_version: int
    frozen_at: datetime | None
    fingerprint: str


class DomainOut(Schema):
    id: int
    name: str
    description: str
    status: str
    workspace_path: str
    workspace_python: str
    git_url: str
    git_ref: str
    git_commit: str
    env_python: str
    env_state: str
    env_vars: dict
    program_path: str
    setup_path: str
    created_at: datetime
    updated_at: datetime
    task: TaskSummaryOut | None

    @staticmethod
    def resolve_task(obj: Domain):
        return obj.task_or_none


def _get_domain(domain_id: int) -> Domain:
    domain = Domain.objects.select_related("task").filter(pk=domain_id).first()
    if domain is None:
        raise NotFound(f"no domain with id {domain_id}")
    return domain


@router.get("/domains", response=list[DomainOut])
def domains_list(request: HttpRequest):
    return Domain.objects.select_related("task")


@router.post("/domains", response={201: DomainOut})
def domains_create(request: HttpRequest, payload: DomainIn):
    return Status(201, domain_create(**payload.dict()))


@router.get("/domains/{domain_id}", response=DomainOut)
def domains_show(request: HttpRequest, domain_id: Id):
    return _get_domain(domain_id)


@router.patch("/domains/{domain_id}", response=DomainOut)
def domains_update(request: HttpRequest, domain_id: Id, payload: DomainPatch):
    return domain_update(domain=_get_domain(domain_id), **payload.dict(exclude_unset=True))


@router.delete("/domains/{domain_id}", response={204: None})
def domains_delete(request: HttpRequest, domain_id: Id):
    domain_delete(domain=_get_domain(domain_id))
    return Status(204, None)


class SyncIn(Schema):
    ref: str | None = None


class SyncOut(Schema):
    previous: str
    commit: str
    ref: str
    changed_files: list[str]
    contract_files_changed: list[str]


@router.post("/domains/{domain_id}/workspace/sync", response=SyncOut)
def workspace_sync(request: HttpRequest, domain_id: Id, payload: SyncIn):
    """Fetch the git workspace and check out `ref` (default: the domain's recorded ref)."""
    domain = domain_get_for_user(request.user, domain_id, "own")
    return domain_git_sync(domain=domain, ref=payload.ref)


# --- end of domains --------------------------------------------------------------------------


# --- Task ------------------------------------------------------------------------------------
# The evaluation contract of a domain. Editing the tools of a frozen task is a 409.


class TaskCreateIn(Schema):
    task_type: TaskTypeName
    metric: str = ""
    config: dict = {}


class TaskPatch(Schema):
    primary_metric: str | None = None
    config: dict | None = None


class TaskOut(Schema):
    domain: str
    task_type: str
    state: str
    frozen: bool
    frozen_at: str | None
    primary_metric: str
    direction: str
    expected_metrics: list[str]
    config: dict
    contract_version: int
    fingerprint: str
    tools_fingerprint: str
    data_fingerprint: str
    snapshot_path: str
    snapshot: dict
    unfrozen_at: str | None
    unfreeze_reason: str
    tools: dict
    isolation: str
    isolation_hint: str


class ToolOut(Schema):
    id: int
    name: str
    version: int
    is_current: bool
    origin: str
    code: str
    code_sha256: str
    verified: bool
    verified_ok: bool | None
    verification_errors: list
    verification_sample: dict
    verification_seconds: float | None
    verified_at: datetime | None
    verified_code_sha256: str
    raw_reply: str
    created_at: datetime

    @staticmethod
    def resolve_verified(obj) -> bool:
        return obj.is_verified


class ToolsGenerateIn(Schema):
    method: Literal["auto", "template", "claude"] = "auto"


class ToolsImportIn(Schema):
    load_data: str | None = None
    evaluate: str | None = None


class ToolCodeIn(Schema):
    code: str


class ToolCheckOut(Schema):
    ok: bool
    errors: list[str]
    sample: dict
    seconds: float | None


class VerifyOut(Schema):
    ok: bool
    isolation: str
    seconds: float
    load_data: ToolCheckOut
    evaluate: ToolCheckOut


class UnfreezeIn(Schema):
    reason: str


def _task(domain_id: int):
    return task_for_domain(domain=_get_domain(domain_id))


@router.get("/domains/{domain_id}/task", response=TaskOut, tags=["task"])
def task_show(request: HttpRequest, domain_id: Id):
    return task_status(task=_task(domain_id))


@router.post("/domains/{domain_id}/task", response={201: TaskOut}, tags=["task"])
def task_create_endpoint(request: HttpRequest, domain_id: Id, payload: TaskCreateIn):
    task = task_create(domain=_get_domain(domain_id), **payload.dict())
    return Status(201, task_status(task=task))


@router.patch("/domains/{domain_id}/task", response=TaskOut, tags=["task"])
def task_update_endpoint(request: HttpRequest, domain_id: Id, payload: TaskPatch):
    task = task_update(task=_task(domain_id), **payload.dict(exclude_unset=True))
    return task_status(task=task)


@router.get("/domains/{domain_id}/task/tools", response=list[ToolOut], tags=["task"])
def task_tools_list(request: HttpRequest, domain_id: Id, history: bool = False):
    """The current version of each tool; `?history=true` lists every version, newest first."""
    tools = _task(domain_id).tools.all()
    return tools if history else tools.filter(is_current=True)


@router.post("/domains/{domain_id}/task/tools/generate", response=list[ToolOut], tags=["task"])
def task_tools_generate(request: HttpRequest, domain_id: Id, payload: ToolsGenerateIn):
    return task_generate(task=_task(domain_id), method=payload.method)


@router.post("/domains/{domain_id}/task/tools/import", response=list[ToolOut], tags=["task"])
def task_tools_import_endpoint(request: HttpRequest, domain_id: Id, payload: ToolsImportIn):
    return task_tools_import(task=_task(domain_id), load_data=payload.load_data, evaluate=payload.evaluate)


@router.post("/domains/{domain_id}/task/tools/verify", response=VerifyOut, tags=["task"])
def task_tools_verify(request: HttpRequest, domain_id: Id):
    """Runs both tools in the sandbox; a failed verification is a 200 with ok=false and the errors."""
    run = task_verify(task=_task(domain_id))
    checks = {
        check.name: {"ok": check.ok, "errors": check.errors, "sample": check.sample, "seconds": check.seconds}
        for check in (run.load_data, run.evaluate)
    }
    return {"ok": run.ok, "isolation": run.isolation, "seconds": run.seconds, **checks}


@router.post("/domains/{domain_id}/task/freeze", response=TaskOut, tags=["task"])
def task_freeze_endpoint(request: HttpRequest, domain_id: Id):
    return task_status(task=task_freeze(task=_task(domain_id)))


@router.post("/domains/{domain_id}/task/unfreeze", response=TaskOut, tags=["task"])
def task_unfreeze_endpoint(request: HttpRequest, domain_id: Id, payload: UnfreezeIn):
    return task_status(task=task_unfreeze(task=_task(domain_id), reason=payload.reason))


# Last: its {name} would otherwise catch tools/verify, tools/generate and tools/import.
@router.put("/domains/{domain_id}/task/tools/{name}", response=ToolOut, tags=["task"])
def task_tool_update(request: HttpRequest, domain_id: Id, name: str, payload: ToolCodeIn):
    return task_tools_save(task=_task(domain_id), codes={name: payload.code}, origin="human")[0]
