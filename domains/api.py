import json
from datetime import datetime
from typing import Literal

from django.http import HttpRequest
from ninja import Field, Query, Router, Schema, Status

from dojo_site.errors import InvalidInput
from dojo_site.schemas import Id, ListOut, Offset
from domains.models import Domain, DomainChange, DomainMember
from domains.permissions import domain_get_for_user, domain_may, domains_for_user
from domains.services import (
    domain_create,
    domain_delete,
    domain_env_request,
    domain_git_sync,
    domain_member_remove,
    domain_member_set,
    domain_update,
    domain_workspace_scan,
    domain_workspace_status,
    task_create,
    task_delete,
    task_for_domain,
    task_freeze,
    task_generate,
    task_job_enqueue,
    task_status,
    task_tools_import,
    task_tools_save,
    task_unfreeze,
    task_update,
    task_verify,
    tasks_inline,
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
    hide_holdout_from_viewers: bool | None = None


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
    owner: str | None
    hide_holdout_from_viewers: bool
    created_at: datetime
    updated_at: datetime
    task: TaskSummaryOut | None

    @staticmethod
    def resolve_task(obj: Domain):
        return obj.task_or_none

    @staticmethod
    def resolve_owner(obj: Domain) -> str | None:
        return obj.owner.username if obj.owner_id else None

    @staticmethod
    def resolve_env_vars(obj: Domain, context) -> dict:
        # Env vars often carry keys: members who are not the owner see the names only.
        if domain_may(context["request"].user, obj, "own"):
            return obj.env_vars
        return dict.fromkeys(obj.env_vars, "(hidden)")


class MemberIn(Schema):
    username: str
    role: Literal["viewer", "editor"] = "viewer"


class MemberOut(Schema):
    username: str
    role: str
    created_at: datetime

    @staticmethod
    def resolve_username(obj: DomainMember) -> str:
        return obj.user.username


class DomainChangeOut(Schema):
    field: str
    old_value: str
    new_value: str
    user: str | None
    created_at: datetime

    @staticmethod
    def resolve_user(obj: DomainChange) -> str | None:
        return obj.user.username if obj.user_id else None


def _get_domain(request: HttpRequest, domain_id: int, action: str = "view") -> Domain:
    return domain_get_for_user(request.user, domain_id, action)


@router.get("/domains", response=ListOut[DomainOut])
def domains_list(request: HttpRequest, limit: int = Query(100, ge=1, le=500), offset: Offset = 0):
    """The domains the user sees, by name: one page (`limit`, `offset`) and the total `count`."""
    domains = domains_for_user(request.user).select_related("task", "owner").order_by("name", "pk")
    return {"items": list(domains[offset:offset + limit]), "count": domains.count()}


@router.post("/domains", response={201: DomainOut})
def domains_create(request: HttpRequest, payload: DomainIn):
    return Status(201, domain_create(**payload.dict(), owner=request.user))


@router.get("/domains/{domain_id}", response=DomainOut)
def domains_show(request: HttpRequest, domain_id: Id):
    return _get_domain(request, domain_id)


@router.patch("/domains/{domain_id}", response=DomainOut)
def domains_update(request: HttpRequest, domain_id: Id, payload: DomainPatch):
    """Owner only. A new workspace_python must answer with its version when run in the sandbox (else 422)."""
    domain = _get_domain(request, domain_id, "own")
    return domain_update(domain=domain, **payload.dict(exclude_unset=True), user=request.user)


@router.delete("/domains/{domain_id}", response={204: None})
def domains_delete(request: HttpRequest, domain_id: Id):
    domain_delete(domain=_get_domain(request, domain_id, "own"))
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
    domain = _get_domain(request, domain_id, "own")
    return domain_git_sync(domain=domain, ref=payload.ref)


class EnvSetupIn(Schema):
    run_setup_script: bool = False


@router.post("/domains/{domain_id}/workspace/setup", response={202: dict})
def workspace_setup(request: HttpRequest, domain_id: Id, payload: EnvSetupIn):
    """Owner only. Queue building the workspace's environment (requirements.txt / pyproject.toml,
    and setup.sh when `run_setup_script`); poll `GET .../workspace` for its state and log."""
    domain = _get_domain(request, domain_id, "own")
    domain = domain_env_request(domain=domain, run_setup_script=payload.run_setup_script)
    return Status(202, domain_workspace_status(domain=domain))


@router.get("/domains/{domain_id}/workspace", response=dict)
def workspace_status(request: HttpRequest, domain_id: Id):
    """Exists, writable, git commit, environment (state, interpreter, build log), interpreter version."""
    return domain_workspace_status(domain=_get_domain(request, domain_id))


@router.post("/domains/{domain_id}/workspace/scan", response=dict)
def workspace_scan(request: HttpRequest, domain_id: Id):
    """Data files (shapes, column types, likely target and ID columns), scorer-like functions, and
    suggestions, each with the SETUP.md text it would give (`setup_text`; write it with the file
    endpoint to confirm). Nothing is written."""
    return domain_workspace_scan(domain=_get_domain(request, domain_id, "edit"))


@router.get("/domains/{domain_id}/members", response=list[MemberOut])
def domains_members(request: HttpRequest, domain_id: Id):
    return _get_domain(request, domain_id).members.select_related("user")


@router.post("/domains/{domain_id}/members", response={201: MemberOut})
def domains_member_add(request: HttpRequest, domain_id: Id, payload: MemberIn):
    """Owner only: add a member or change their role."""
    domain = _get_domain(request, domain_id, "own")
    return Status(201, domain_member_set(domain=domain, username=payload.username, role=payload.role))


@router.delete("/domains/{domain_id}/members", response={204: None})
def domains_member_remove(request: HttpRequest, domain_id: Id, username: str):
    """Owner only: `?username=NAME` stops being a member."""
    domain_member_remove(domain=_get_domain(request, domain_id, "own"), username=username)
    return Status(204, None)


@router.get("/domains/{domain_id}/history", response=list[DomainChangeOut])
def domains_history(request: HttpRequest, domain_id: Id):
    """Changes of the workspace, the interpreter and the env vars, newest first."""
    domain = _get_domain(request, domain_id)
    changes = list(domain.changes.select_related("user"))
    if not domain_may(request.user, domain, "own"):
        for change in changes:  # env vars often carry keys: their values are the owner's to see
            if change.field == "env_vars":
                change.old_value = change.new_value = "(hidden)"
    return changes


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
    audit: list
    audit_blocks_freeze: bool
    audit_override: dict
    tools: dict
    isolation: str
    isolation_hint: str
    setup_notes: dict = {}
    job: dict = {}


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
    # Extra instructions: read like SETUP.md lines by the template, in the prompt for Claude.
    hint: str = Field("", max_length=4000)


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


class JobOut(Schema):
    job: dict
    status_url: str


def _job_queued(request: HttpRequest, domain_id: int, kind: str, params: dict | None = None):
    """DOJO_INLINE_TASKS=False: queue the job for a worker; 202 with where to watch it."""
    task = task_job_enqueue(task=_task(request, domain_id, "own"), kind=kind, params=params)
    return Status(202, {"job": task_status(task=task)["job"], "status_url": f"/api/domains/{domain_id}/task"})


class UnfreezeIn(Schema):
    reason: str


def _task(request: HttpRequest, domain_id: int, action: str = "view"):
    return task_for_domain(domain=_get_domain(request, domain_id, action))


@router.get("/domains/{domain_id}/task", response=TaskOut, tags=["task"])
def task_show(request: HttpRequest, domain_id: Id):
    return task_status(task=_task(request, domain_id))


@router.post("/domains/{domain_id}/task", response={201: TaskOut}, tags=["task"])
def task_create_endpoint(request: HttpRequest, domain_id: Id, payload: TaskCreateIn):
    task = task_create(domain=_get_domain(request, domain_id, "own"), **payload.dict())
    return Status(201, task_status(task=task))


@router.delete("/domains/{domain_id}/task", response={204: None}, tags=["task"])
def task_delete_endpoint(request: HttpRequest, domain_id: Id):
    """Delete the domain's unfrozen task (409 when it is frozen)."""
    task_delete(task=_task(request, domain_id, "own"))
    return Status(204, None)


@router.get("/domains/{domain_id}/metrics", tags=["domains"])
def domain_metrics(request: HttpRequest, domain_id: Id, run: Id | None = None) -> dict:
    """The primary metric over the domain's completed experiments, in creation order, for charts:
    parallel arrays `ids`, `validation`, `holdout` (empty when hidden from this user) and `best`
    (best validation so far); `?run=ID` narrows to one agent run."""
    from domains.permissions import holdout_visible
    from experiments.analysis import history_data

    domain = _get_domain(request, domain_id)
    data = history_data(domain=domain, run=run)
    if not holdout_visible(request.user, domain):
        data["holdout"] = []
    return data


@router.patch("/domains/{domain_id}/task", response=TaskOut, tags=["task"])
def task_update_endpoint(request: HttpRequest, domain_id: Id, payload: TaskPatch):
    task = task_update(task=_task(request, domain_id, "own"), **payload.dict(exclude_unset=True))
    return task_status(task=task)


@router.get("/domains/{domain_id}/task/tools", response=ListOut[ToolOut], tags=["task"])
def task_tools_list(request: HttpRequest, domain_id: Id, history: bool = False):
    """The current version of each tool; `?history=true` lists every version, newest first."""
    tools = _task(request, domain_id).tools.all()
    items = list(tools if history else tools.filter(is_current=True))
    return {"items": items, "count": len(items)}


@router.post("/domains/{domain_id}/task/tools/generate", response={200: list[ToolOut], 202: JobOut}, tags=["task"])
def task_tools_generate(request: HttpRequest, domain_id: Id, payload: ToolsGenerateIn):
    """With DOJO_INLINE_TASKS=False: 202 and the job; `GET .../task` shows it until done."""
    if not tasks_inline():
        return _job_queued(request, domain_id, "generate", {"method": payload.method, "hint": payload.hint})
    return task_generate(task=_task(request, domain_id, "own"), method=payload.method, hint=payload.hint)


@router.post("/domains/{domain_id}/task/tools/import", response=list[ToolOut], tags=["task"])
def task_tools_import_endpoint(request: HttpRequest, domain_id: Id, payload: ToolsImportIn):
    return task_tools_import(task=_task(request, domain_id, "own"), load_data=payload.load_data, evaluate=payload.evaluate)


@router.post("/domains/{domain_id}/task/tools/verify", response={200: VerifyOut, 202: JobOut}, tags=["task"])
def task_tools_verify(request: HttpRequest, domain_id: Id):
    """Runs both tools in the sandbox; a failed verification is a 200 with ok=false and the errors.
    With DOJO_INLINE_TASKS=False: 202 and the job; `GET .../task` shows it (failed: its errors)."""
    if not tasks_inline():
        return _job_queued(request, domain_id, "verify")
    run = task_verify(task=_task(request, domain_id, "own"))
    checks = {
        check.name: {"ok": check.ok, "errors": check.errors, "sample": check.sample, "seconds": check.seconds}
        for check in (run.load_data, run.evaluate)
    }
    return {"ok": run.ok, "isolation": run.isolation, "seconds": run.seconds, **checks}


@router.post("/domains/{domain_id}/task/freeze", response={200: TaskOut, 202: JobOut}, tags=["task"])
def task_freeze_endpoint(request: HttpRequest, domain_id: Id):
    """Body optional: {"override_audit": "reason"} freezes despite severe leak-audit findings (recorded).
    With DOJO_INLINE_TASKS=False: 202 and the job; `GET .../task` shows it until done."""
    if not tasks_inline():
        return _job_queued(request, domain_id, "freeze",
                           {"override_reason": _override_audit(request), "by": request.user.get_username()})
    return task_status(task=task_freeze(task=_task(request, domain_id, "own"), override_reason=_override_audit(request),
                                        by=request.user.get_username()))


def _override_audit(request: HttpRequest) -> str:
    # Parsed by hand rather than by a ninja body: freeze has always been a POST without a body.
    if request.content_type != "application/json" or not request.body.strip():
        return ""
    try:
        data = json.loads(request.body)
    except ValueError:
        raise InvalidInput('the body must be JSON: {"override_audit": "why you freeze anyway"}') from None
    value = data.get("override_audit", "") if isinstance(data, dict) else None
    if not isinstance(value, str) or len(value) > 2000:
        raise InvalidInput("override_audit must be a string of at most 2000 characters")
    return value


@router.post("/domains/{domain_id}/task/unfreeze", response=TaskOut, tags=["task"])
def task_unfreeze_endpoint(request: HttpRequest, domain_id: Id, payload: UnfreezeIn):
    return task_status(task=task_unfreeze(task=_task(request, domain_id, "own"), reason=payload.reason))


# Last: its {name} would otherwise catch tools/verify, tools/generate and tools/import.
@router.put("/domains/{domain_id}/task/tools/{name}", response=ToolOut, tags=["task"])
def task_tool_update(request: HttpRequest, domain_id: Id, name: str, payload: ToolCodeIn):
    return task_tools_save(task=_task(request, domain_id, "own"), codes={name: payload.code}, origin="human")[0]
