from django import forms

from domains.models import Domain
from knowledge.models import KnowledgeAtom


class KnowledgeSearchForm(forms.Form):
    q = forms.CharField(required=False, max_length=500, label="Search")
    domain = forms.ModelChoiceField(
        queryset=Domain.objects.all(), required=False, empty_label="All domains"
    )
    status = forms.ChoiceField(
        choices=[("", "Any status"), *KnowledgeAtom.Status.choices], required=False
    )
