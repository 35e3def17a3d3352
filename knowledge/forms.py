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

    def __init__(self, *args, user=None, **kwargs) -> None:
        from domains.permissions import domains_for_user

        super().__init__(*args, **kwargs)
        # Only the domains this user may see are offered (and accepted).
        self.fields["domain"].queryset = domains_for_user(user)
