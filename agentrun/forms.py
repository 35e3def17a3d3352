from django import forms
from django.conf import settings
from django.core.validators import MaxValueValidator

from agentrun.backends import BACKENDS

BACKEND_LABELS = {"builtin": "Built-in researcher (no LLM)", "claude": "Claude (Agent SDK)"}


class RunStartForm(forms.Form):
    backend = forms.ChoiceField()
    max_experiments = forms.IntegerField(min_value=1, required=False, help_text="Empty: no limit.")
    max_minutes = forms.FloatField(min_value=0.1, required=False, help_text="Wall clock. Empty: the server's limit.")
    max_turns = forms.IntegerField(min_value=1, required=False, help_text="Model turns (Claude).")
    budget_usd = forms.FloatField(min_value=0.0001, required=False, label="Budget (USD)")
    prompt = forms.CharField(
        widget=forms.Textarea(attrs={"rows": 4}),
        required=False,
        label="Prompt override",
        help_text="Leave empty to use PROGRAM.md as it is now.",
    )

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.fields["backend"].choices = [(name, BACKEND_LABELS.get(name, name)) for name in BACKENDS]
        self.fields["backend"].initial = settings.DOJO_DEFAULT_BACKEND
        # Read at request time: the limit is a setting, and django-q2's timeout sits above it.
        limit = settings.DOJO_RUN_MAX_SECONDS / 60
        self.fields["max_minutes"].validators.append(MaxValueValidator(limit))
        self.fields["max_minutes"].widget.attrs["max"] = limit

    def clean_prompt(self) -> str | None:
        return self.cleaned_data["prompt"].strip() or None
