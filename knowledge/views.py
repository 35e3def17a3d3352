"""Knowledge pages. Views parse, fetch, call one service and respond."""

from django.contrib.auth.decorators import login_required
from django.core.paginator import Paginator
from django.db.models import Case, Count, IntegerField, Q, QuerySet, Value, When
from django.http import HttpRequest, HttpResponse
from django.shortcuts import get_object_or_404, render

from dojo_site.errors import DojoError
from domains.permissions import knowledge_visible_q, web_domain_get
from knowledge.forms import KnowledgeSearchForm
from knowledge.models import KnowledgeAtom
from knowledge.services import atom_search_page, atoms_for_display

SEARCH_RESULTS = 25
RECENT_ATOMS = 25
DOMAIN_PAGE = 25


def _atoms_for_display(atoms: QuerySet[KnowledgeAtom]) -> QuerySet[KnowledgeAtom]:
    """Active first, then most confident and newest; domain and evidence links fetched at once."""
    return (
        atoms_for_display(atoms)
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


def _page_number(request: HttpRequest) -> int:
    try:
        return max(1, min(int(request.GET.get("page", 1)), 10**9))
    except ValueError:
        return 1


@login_required
def knowledge_search(request: HttpRequest) -> HttpResponse:
    form = KnowledgeSearchForm(request.GET or None, user=request.user)
    query, atoms, count = "", [], 0
    number = _page_number(request)
    if form.is_valid():
        query = form.cleaned_data["q"].strip()
    if query:
        try:
            found = atom_search_page(
                query=query, domain=form.cleaned_data["domain"], status=form.cleaned_data.get("status") or None,
                limit=SEARCH_RESULTS, offset=(number - 1) * SEARCH_RESULTS, visible=knowledge_visible_q(request.user),
            )
        except DojoError as exc:
            form.add_error("q", str(exc))
        else:
            atoms, count = found.atoms, found.count
    else:
        recent = KnowledgeAtom.objects.filter(knowledge_visible_q(request.user), status=KnowledgeAtom.Status.ACTIVE)
        if form.is_valid() and form.cleaned_data["domain"]:
            recent = recent.filter(domain=form.cleaned_data["domain"])
        atoms = list(atoms_for_display(recent).order_by("-created_at", "-pk")[:RECENT_ATOMS])
    pages = max(1, -(-count // SEARCH_RESULTS))
    context = {
        "form": form, "query": query, "atoms": atoms, "count": count, "page_number": min(number, pages),
        "pages": pages, "params": _params_without_page(request),
    }
    template = "knowledge/partials/search_results.html" if request.htmx else "knowledge/search.html"
    return render(request, template, context)


def _params_without_page(request: HttpRequest) -> str:
    params = request.GET.copy()
    params.pop("page", None)
    return params.urlencode()


# The domain's Knowledge tab: one status group at a time, a page at a time.
DOMAIN_GROUPS = {
    "active": [KnowledgeAtom.Status.ACTIVE],
    "history": [KnowledgeAtom.Status.SUPERSEDED, KnowledgeAtom.Status.RETRACTED],
}


@login_required
def knowledge_domain_list(request: HttpRequest, domain_id: int) -> HttpResponse:
    domain = web_domain_get(request.user, domain_id)
    group = request.GET.get("show", "active")
    if group not in DOMAIN_GROUPS:
        group = "active"
    counts = domain.atoms.aggregate(
        active=Count("pk", filter=Q(status__in=DOMAIN_GROUPS["active"])),
        history=Count("pk", filter=Q(status__in=DOMAIN_GROUPS["history"])),
    )
    atoms = _atoms_for_display(domain.atoms.filter(status__in=DOMAIN_GROUPS[group]))
    # The count is known already: the paginator need not ask again.
    paginator = Paginator(atoms, DOMAIN_PAGE)
    paginator.count = counts[group]
    page = paginator.get_page(request.GET.get("page"))
    context = {"domain": domain, "group": group, "counts": counts, "page": page, "atoms": list(page.object_list)}
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
        "evidence": list(
            atom.evidence_links.select_related("experiment").order_by("experiment_id").only(
                "stance", "claim", "atom_id", "experiment_id",
                "experiment__hypothesis", "experiment__state", "experiment__primary_value",
            )
        ),
        "related": list(atom.related.filter(knowledge_visible_q(request.user)).select_related("domain").order_by("-pk")),
    }
    context["merged_claims"] = any(ev.claim for ev in context["evidence"])
    return render(request, "knowledge/detail.html", context)
