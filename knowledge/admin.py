from django import forms
from django.contrib import admin, messages
from django.contrib.admin import helpers
from django.db.models import Count, QuerySet
from django.http import HttpRequest, HttpResponse
from django.template.response import TemplateResponse

from dojo_site.errors import DojoError
from domains.admin import DomainScopedAdmin
from domains.permissions import knowledge_visible_q
from knowledge.models import Evidence, KnowledgeAtom
from knowledge.services import atom_restore, atom_retract, atom_set_confidence, atoms_merge


class EvidenceInline(admin.TabularInline):
    model = Evidence
    extra = 0
    fields = ["experiment", "stance", "created_at"]
    readonly_fields = ["created_at"]
    raw_id_fields = ["experiment"]


class ConfidenceForm(forms.Form):
    confidence = forms.FloatField(min_value=0.0, max_value=1.0, help_text="From 0 (doubtful) to 1 (certain).")


@admin.register(KnowledgeAtom)
class KnowledgeAtomAdmin(DomainScopedAdmin):
    change_action = "edit"
    list_display = [
        "id", "short_claim", "domain", "status", "confidence", "version", "contradictions",
        "evidence_count", "created_at",
    ]
    list_display_links = ["id", "short_claim"]
    list_filter = ["status", "domain"]
    search_fields = ["claim", "context", "action"]
    list_select_related = ["domain"]
    date_hierarchy = "created_at"
    # Linking and versioning write these; curation goes through the actions so history stays whole.
    readonly_fields = [
        "domain", "status", "version", "supersedes", "contradictions", "created_by_run",
        "created_by_user", "created_at", "updated_at",
    ]
    fields = [
        "domain", "context", "claim", "action", "confidence", "related", "status", "version",
        "supersedes", "contradictions", "created_by_run", "created_by_user", "created_at",
        "updated_at",
    ]
    autocomplete_fields = ["related"]
    inlines = [EvidenceInline]
    actions = ["retract", "restore", "merge", "set_confidence"]

    def get_queryset(self, request: HttpRequest) -> QuerySet[KnowledgeAtom]:
        # Global atoms too (no domain): admin.ModelAdmin's queryset, narrowed by the same rule as the pages.
        qs = admin.ModelAdmin.get_queryset(self, request)
        if not request.user.is_superuser:
            qs = qs.filter(knowledge_visible_q(request.user))
        return qs.annotate(evidence_total=Count("evidence_links"))

    def has_add_permission(self, request: HttpRequest) -> bool:
        # New atoms must go through atom_write (API, agents) so they are linked to similar ones.
        return False

    @admin.display(description="claim", ordering="claim")
    def short_claim(self, atom: KnowledgeAtom) -> str:
        return atom.claim if len(atom.claim) <= 90 else atom.claim[:89] + "…"

    @admin.display(description="evidence", ordering="evidence_total")
    def evidence_count(self, atom: KnowledgeAtom) -> int:
        return atom.evidence_total

    def _each(self, request: HttpRequest, queryset: QuerySet[KnowledgeAtom], service, verb: str) -> None:
        done = 0
        for atom in queryset:
            try:
                service(atom=atom)
                done += 1
            except DojoError as exc:
                self.message_user(request, str(exc), messages.WARNING)
        if done:
            self.message_user(request, f"{verb} {done} atom(s).", messages.SUCCESS)

    @admin.action(description="Retract the selected atoms", permissions=["change"])
    def retract(self, request: HttpRequest, queryset: QuerySet[KnowledgeAtom]) -> None:
        self._each(request, queryset, atom_retract, "Retracted")

    @admin.action(description="Restore the selected retracted atoms", permissions=["change"])
    def restore(self, request: HttpRequest, queryset: QuerySet[KnowledgeAtom]) -> None:
        self._each(request, queryset, atom_restore, "Restored")

    @admin.action(description="Merge the selected atoms into one new version", permissions=["change"])
    def merge(self, request: HttpRequest, queryset: QuerySet[KnowledgeAtom]) -> None:
        try:
            atom = atoms_merge(atoms=list(queryset), user=request.user)
        except DojoError as exc:
            self.message_user(request, str(exc), messages.ERROR)
            return
        self.message_user(
            request, f"Merged {queryset.count()} atoms into atom {atom.pk} (v{atom.version}).", messages.SUCCESS
        )

    @admin.action(description="Set the confidence of the selected atoms…", permissions=["change"])
    def set_confidence(self, request: HttpRequest, queryset: QuerySet[KnowledgeAtom]) -> HttpResponse | None:
        # First call shows the form; its submit posts the action again with "apply".
        form = ConfidenceForm(request.POST if "apply" in request.POST else None)
        if form.is_valid():
            for atom in queryset:
                atom_set_confidence(atom=atom, confidence=form.cleaned_data["confidence"])
            self.message_user(
                request,
                f"Set confidence {form.cleaned_data['confidence']:g} on {queryset.count()} atom(s).",
                messages.SUCCESS,
            )
            return None
        context = {
            **self.admin_site.each_context(request),
            "title": "Set confidence",
            "opts": self.model._meta,
            "atoms": queryset,
            "form": form,
            "action_checkbox_name": helpers.ACTION_CHECKBOX_NAME,
        }
        return TemplateResponse(request, "admin/knowledge/set_confidence.html", context)


@admin.register(Evidence)
class EvidenceAdmin(DomainScopedAdmin):
    domain_lookup = "experiment__domain"
    change_action = "edit"
    list_display = ["id", "atom", "experiment", "stance", "created_at"]
    list_filter = ["stance", "atom__domain"]
    search_fields = ["atom__claim", "experiment__hypothesis"]
    list_select_related = ["atom", "experiment"]
    raw_id_fields = ["atom", "experiment"]
    readonly_fields = ["atom", "experiment", "created_at"]

    def has_add_permission(self, request: HttpRequest) -> bool:
        return False
