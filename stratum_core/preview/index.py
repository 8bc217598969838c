"""The `index.html` beside the sheets: a page that opens from disk (relative links, no server, no network)."""

from __future__ import annotations

import html
from dataclasses import dataclass
from urllib.parse import quote

_STYLE = """
body { background: #202124; color: #e8eaed; font: 14px/1.45 system-ui, sans-serif; margin: 24px; }
h1 { font-size: 20px; font-weight: 600; margin: 0 0 4px; }
.sub { color: #9aa0a6; margin: 0 0 20px; }
main { display: grid; grid-template-columns: repeat(auto-fill, minmax(520px, 1fr)); gap: 20px; align-items: start; }
figure { margin: 0; background: #2a2b2f; border-radius: 6px; padding: 12px; }
figure img { width: 100%; height: auto; display: block; border-radius: 3px; }
figcaption { margin-top: 8px; }
.id { font-weight: 600; word-break: break-all; }
.caption { color: #bdc1c6; margin: 4px 0 0; }
.none { color: #9aa0a6; font-style: italic; }
.missing { display: none; color: #f28b82; }
figure.broken img { display: none; }
figure.broken .missing { display: block; }
"""


@dataclass(frozen=True)
class IndexEntry:
    """One sheet on the page: the image id, the sheet's file name (beside index.html), the caption if any."""

    image_id: str
    filename: str
    caption: str | None


def _figure(entry: IndexEntry) -> str:
    href = html.escape(quote(entry.filename), quote=True)
    caption = (f'<p class="caption">{html.escape(entry.caption)}</p>' if entry.caption
               else '<p class="caption none">no caption</p>')
    return (
        f'<figure id="{html.escape(entry.filename, quote=True)}">'
        f'<a href="{href}"><img src="{href}" alt="{html.escape(entry.image_id, quote=True)}" '
        f'onerror="this.closest(\'figure\').classList.add(\'broken\')"></a>'
        f'<p class="missing">sheet {html.escape(entry.filename)} not found</p>'
        f'<figcaption><div class="id">{html.escape(entry.image_id)}</div>{caption}</figcaption></figure>'
    )


def render_index(entries: list[IndexEntry], dataset_name: str) -> str:
    """The whole page as a string; every user-supplied text is HTML-escaped."""
    figures = "\n".join(_figure(e) for e in entries)
    title = html.escape(f"stratum preview · {dataset_name}")
    return (
        "<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">"
        f"<meta name=\"viewport\" content=\"width=device-width, initial-scale=1\"><title>{title}</title>"
        f"<style>{_STYLE}</style></head>\n<body><h1>{title}</h1>"
        f"<p class=\"sub\">{len(entries)} image{'s' if len(entries) != 1 else ''} · click a sheet for full size</p>"
        f"\n<main>\n{figures}\n</main>\n</body></html>\n"
    )
