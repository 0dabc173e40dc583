"""MkDocs hooks: what the site shows but must not be copied by hand into docs/.

- `<!-- settings-table ... -->`: the table of every setting, made from the declarations in
  `core/settings.py` (`settings_help()`), so the Configuration page cannot drift from them.
- `<!-- include: PATH -->` (optionally `demote=N`): a Markdown file from elsewhere in the
  repository (README.md as the home page, bench/README.md in the Benchmark page), read at build
  time so it is never copied. Its headings go N levels down, and its links are made to work
  from the site: `docs/PAGE.md` becomes `PAGE.md`; a link to a file the site does not hold
  keeps its text only.
- A page's links to `../README.md` (which work where the repository is read, on GitHub say) go
  to the site's home page, which is the README.

The functions take and return text, so the tests use them without MkDocs installed.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

DOCS = Path(__file__).resolve().parent
REPO = DOCS.parent
SETTINGS_MARKER = re.compile(r"^<!-- settings-table\b.*?-->$", re.M)
INCLUDE_MARKER = re.compile(r"^<!-- include: (?P<path>\S+)(?: demote=(?P<demote>\d))?.*?-->$", re.M)
LINK = re.compile(r"(?<!!)\[(?P<text>[^\]]*)\]\((?P<target>[^)\s]+)\)")
FENCE = "```"


def settings_table() -> str:
    """The Markdown table of every declared setting: variable, default, meaning."""
    from core.settings import settings_help  # the app's own package, installed beside MkDocs

    rows = ["| Variable | Default | Meaning |", "|---|---|---|"]
    for name, default, meaning in settings_help():
        cells = (f"`{name}`", default, meaning)
        rows.append("| " + " | ".join(cell.replace("|", "\\|") for cell in cells) + " |")
    return "\n".join(rows)


def demote_headings(markdown: str, levels: int) -> str:
    """Every ATX heading outside a fenced block, `levels` deeper."""
    out, in_fence = [], False
    for line in markdown.splitlines():
        if line.lstrip().startswith(FENCE):
            in_fence = not in_fence
        elif not in_fence and re.match(r"#{1,6} ", line):
            line = "#" * levels + line
        out.append(line)
    return "\n".join(out) + "\n"


def site_link(target: str, included_from: Path) -> str | None:
    """Where a link of an included file points from the site, or None when the site does not
    hold it (the link then keeps its text only)."""
    if re.match(r"[a-z]+:", target) or target.startswith("#"):
        return target
    path, _, anchor = target.partition("#")
    resolved = (included_from.parent / path).resolve()
    if resolved.suffix != ".md" or not resolved.is_relative_to(DOCS) or not resolved.exists():
        return None
    page = resolved.relative_to(DOCS).as_posix()
    return page + (f"#{anchor}" if anchor else "")


def rewrite_links(markdown: str, included_from: Path) -> str:
    def one(match: re.Match[str]) -> str:
        target = site_link(match["target"], included_from)
        return match["text"] if target is None else f"[{match['text']}]({target})"

    parts = markdown.split(FENCE)
    # Odd parts are inside fenced blocks: links there are text.
    return FENCE.join(LINK.sub(one, part) if i % 2 == 0 else part for i, part in enumerate(parts))


def included(path: str, demote: int) -> str:
    source = REPO / path
    return rewrite_links(demote_headings(source.read_text("utf-8"), demote), source)


def render(markdown: str) -> str:
    """A page's Markdown as the site shows it."""
    markdown = markdown.replace("](../README.md", "](index.md")
    markdown = SETTINGS_MARKER.sub(lambda _: settings_table(), markdown)
    return INCLUDE_MARKER.sub(
        lambda match: included(match["path"], int(match["demote"] or 0)), markdown)


def on_page_markdown(markdown: str, **_: Any) -> str:
    return render(markdown)
