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


# The file is shown inside a page section: its "# Goal" must not be a second page title (one h1 per
# page, and the section's own heading is an h2), so headings move down two levels, h6 at most.
_HEADING_SHIFT = 2


def markdown_html(text: str) -> SafeString:
    """Sanitised HTML for `text` (links keep http/https/mailto/relative; no scripts, no styles
    beyond table alignment, no event handlers; headings demoted by _HEADING_SHIFT)."""
    tokens = _MD.parse(text or "")
    for token in tokens:
        if token.type in ("heading_open", "heading_close"):
            token.tag = f"h{min(6, int(token.tag[1]) + _HEADING_SHIFT)}"
    html = _MD.renderer.render(tokens, _MD.options, {})
    clean = nh3.clean(
        html, tags=_TAGS, attributes=_ATTRIBUTES, url_schemes={"http", "https", "mailto"},
        link_rel="noopener noreferrer nofollow", filter_style_properties={"text-align"},
    )
    return mark_safe(clean)  # noqa: S308 - sanitised by nh3 just above
