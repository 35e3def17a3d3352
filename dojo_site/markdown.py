"""Markdown for PROGRAM.md and SETUP.md on the pages: markdown-it-py (CommonMark + tables and
strikethrough) with raw HTML off, then nh3 (the ammonia sanitiser) as a second line of defence.
The files are written by people and agents alike; what reaches the page is plain formatting."""

import nh3
from django.utils.safestring import SafeString, mark_safe
from markdown_it import MarkdownIt

_MD = MarkdownIt("commonmark", {"html": False, "linkify": False}).enable(["table", "strikethrough"])
_TAGS = {
    "p", "br", "hr", "h1", "h2", "h3", "h4", "h5", "h6", "strong", "em", "s", "del", "code", "pre",
    "blockquote", "ul", "ol", "li", "a", "table", "thead", "tbody", "tr", "th", "td", "img",
}
_ATTRIBUTES = {"a": {"href", "title"}, "img": {"src", "alt", "title"}, "ol": {"start"}, "th": {"style"}, "td": {"style"}}


def markdown_html(text: str) -> SafeString:
    """Sanitised HTML for `text` (links keep http/https/mailto/relative; no scripts, no styles
    beyond table alignment, no event handlers)."""
    html = _MD.render(text or "")
    clean = nh3.clean(
        html, tags=_TAGS, attributes=_ATTRIBUTES, url_schemes={"http", "https", "mailto"},
        link_rel="noopener noreferrer nofollow", filter_style_properties={"text-align"},
    )
    return mark_safe(clean)  # noqa: S308 - sanitised by nh3 just above
