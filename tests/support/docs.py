"""The README and the pages of docs/ as the tests read them: a page's sections, its fenced blocks,
and the page as the site shows it (docs/hooks.py's generated parts filled in)."""

from __future__ import annotations

import importlib.util
import re
from dataclasses import dataclass
from functools import cache
from pathlib import Path
from types import ModuleType

REPO = Path(__file__).resolve().parents[2]
FENCE = "```"
HEADING = re.compile(r"(?P<level>#{1,6}) (?P<title>.+)")
#: The languages of the fenced blocks a reader runs in a shell.
COMMAND_LANGUAGES = frozenset({"sh", "bash", "console", "shell"})


@dataclass(frozen=True)
class Block:
    """A fenced block: the file it is in, the heading it is under, its language and text."""

    page: str
    heading: str
    language: str
    text: str

    @property
    def first_line(self) -> str:
        return self.text.splitlines()[0] if self.text else ""


def pages() -> list[str]:
    """README.md and every page of docs/, as paths from the repository's folder."""
    return ["README.md", *sorted(p.relative_to(REPO).as_posix()
                                 for p in (REPO / "docs").glob("*.md"))]


def read(page: str) -> str:
    return (REPO / page).read_text("utf-8")


def blocks_of(text: str, page: str = "") -> list[Block]:
    """Every fenced block of a Markdown text, in order, with the heading above it. A block
    indented under a list item loses that indentation."""
    found: list[Block] = []
    heading, language, indent, body = "", None, 0, list[str]()
    for line in text.splitlines():
        fence = line.lstrip().startswith(FENCE)
        if language is None:
            if fence:
                indent = len(line) - len(line.lstrip())
                language, body = line.strip()[len(FENCE):].strip(), []
            elif match := HEADING.fullmatch(line):
                heading = match["title"]
        elif fence:
            found.append(Block(page, heading, language, "".join(x + "\n" for x in body)))
            language = None
        else:
            # The list item's indentation goes; a line's own (an LDIF fold) stays.
            body.append(line[indent:] if not line[:indent].strip() else line.lstrip())
    return found


def section(page: str, title: str) -> str:
    """The section of a page under the heading `title` (any level), up to the next heading of
    the same level or above; headings inside fenced blocks are not headings."""
    lines = read(page).splitlines(keepends=True)
    start, level, in_fence = None, 0, False
    for number, line in enumerate(lines):
        if line.lstrip().startswith(FENCE):
            in_fence = not in_fence
            continue
        match = None if in_fence else HEADING.fullmatch(line.rstrip("\n"))
        if match is None:
            continue
        if start is None and match["title"] == title:
            start, level = number, len(match["level"])
        elif start is not None and len(match["level"]) <= level:
            return "".join(lines[start:number])
    if start is None:
        raise LookupError(f"{page} has no heading {title!r}")
    return "".join(lines[start:])


def blocks(page: str, title: str, language: str) -> list[str]:
    """The text of each block in `language` of a page's section, in order."""
    return [block.text for block in blocks_of(section(page, title), page)
            if block.language == language]


@cache
def hooks() -> ModuleType:
    """docs/hooks.py, the site's build hooks (not a package: loaded from its path)."""
    spec = importlib.util.spec_from_file_location("resetbot_docs_hooks", REPO / "docs/hooks.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def rendered(page: str) -> str:
    """A page of docs/ as the site shows it: generated tables and included files filled in."""
    text: str = hooks().render(read(page))
    return text
