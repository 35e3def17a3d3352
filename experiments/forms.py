from django import forms

from experiments.models import Experiment

SORT_CHOICES = [("validation", "Validation metric"), ("holdout", "Holdout metric"), ("created", "Newest")]


class ExperimentFilterForm(forms.Form):
    sort = forms.ChoiceField(choices=SORT_CHOICES, required=False)
    state = forms.ChoiceField(choices=[("", "Any state"), *Experiment.State.choices], required=False)
    page = forms.IntegerField(min_value=1, required=False)
