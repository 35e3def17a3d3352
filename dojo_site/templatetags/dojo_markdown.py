from django import template
from django.utils.safestring import SafeString

from dojo_site.markdown import markdown_html

register = template.Library()


@register.filter(name="markdown")
def markdown_filter(text: str) -> SafeString:
    return markdown_html(text)
