from datetime import datetime
from typing import Literal

from django.db.models import QuerySet
from django.http import HttpRequest
from ninja import Field, Query, Router, Schema, Status

from dojo_site.errors import NotFound
from dojo_site.schemas import Id, ListOut, Offset
from domains.models import Domain
from domains.permissions import domain_get_for_user, knowledge_global_require, knowledge_visible_q
from knowledge.models import Evidence, KnowledgeAtom
from knowledge.services import (
    SEARCH_LIMIT_MAX,
    atom_retract,
    atom_search_page,
    atom_write,
    atoms_for_display,
)

router = Router(tags=["knowledge"])

AtomStatus = Literal["active", "superseded", "retracted"]
StanceName = Literal["supports", "contradicts"]
LIST_LIMIT_MAX = 500


class EvidenceIn(Schema):
    experiment_id: Id
    stance: StanceName = "supports"


class AtomIn(Schema):
    domain_id: Id | None = Field(None, description="Null writes global knowledge.")
    context: str = Field(..., description="When this applies.")
    claim: str = Field(..., description="What was found.")
    action: str = ""
    confidence: float = Field(0.5, ge=0, le=1)
    evidence: list[EvidenceIn] = []


class EvidenceOut(Schema):
    experiment_id: int
    stance: str
    claim: str = Field("", description="The claim it is evidence for when not the atom's own (merged atoms).")


class AtomOut(Schema):
    id: int
    domain_id: int | None
    domain: str | None
    context: str
    claim: str
    action: str
    confidence: float
    status: str
    version: int
    supersedes_id: int | None
    contradictions: int
    created_by_run_id: int | None
    created_by_user_id: int | None
    created_at: datetime
    updated_at: datetime
    evidence: list[EvidenceOut]
    url: str

    @staticmethod
    def resolve_domain(obj: KnowledgeAtom) -> str | None:
        return obj.domain.name if obj.domain_id else None

    @staticmethod
    def resolve_evidence(obj: KnowledgeAtom) -> list[Evidence]:
        return list(obj.evidence_links.all())

    @staticmethod
    def resolve_url(obj: KnowledgeAtom) -> str:
        return obj.get_absolute_url()


class AtomSearchOut(AtomOut):
    score: float


class AtomWriteOut(Schema):
    outcome: Literal["created", "versioned", "contradicted"]
    atom: AtomOut
    matched_id: int | None = Field(None, description="The near-duplicate that decided the outcome.")
    similarity: float


class AtomDetailOut(AtomOut):
    versions: list[AtomOut] = Field(..., description="Every version of this finding, newest first.")
    related: list[AtomOut]

    @staticmethod
    def resolve_versions(obj: KnowledgeAtom) -> list[KnowledgeAtom]:
        newer = obj.newer_versions()
        return [*reversed(newer), obj, *obj.older_versions()]

    @staticmethod
    def resolve_related(obj: KnowledgeAtom, context) -> list[KnowledgeAtom]:
        visible = knowledge_visible_q(context["request"].user)
        return list(_atoms().filter(visible, related=obj).order_by("-pk"))


class KnowledgeListQuery(Schema):
    domain_id: Id | None = None
    status: AtomStatus | None = None
    limit: int = Field(100, ge=1, le=LIST_LIMIT_MAX)
    offset: Offset = 0


class KnowledgeSearchQuery(Schema):
    query: str = Field(..., min_length=1)
    domain_id: Id | None = None
    status: AtomStatus | None = None
    limit: int = Field(10, ge=1, le=SEARCH_LIMIT_MAX)
    offset: Offset = 0


def _atoms() -> QuerySet[KnowledgeAtom]:
    return atoms_for_display(KnowledgeAtom.objects.all())


def _get_domain(request: HttpRequest, domain_id: int | None, action: str = "view") -> Domain | None:
    if domain_id is None:
        return None
    return domain_get_for_user(request.user, domain_id, action)


def _get_atom(request: HttpRequest, atom_id: int) -> KnowledgeAtom:
    atom = _atoms().filter(knowledge_visible_q(request.user), pk=atom_id).first()
    if atom is None:
        raise NotFound(f"no knowledge atom with id {atom_id}")
    return atom


@router.get("/knowledge", response=ListOut[AtomOut])
def knowledge_list(request: HttpRequest, filters: Query[KnowledgeListQuery]):
    """Atoms, most confident first; filter by domain and status. One page and the total `count`."""
    atoms = _atoms().filter(knowledge_visible_q(request.user)).order_by("-confidence", "-created_at", "-pk")
    if filters.domain_id is not None:
        atoms = atoms.filter(domain=_get_domain(request, filters.domain_id))
    if filters.status is not None:
        atoms = atoms.filter(status=filters.status)
    return {"items": list(atoms[filters.offset:filters.offset + filters.limit]), "count": atoms.count()}


@router.get("/knowledge/search", response=ListOut[AtomSearchOut])
def knowledge_search(request: HttpRequest, params: Query[KnowledgeSearchQuery]):
    """Atoms ranked for a query (active first, then relevance); one domain plus global atoms, or
    every domain the user sees. One page and the total `count` of matches."""
    page = atom_search_page(
        query=params.query, domain=_get_domain(request, params.domain_id), status=params.status,
        limit=params.limit, offset=params.offset, visible=knowledge_visible_q(request.user),
    )
    return {"items": page.atoms, "count": page.count}


@router.post("/knowledge", response={201: AtomWriteOut})
def knowledge_create(request: HttpRequest, payload: AtomIn):
    """Write an atom through linking: it may create, version or contradict an existing atom.
    Needs the editor role on the domain; global atoms (no domain_id) are written by staff only."""
    domain = _get_domain(request, payload.domain_id, "edit")
    if domain is None:
        knowledge_global_require(request.user)
    result = atom_write(
        domain=domain,
        context=payload.context,
        claim=payload.claim,
        action=payload.action,
        confidence=payload.confidence,
        evidence=[(e.experiment_id, e.stance) for e in payload.evidence],
        user=request.user if request.user.is_authenticated else None,
    )
    return Status(201, {
        "outcome": result.outcome,
        "atom": _get_atom(request, result.atom.pk),
        "matched_id": result.matched.pk if result.matched else None,
        "similarity": result.similarity,
    })


@router.delete("/knowledge/{atom_id}", response=AtomOut)
def knowledge_retract(request: HttpRequest, atom_id: Id):
    """Retract an atom: it is marked wrong and kept as a record (ranked last), not erased.
    Needs the editor role on its domain; global atoms are retracted by staff only. 409 when it
    is already retracted."""
    atom = _get_atom(request, atom_id)
    if atom.domain_id is None:
        knowledge_global_require(request.user)
    else:
        _get_domain(request, atom.domain_id, "edit")
    atom_retract(atom=atom)
    return _get_atom(request, atom_id)


@router.get("/knowledge/{atom_id}", response=AtomDetailOut)
def knowledge_show(request: HttpRequest, atom_id: Id):
    return _get_atom(request, atom_id)
