"""wikifil-style cleaning of enwik8 XML (spec §1), the paper's data preparation.

Per ``<text ...>...</text>`` body: drop #REDIRECT lines, ``<ref>...</ref>``, ``{{templates}}``
(innermost first, repeated so nesting unwinds), ``{|tables|}``, bold/italic quote runs, Category /
Image / File links and interlanguage links; unwrap ``[[link|text]]`` to its visible text; strip
URLs and remaining brackets; drop ``==headers==``; turn ``&lt; &gt; &quot; &amp; &nbsp;`` into
spaces; drop HTML tags and list/indent lines; collapse 3+ newlines; trim; keep only printable
ASCII, space, newline and "⏎". Articles are joined with "\\n".

Choices where the spec is silent (the reference's regexes were not reproduced verbatim): an
interlanguage link is ``[[xx:...]]`` / ``[[xx-yy:...]]`` with a 2-3 letter code; a list/indent
line starts with ``*``, ``#``, ``:`` or ``;``; "printable ASCII" is 0x20-0x7E.
"""

from __future__ import annotations

import re

_TEXT = re.compile(r"<text[^>]*>(.*?)</text>", re.S)
_SUBS = [
    (re.compile(r"^#REDIRECT.*$", re.M | re.I), ""),
    (re.compile(r"&lt;ref[^&]*?/&gt;|<ref[^>]*/>", re.S), ""),
    (re.compile(r"(&lt;|<)ref.*?(&lt;|<)/ref(&gt;|>)", re.S), ""),
    (re.compile(r"\{\|.*?\|\}", re.S), ""),
    (re.compile(r"'{2,}"), ""),
    (re.compile(r"\[\[(?:Category|Image|File):[^\[\]]*(?:\[\[[^\]]*\]\][^\[\]]*)*\]\]", re.I), ""),
    (re.compile(r"\[\[[a-z]{2,3}(?:-[a-z]+)?:[^\]]*\]\]"), ""),
    (re.compile(r"\[\[(?:[^\]|]*\|)?([^\]]*)\]\]"), r"\1"),
    (re.compile(r"\[?(?:https?|ftp)://\S*"), ""),
    (re.compile(r"^=+.*?=+\s*$", re.M), ""),
    (re.compile(r"&(?:lt|gt|quot|amp|nbsp);"), " "),
    (re.compile(r"<[^>]*>"), ""),
    (re.compile(r"^[*#:;].*$", re.M), ""),
    (re.compile(r"[\[\]]"), ""),
]
_TEMPLATE = re.compile(r"\{\{[^{}]*\}\}")
_NL3 = re.compile(r"\n{3,}")
_NOT_ALLOWED = re.compile(r"[^\x20-\x7e\n⏎]")


def clean_article(body: str) -> str:
    prev = None
    while prev != body:  # unwind nested templates from the inside
        prev, body = body, _TEMPLATE.sub("", body)
    for rx, rep in _SUBS:
        body = rx.sub(rep, body)
    body = _NL3.sub("\n\n", body)
    return _NOT_ALLOWED.sub("", body).strip()


def clean_wiki(xml: str) -> str:
    """Cleaned text of every non-empty article, each followed by a newline."""
    arts = (clean_article(m.group(1)) for m in _TEXT.finditer(xml))
    return "".join(a + "\n" for a in arts if a)


def looks_like_wiki_xml(text: str) -> bool:
    head = text[:10_000]
    return "<mediawiki" in head or ("<page>" in head and "<text" in text[:200_000])
