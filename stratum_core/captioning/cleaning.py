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


def clean_caption(text: str) -> str:
    """One paragraph with single spaces and no preamble; "" when nothing is left."""
    text = _MARKUP.sub("", text)
    text = " ".join(text.split()).strip(_QUOTES + " ")
    return strip_preambles(text).strip(_QUOTES + " ")
