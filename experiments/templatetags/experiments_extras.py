"""Small filters for the analysis pages (looking up a column, formatting a cell)."""

import json
import math

from django import template

register = template.Library()


@register.filter
def get(mapping, key):
    return mapping.get(key) if isinstance(mapping, dict) else None


@register.filter
def index(sequence, position):
    try:
        return sequence[position]
    except (IndexError, TypeError, KeyError):
        return None


@register.filter
def cellformat(value) -> str:
    """A metric or param as a person reads it: floats to 5 significant digits, other JSON as JSON."""
    if value is None:
        return "–"
    if isinstance(value, bool):
        return str(value).lower()
    if isinstance(value, float):
        return f"{value:.5g}" if math.isfinite(value) else str(value)
    if isinstance(value, int | str):
        return str(value)
    return json.dumps(value, default=str)[:200]
