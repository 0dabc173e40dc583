"""The password mail's words, owned by the library: templates that are data, never code.

A folder (`MAIL_TEMPLATES`, or the templates shipped in `jobs/templates/`) holds `reset.txt`
and optionally `reset.html`, and per language `reset.<lang>.txt` / `reset.<lang>.html`. A file
starts with header lines up to the first blank line, then the body:

    Subject: Your {library_name} password has been reset
    Must-Change: You must change this password the next time you sign in.
    Library-Name: library
    Helpdesk: the library

    Hello {name},
    ...

`Subject` is required in a `.txt` file. `Must-Change` is what `{must_change}` says when the
user must change the password at the next sign-in (nothing otherwise); in an `.html` file it is
HTML, else the text one is used, escaped. `Library-Name` and `Helpdesk` are what `{library_name}`
and `{helpdesk}` say when `LIBRARY_NAME` / `HELPDESK` are not set, so each language reads well on
its own. In a text body, a line holding nothing but a placeholder that comes out empty is left
out.

A placeholder is `{name}`; `{{` and `}}` are literal braces. Nothing else is interpreted: no
attribute access, no expressions, no includes. Values come in once, in one pass, so a user named
`{password}` is printed as typed. In HTML every value is escaped; in text, control characters in
a value become spaces, so no value can add a line (or a header: the subject is one line too).

An unknown placeholder, a body without `{password}`, `{password}` in a subject, a placeholder in
an HTML tag outside a quoted attribute value (`<a title={name}>`: a name with a space would add
attributes), or a file that cannot be read is refused when the templates are loaded (at a
worker's start), with file and line.
"""

from __future__ import annotations

import html
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from email.header import Header
from pathlib import Path

from core.controls import blank_unsafe, single_line
from core.errors import ConfigError
from core.settings import Settings

SHIPPED = Path(__file__).resolve().parent / "templates"
BASE_NAME = "reset"
#: The mail an Undo sends to users the reset e-mailed: "ignore it, your previous password works
#: again". No password in it. The library's folder may hold its own; else the shipped one.
UNDONE_NAME = "undone"
PLACEHOLDERS = frozenset(
    {"name", "username", "password", "portal_url", "library_name", "helpdesk", "must_change"}
)
#: What differs from one user to the next; every other value is the same for a whole task.
PER_USER = frozenset({"name", "username", "password"})
KNOWN_HEADERS = frozenset({"subject", "must-change", "library-name", "helpdesk"})
MAX_NAME = 120
_PIECE = re.compile(r"\{\{|\}\}|\{([^{}\n]*)\}|[{}]")
_HEADER = re.compile(r"^([A-Za-z][A-Za-z-]*):[ \t]*(.*)$")
_LANGUAGE = re.compile(r"^[a-z]{2,3}(?:-[a-z0-9]{2,8})?$")


@dataclass(frozen=True)
class Placeholder:
    name: str


Piece = str | Placeholder


@dataclass(frozen=True)
class Template:
    """One parsed piece of text: literal strings and placeholders, in order."""

    lines: tuple[tuple[Piece, ...], ...]

    def render(self, values: Mapping[str, str], *, drop_empty_lines: bool = False) -> str:
        out: list[str] = []
        for pieces in self.lines:
            line = "".join(p if isinstance(p, str) else values[p.name] for p in pieces)
            lone_placeholder = len(pieces) == 1 and isinstance(pieces[0], Placeholder)
            if drop_empty_lines and lone_placeholder and not line:
                continue
            out.append(line)
        return "\n".join(out)

    @property
    def names(self) -> set[str]:
        return {p.name for pieces in self.lines for p in pieces if isinstance(p, Placeholder)}

    def bind(self, values: Mapping[str, str], *, drop_empty_lines: bool = False) -> Template:
        """The template with the placeholders in `values` written in (as `render` would), the
        others left for later: the same text once these are rendered too."""
        lines: list[tuple[Piece, ...]] = []
        for pieces in self.lines:
            first = pieces[0] if len(pieces) == 1 else None
            if (drop_empty_lines and isinstance(first, Placeholder)
                    and first.name in values and not values[first.name]):
                continue
            lines.append(tuple(_merged([
                values[p.name] if isinstance(p, Placeholder) and p.name in values else p
                for p in pieces
            ])))
        return Template(tuple(lines))


class Compiled:
    """A template with every value known for the whole task written in, ready to render a
    user's copy with one join (the hot path: a task renders one mail per user)."""

    def __init__(self, template: Template, *, drop_empty_lines: bool = False) -> None:
        self.template = template
        #: A line holding nothing but a placeholder may vanish (text bodies): render by line.
        self.by_line = drop_empty_lines and any(
            len(pieces) == 1 and isinstance(pieces[0], Placeholder) for pieces in template.lines
        )
        flat: list[Piece] = []
        for number, pieces in enumerate(template.lines):
            if number:
                flat.append("\n")
            flat.extend(pieces)
        merged = _merged(flat)
        self.pieces = [piece if isinstance(piece, str) else "" for piece in merged]
        self.slots = [(index, piece.name) for index, piece in enumerate(merged)
                      if isinstance(piece, Placeholder)]

    def render(self, values: Mapping[str, str]) -> str:
        if self.by_line:
            return self.template.render(values, drop_empty_lines=True)
        pieces = self.pieces.copy()
        for index, name in self.slots:
            pieces[index] = values[name]
        return "".join(pieces)


@dataclass(frozen=True)
class LanguageTemplates:
    """The mail in one language."""

    subject: Template
    text: Template
    html: Template | None
    must_change_text: Template | None
    must_change_html: Template | None
    library_name: str
    helpdesk: str


@dataclass(frozen=True)
class _Prepared:
    """One language's mail for one task setting (must change or not), task values written in."""

    subject: Compiled
    text: Compiled
    html: Compiled | None


@dataclass(frozen=True)
class RenderedMail:
    subject: str
    text: str
    html: str | None


@dataclass(frozen=True)
class Recipient:
    """What the templates say about one user (the password only in memory)."""

    full_name: str
    username: str
    password: str
    require_change: bool
    language: str | None = None
    #: `reset`, or `undone` (an Undo put their previous password back: UNDONE_NAME).
    kind: str = BASE_NAME


class MailTemplates:
    """Every language's templates, loaded and checked once; renders a user's mail."""

    def __init__(
        self,
        languages: Mapping[str, LanguageTemplates],
        default_language: str,
        settings: Settings,
    ) -> None:
        self.languages = dict(languages)
        self.default_language = default_language
        #: The Undo mail's languages (`undone.txt`, ...): the library's if it has one.
        self.undone: dict[str, LanguageTemplates] = {}
        self.portal_url = settings.portal_url
        self.library_name = settings.library_name
        self.helpdesk = settings.helpdesk
        #: Each language's mail with the task's values written in, by (its templates' id,
        #: must change): built at its first mail. None: rendered whole (see `_prepare`).
        self._prepared: dict[tuple[int, bool], _Prepared | None] = {}

    @classmethod
    def load(cls, settings: Settings) -> MailTemplates:
        """Read and check the configured folder; ConfigError naming file and line."""
        folder = Path(settings.mail_templates) if settings.mail_templates else SHIPPED
        if not (folder / f"{BASE_NAME}.txt").is_file():
            raise ConfigError(f"MAIL_TEMPLATES: no {BASE_NAME}.txt in {folder}")
        languages = {"": _load_language(folder, "")}
        for path in sorted(folder.glob(f"{BASE_NAME}.*.txt")):
            language = path.name[len(BASE_NAME) + 1 : -len(".txt")].lower()
            if not _LANGUAGE.match(language):
                raise ConfigError(f"{path}: {language!r} is not a language code (e.g. fr, pt-br)")
            languages[language] = _load_language(folder, language)
        default = settings.mail_language.lower()
        if default and default not in languages and default != "en":
            raise ConfigError(
                f"MAIL_LANGUAGE: no {BASE_NAME}.{default}.txt in {folder} "
                f"(there are: {', '.join(sorted(lang or 'default' for lang in languages))})"
            )
        templates = cls(languages, default if default in languages else "", settings)
        templates.undone = _load_all(
            folder if (folder / f"{UNDONE_NAME}.txt").is_file() else SHIPPED, UNDONE_NAME
        )
        return templates

    def for_language(self, language: str | None, kind: str = BASE_NAME) -> LanguageTemplates:
        """The user's language if there is a template for it (`fr-CA` falls back to `fr`),
        else MAIL_LANGUAGE, else the default `reset.txt` (`undone.txt` for an Undo's mail)."""
        languages = self.undone if kind == UNDONE_NAME else self.languages
        for candidate in _candidates(language):
            if candidate in languages:
                return languages[candidate]
        if kind == UNDONE_NAME:
            return languages.get(self.default_language) or languages[""]
        return self.languages[self.default_language]

    def render(self, recipient: Recipient) -> RenderedMail:
        chosen = self.for_language(recipient.language, recipient.kind)
        key = (id(chosen), recipient.require_change)
        if key not in self._prepared:
            self._prepared[key] = self._prepare(chosen, recipient.require_change)
        prepared = self._prepared[key]
        if prepared is None:
            return self._render_whole(chosen, recipient)
        name = single_line(recipient.full_name, MAX_NAME) or recipient.username
        values = {"name": name, "username": recipient.username, "password": recipient.password}
        text_values = {key: _one_line(value) for key, value in values.items()}
        subject = _one_line(prepared.subject.render(text_values))
        text = prepared.text.render(text_values)
        if prepared.html is None:
            return RenderedMail(subject, text + "\n", None)
        html_values = {key: _escaped(value) for key, value in values.items()}
        return RenderedMail(subject, text + "\n", prepared.html.render(html_values))

    def _prepare(self, chosen: LanguageTemplates, require_change: bool) -> _Prepared | None:
        """`chosen` with what is the same for every user written in; None when the
        must-change line names the user (then each mail is rendered whole)."""
        must_change = (chosen.must_change_text, chosen.must_change_html)
        if require_change and any(template is not None and template.names & PER_USER
                                  for template in must_change):
            return None
        text_values = self._task_values(chosen, _one_line)
        text_values["must_change"] = _must_change(chosen.must_change_text, text_values,
                                                  require_change)
        subject = Compiled(chosen.subject.bind(text_values))
        text = Compiled(chosen.text.bind(text_values, drop_empty_lines=True),
                        drop_empty_lines=True)
        if chosen.html is None:
            return _Prepared(subject, text, None)
        html_values = self._task_values(chosen, _escaped)
        if chosen.must_change_html is not None:
            html_values["must_change"] = _must_change(chosen.must_change_html, html_values,
                                                      require_change)
        else:
            html_values["must_change"] = _escaped(text_values["must_change"])
        return _Prepared(subject, text, Compiled(chosen.html.bind(html_values)))

    def _task_values(
        self, chosen: LanguageTemplates, clean: Callable[[str], str]
    ) -> dict[str, str]:
        return {
            "portal_url": clean(self.portal_url),
            "library_name": clean(self.library_name or chosen.library_name),
            "helpdesk": clean(self.helpdesk or chosen.helpdesk),
        }

    def _render_whole(self, chosen: LanguageTemplates, recipient: Recipient) -> RenderedMail:
        """A user's mail with every value written in at once (a must-change line that names
        the user)."""
        text_values = self._values(chosen, recipient, _one_line)
        text_values["must_change"] = _must_change(chosen.must_change_text, text_values,
                                                  recipient.require_change)
        subject = _one_line(chosen.subject.render(text_values))
        text = chosen.text.render(text_values, drop_empty_lines=True)
        if chosen.html is None:
            return RenderedMail(subject, text + "\n", None)
        html_values = self._values(chosen, recipient, _escaped)
        if chosen.must_change_html is not None:
            html_values["must_change"] = _must_change(
                chosen.must_change_html, html_values, recipient.require_change
            )
        else:
            html_values["must_change"] = _escaped(text_values["must_change"])
        return RenderedMail(subject, text + "\n", chosen.html.render(html_values))

    def _values(
        self, chosen: LanguageTemplates, recipient: Recipient, clean: Callable[[str], str]
    ) -> dict[str, str]:
        username = recipient.username
        name = single_line(recipient.full_name, MAX_NAME) or username
        return {
            "name": clean(name),
            "username": clean(username),
            "password": clean(recipient.password),
            "portal_url": clean(self.portal_url),
            "library_name": clean(self.library_name or chosen.library_name),
            "helpdesk": clean(self.helpdesk or chosen.helpdesk),
        }


def encoded_subject(subject: str) -> str:
    """The Subject header's value: as it is in ASCII, RFC 2047-encoded otherwise."""
    if subject.isascii():
        return subject
    return Header(subject, "utf-8").encode(linesep="\r\n")


def _candidates(language: str | None) -> list[str]:
    if not language:
        return []
    code = language.strip().lower().replace("_", "-")
    return [code, code.split("-")[0]]


def _must_change(
    template: Template | None, values: Mapping[str, str], require_change: bool
) -> str:
    if not require_change or template is None:
        return ""
    return template.render({**values, "must_change": ""})


def _one_line(text: str) -> str:
    return blank_unsafe(text)


def _escaped(text: str) -> str:
    return html.escape(blank_unsafe(text), quote=True)


# -- loading and checking -------------------------------------------------------------------


def _load_all(folder: Path, base: str) -> dict[str, LanguageTemplates]:
    """Every language of the mail `base` in `folder` (`base.txt` required)."""
    languages = {"": _load_language(folder, "", base)}
    for path in sorted(folder.glob(f"{base}.*.txt")):
        language = path.name[len(base) + 1 : -len(".txt")].lower()
        if not _LANGUAGE.match(language):
            raise ConfigError(f"{path}: {language!r} is not a language code (e.g. fr, pt-br)")
        languages[language] = _load_language(folder, language, base)
    return languages


def _load_language(folder: Path, language: str, base: str = BASE_NAME) -> LanguageTemplates:
    suffix = f".{language}" if language else ""
    text_path = folder / f"{base}{suffix}.txt"
    headers, body = _read(text_path)
    if "subject" not in headers:
        raise ConfigError(f"{text_path}:1: the first line must be 'Subject: ...'")
    subject = _parse_header(text_path, headers["subject"], "Subject")
    if "password" in subject.names:
        raise ConfigError(f"{text_path}:{headers['subject'][1]}: a password must never be in "
                          "a subject (mail programs show subjects in lists and notifications)")
    with_password = base == BASE_NAME
    text = _parse_body(text_path, body, with_password)
    html_path = folder / f"{base}{suffix}.html"
    html_template = must_change_html = None
    if html_path.is_file():
        html_headers, html_body = _read(html_path)
        html_template = _parse_body(html_path, html_body, with_password)
        _check_attributes_quoted(html_path, html_body[0], html_template)
        if "must-change" in html_headers:
            must_change_html = _parse_header(html_path, html_headers["must-change"], "Must-Change")
            _check_attributes_quoted(html_path, html_headers["must-change"][1], must_change_html)
    return LanguageTemplates(
        subject=subject,
        text=text,
        html=html_template,
        must_change_text=(
            _parse_header(text_path, headers["must-change"], "Must-Change")
            if "must-change" in headers else None
        ),
        must_change_html=must_change_html,
        library_name=headers.get("library-name", ("library", 0))[0],
        helpdesk=headers.get("helpdesk", ("the library", 0))[0],
    )


Headers = dict[str, tuple[str, int]]


def _read(path: Path) -> tuple[Headers, tuple[int, list[str]]]:
    """(headers by lower-case name with their line numbers, (first body line number, body))."""
    try:
        raw = path.read_text(encoding="utf-8")
    except UnicodeDecodeError as error:
        raise ConfigError(f"{path}: not UTF-8 text (byte {error.start})") from None
    except OSError as error:
        raise ConfigError(f"{path}: cannot be read ({error.strerror})") from None
    lines = raw.removeprefix("\ufeff").splitlines()
    headers: Headers = {}
    number = 0
    if lines and _HEADER.match(lines[0]) and not lines[0].lstrip().startswith("<"):
        for number, line in enumerate(lines, start=1):
            if not line.strip():
                break
            found = _HEADER.match(line)
            if found is None:
                raise ConfigError(f"{path}:{number}: expected 'Name: value' or a blank line "
                                  "before the body")
            name = found.group(1).lower()
            if name not in KNOWN_HEADERS:
                raise ConfigError(f"{path}:{number}: unknown header {found.group(1)!r} "
                                  f"(known: Subject, Must-Change, Library-Name, Helpdesk)")
            headers[name] = (found.group(2).strip(), number)
        else:
            number = len(lines)
    return headers, (number + 1, lines[number:])


def _parse_header(path: Path, value: tuple[str, int], what: str) -> Template:
    text, number = value
    template = Template((_parse_line(path, number, text),))
    if not text:
        raise ConfigError(f"{path}:{number}: {what} is empty")
    return template


def _parse_body(path: Path, body: tuple[int, list[str]], with_password: bool = True) -> Template:
    """A mail's body; the password mail's must say {password}, the Undo mail's never."""
    first, lines = body
    template = Template(
        tuple(_parse_line(path, first + offset, line) for offset, line in enumerate(lines))
    )
    if not with_password and "password" in template.names:
        raise ConfigError(f"{path}: this mail tells no new password: it must not say "
                          "{password}")
    if with_password and "password" not in template.names:
        raise ConfigError(f"{path}: the body never says {{password}}: the mail would not tell "
                          "the user their new password")
    return template


def _parse_line(path: Path, number: int, line: str) -> tuple[Piece, ...]:
    pieces: list[Piece] = []
    position = 0
    for found in _PIECE.finditer(line):
        if found.start() > position:
            pieces.append(line[position : found.start()])
        token = found.group(0)
        if token in ("{{", "}}"):
            pieces.append(token[0])
        elif found.group(1) is None:
            raise ConfigError(f"{path}:{number}: a lone {token!r}: write {token * 2} for a "
                              "literal brace")
        elif found.group(1) not in PLACEHOLDERS:
            raise ConfigError(f"{path}:{number}: unknown placeholder {token} (known: "
                              + ", ".join(f"{{{name}}}" for name in sorted(PLACEHOLDERS)) + ")")
        else:
            pieces.append(Placeholder(found.group(1)))
        position = found.end()
    if position < len(line):
        pieces.append(line[position:])
    return tuple(_merged(pieces))


def _check_attributes_quoted(path: Path, first: int, template: Template) -> None:
    """Refuse a placeholder inside an HTML tag but outside a quoted attribute value.

    An escaped value holds no quote, `<` or `>`, but it may hold a space: after `title=` or in
    place of an attribute, `x onmouseover=alert(1)` would add an attribute. Tags are followed
    as an HTML tokenizer does, across lines: `<` then a letter, `/`, `!` or `?` opens one,
    `<!--` a comment (no tag inside, up to `-->`), and a value is quoted when `"` or `'` comes
    first after its `=` (spaces allowed between).
    """
    items: list[tuple[str | Placeholder, int]] = []
    for offset, pieces in enumerate(template.lines):
        for piece in pieces:
            items += [(piece, first + offset)] if isinstance(piece, Placeholder) else [
                (character, first + offset) for character in piece]
        items.append(("\n", first + offset))
    text = "".join(item if isinstance(item, str) else "\0" for item, _ in items)
    state = _TEXT
    for index, (item, number) in enumerate(items):
        if isinstance(item, Placeholder):
            if state in (_TAG, _AFTER_EQUALS, _UNQUOTED):
                token = f"{{{item.name}}}"
                raise ConfigError(
                    f"{path}:{number}: {token} stands in an HTML tag outside a quoted "
                    "attribute value, where a value holding a space would add attributes: "
                    f'quote it (write name="{token}")'
                )
            continue
        state = _next_state(state, item, text, index)


_TEXT, _COMMENT, _TAG, _AFTER_EQUALS, _UNQUOTED, _QUOTED_DOUBLE, _QUOTED_SINGLE = range(7)


def _next_state(state: int, character: str, text: str, index: int) -> int:
    """The tokenizer's state after `character`, which is `text[index]`."""
    if state == _TEXT:
        if character != "<":
            return _TEXT
        if text.startswith("!--", index + 1):
            return _COMMENT
        opens = text[index + 1 : index + 2]
        starts_tag = (opens.isascii() and opens.isalpha()) or opens in ("/", "!", "?")
        return _TAG if starts_tag else _TEXT
    if state == _COMMENT:
        return _TEXT if character == ">" and text.endswith("--", 0, index) else _COMMENT
    if character == ">" and state in (_TAG, _AFTER_EQUALS, _UNQUOTED):
        return _TEXT
    if state == _TAG:
        return _AFTER_EQUALS if character == "=" else _TAG
    if state == _AFTER_EQUALS:
        if character.isspace():
            return _AFTER_EQUALS
        return {'"': _QUOTED_DOUBLE, "'": _QUOTED_SINGLE}.get(character, _UNQUOTED)
    if state == _UNQUOTED:
        return _TAG if character.isspace() else _UNQUOTED
    if state == _QUOTED_DOUBLE:
        return _TAG if character == '"' else _QUOTED_DOUBLE
    return _TAG if character == "'" else _QUOTED_SINGLE


def _merged(pieces: list[Piece]) -> list[Piece]:
    """Adjacent literal strings joined, so rendering is one join per line."""
    merged: list[Piece] = []
    for piece in pieces:
        if isinstance(piece, str) and merged and isinstance(merged[-1], str):
            merged[-1] = merged[-1] + piece
        else:
            merged.append(piece)
    return merged
