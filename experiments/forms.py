from django import forms

from experiments.models import Experiment


class ExperimentFilterForm(forms.Form):
    """The leaderboard's URL (GET): sort, direction, filters, page. Columns (`cols`, repeated) are
    read separately. A field with a bad value is dropped (the page shows its default) rather than
    failing the whole page: these URLs are bookmarked and hand-edited."""

    sort = forms.CharField(required=False, max_length=40)
    dir = forms.ChoiceField(choices=[("", "natural"), ("asc", "ascending"), ("desc", "descending")], required=False)
    state = forms.ChoiceField(choices=[("", "Any state"), *Experiment.State.choices], required=False)
    run = forms.IntegerField(min_value=1, max_value=2**63 - 1, required=False)
    family = forms.CharField(required=False, max_length=100)
    q = forms.CharField(required=False, max_length=200, strip=True)
    page = forms.IntegerField(min_value=1, max_value=10**9, required=False)

    def values(self) -> dict:
        """Every valid field's value; invalid ones left out (their defaults apply)."""
        self.is_valid()
        return {name: value for name, value in self.cleaned_data.items() if name not in self.errors}
