"""A short plain-text snippet of a message for the timeline, safe to show anywhere.

HTML is reduced to text with ``nh3`` (an HTML sanitiser built on ammonia):
every tag is stripped and the content of ``script``/``style`` dropped, then
entities are unescaped and whitespace collapsed.  The result is plain text, not
HTML: whoever renders it must escape it like any other text.
"""

from __future__ import annotations

import html
import re

import nh3

SNIPPET_LENGTH = 300
# enough text to fill a snippet after tags and whitespace go, without sanitising megabytes
_SOURCE_LIMIT = 64 * 1024
_WHITESPACE = re.compile(r"\s+")
# control characters other than whitespace have no business in a one-line preview
_CONTROL = re.compile(r"[\x00-\x08\x0b\x0c\x0e-\x1f\x7f]")


def html_to_text(markup: str) -> str:
    text = _WHITESPACE.sub(" ", nh3.clean(markup[:_SOURCE_LIMIT], tags=set(), attributes={}))
    # unescaping only what can reach the snippet: an entity is at most ~10 characters for one
    return html.unescape(text[: SNIPPET_LENGTH * 10])


def _flat(source: str) -> str:
    return _WHITESPACE.sub(" ", _CONTROL.sub("", source)).strip()


def snippet(text: str, markup: str | None) -> str:
    """Up to 300 characters of the message body: the text part, or the HTML part reduced to text."""
    source = text[:_SOURCE_LIMIT] if text.strip() else html_to_text(markup or "")
    # Flattening a prefix of the source gives a prefix of the flattened whole: flatten a few times
    # the snippet's length, more only if that was not enough (the regexes over 64 KB were most of an
    # apply).
    read = SNIPPET_LENGTH * 4
    flat = _flat(source[:read])
    while len(flat) <= SNIPPET_LENGTH and read < len(source):
        read *= 4
        flat = _flat(source[:read])
    if len(flat) <= SNIPPET_LENGTH:
        return flat
    return flat[: SNIPPET_LENGTH - 1].rstrip() + "…"
