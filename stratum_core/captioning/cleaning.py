"""Turn a model's answer into one clean paragraph: collapse whitespace, drop markup and leading preambles."""

from __future__ import annotations

import re

_SUBJECT = r"(?:image|photo|photograph|picture|scene|shot|frame|illustration)"

# Leading phrases that describe the answer instead of the image. Applied repeatedly, so
# "Sure! Here is a description: The image shows a man" loses all three.
PREAMBLES: tuple[re.Pattern[str], ...] = tuple(re.compile(p, re.IGNORECASE) for p in (
    r"^(?:sure|okay|ok|certainly|of course)\b[,.!]*\s*",
    r"^here(?:'s| is) (?:a |an |the |my )?(?:[\w-]+ ){0,3}(?:description|caption)"
    rf"(?: (?:of|for) (?:the|this) {_SUBJECT})?\s*[:.\-]\s*",
    r"^(?:description|caption)\s*:\s*",
    rf"^in (?:the|this) {_SUBJECT}\s*,\s*",
    rf"^(?:the|this) {_SUBJECT} (?:shows|showcases|depicts|features|presents|captures|displays|portrays"
    r"|illustrates|highlights|contains)"
    r"(?: that)?\s*[:,]?\s*",
    rf"^this is (?:a|an) {_SUBJECT} (?:of|showing|depicting)\s+",
))

_MARKUP = re.compile(r"\*\*|__|^#+\s*|^[-*•]\s+", re.MULTILINE)
# A heading or bullet mark that a removed preamble leaves at the start ("This image shows: - a man"):
# the lines are joined by then, so `_MARKUP` saw it mid-line.
_LEADING_MARKUP = re.compile(r"^(?:#+\s*|[-*•]\s+)")
_QUOTES = "\"'“”‘’`"


def strip_preambles(text: str) -> str:
    """Remove leading preambles (and the markup they uncover) until none matches; re-capitalise the rest."""
    changed = True
    while changed:
        changed = False
        for pattern in (*PREAMBLES, _LEADING_MARKUP):
            stripped = pattern.sub("", text, count=1)
            if stripped != text:
                text, changed = stripped.lstrip(), True
    return text[:1].upper() + text[1:]


# Control characters that are not whitespace: C0 (NUL, ESC, ...), DEL and C1. Tabs, line breaks
# and the other whitespace controls collapse to spaces below instead.
_CONTROL = re.compile(r"[\x00-\x08\x0e-\x1b\x7f-\x84\x86-\x9f]")

# Most characters a stored caption keeps (about 1,500 words); the token limit normally ends an
# answer long before this, so only a runaway server reaches it.
MAX_CAPTION_CHARS = 8192


def clean_caption(text: str) -> str:
    """One paragraph with single spaces, no control characters and no preamble; "" when nothing is left."""
    text = _CONTROL.sub("", text)
    text = _MARKUP.sub("", text)
    text = " ".join(text.split()).strip(_QUOTES + " ")
    return strip_preambles(text).strip(_QUOTES + " ")


def cap_caption(text: str, limit: int = MAX_CAPTION_CHARS) -> tuple[str, bool]:
    """(text, cut): at most `limit` characters, cut at the last space before it where there is one."""
    if len(text) <= limit:
        return text, False
    cut = text[:limit + 1]
    space = cut.rfind(" ")
    return (cut[:space] if space > limit // 2 else text[:limit]).rstrip(), True
