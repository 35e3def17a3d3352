"""Knowledge pages. Views parse, fetch, call one service and respond."""

from django.contrib.auth.decorators import login_required
from django.db.models import Case, IntegerField, Prefetch, QuerySet, Value, When
from django.http import HttpRequest, HttpResponse
from django.shortcuts import get_object_or_404, render

from dojo_site.errors import DojoError
from domains.permissions import knowledge_visible_q, web_domain_get
from knowledge.forms import KnowledgeSearchForm
from knowledge.models import Evidence, KnowledgeAtom
from knowledge.services import atom_search

SEARCH_RESULTS = 50
RECENT_ATOMS = 30


def _atoms_for_display(atoms: QuerySet[KnowledgeAtom]) -> QuerySet[KnowledgeAtom]:
    """Active first, then most confident and newest; evidence and experiments fetched at once."""
    evidence = Evidence.objects.select_related("experiment").order_by("experiment_id")
    return (
        atoms.select_related("domain", "supersedes")
        .prefetch_related(Prefetch("evidence_links", queryset=evidence))
        .annotate(
            status_rank=Case(
                When(status=KnowledgeAtom.Status.ACTIVE, then=Value(0)),
                When(status=KnowledgeAtom.Status.SUPERSEDED, then=Value(1)),
                default=Value(2),
                output_field=IntegerField(),
            )
        )
        .order_by("status_rank", "-confidence", "-created_at", "-pk")
    )


@login_required
def knowledge_search(request: HttpRequest) -> HttpResponse:
    form = KnowledgeSearchForm(request.GET or None, user=request.user)
    query, atoms = "", []
    if form.is_valid():
        query = form.cleaned_data["q"].strip()
    if query:
        try:
            atoms = atom_search(
                query=query, domain=form.cleaned_data["domain"], limit=SEARCH_RESULTS,
                visible=knowledge_visible_q(request.user),
            )
        except DojoError as exc:
            form.add_error("q", str(exc))
        status = form.cleaned_data.get("status")
        if status:
            atoms = [atom for atom in atoms if atom.status == status]
    else:
        recent = KnowledgeAtom.objects.filter(knowledge_visible_q(request.user), status=KnowledgeAtom.Status.ACTIVE)
        if form.is_valid() and form.cleaned_data["domain"]:
            recent = recent.filter(domain=form.cleaned_data["domain"])
        atoms = list(recent.select_related("domain").order_by("-created_at", "-pk")[:RECENT_ATOMS])
    context = {"form": form, "query": query, "atoms": atoms}
    template = "knowledge/partials/search_results.html" if request.htmx else "knowledge/search.html"
    return render(request, template, context)


@login_required
def knowledge_domain_list(request: HttpRequest, domain_id: int) -> HttpResponse:
    domain = web_domain_get(request.user, domain_id)
    atoms = list(_atoms_for_display(domain.atoms.all()))
    context = {
        "domain": domain,
        "active": [a for a in atoms if a.status == KnowledgeAtom.Status.ACTIVE],
        "history": [a for a in atoms if a.status != KnowledgeAtom.Status.ACTIVE],
    }
    # The domain page's Knowledge tab loads the fragment; a plain visit gets the whole page.
    template = "knowledge/partials/domain_knowledge.html" if request.htmx else "knowledge/domain_list.html"
    return render(request, template, context)


@login_required
def knowledge_detail(request: HttpRequest, pk: int) -> HttpResponse:
    atom = get_object_or_404(_atoms_for_display(KnowledgeAtom.objects.filter(knowledge_visible_q(request.user))), pk=pk)
    newer = atom.newer_versions()
    context = {
        "atom": atom,
        # Newest first: the versions that replaced this one, this one, the ones it replaced.
        "versions": [*reversed(newer), atom, *atom.older_versions()],
        "latest": newer[-1] if newer else None,
        "evidence": list(atom.evidence_links.all()),
        "related": list(atom.related.filter(knowledge_visible_q(request.user)).select_related("domain").order_by("-pk")),
    }
    return render(request, "knowledge/detail.html", context)
