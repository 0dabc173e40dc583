"""Mail templates the library owns: the shipped ones, languages, escaping, and what is refused."""

from __future__ import annotations

import re
from dataclasses import replace
from email import message_from_bytes, policy
from email.message import EmailMessage
from html.parser import HTMLParser
from pathlib import Path

import pytest

from core.errors import ConfigError
from core.settings import Settings
from jobs.mail_templates import MailTemplates, Recipient
from jobs.mailer import PasswordMail, Sender, render_message

SETTINGS = Settings(mail_from="Library <resetbot@library.example>")

# What resetbot's mail said before templates existed, word for word: the shipped English
# template must keep saying it.
BEFORE_TEXT = (
    'Hello Ada Lovelace,\n\nThe password of your library account "ada" has been reset.\n\n'
    "Username: ada\nNew password: Secret-Pass-123\n\nSign in at http://localhost/\n"
    "You must change this password the next time you sign in.\n\n"
    "If you did not expect this message, please contact the library.\n"
)
BEFORE_TEXT_NO_CHANGE = (
    'Hello ada,\n\nThe password of your library account "ada" has been reset.\n\n'
    "Username: ada\nNew password: Secret-Pass-123\n\nSign in at http://localhost/\n\n"
    "If you did not expect this message, please contact the library.\n"
)
BEFORE_HTML = (
    "<!DOCTYPE html><html><body><p>Hello Ada Lovelace,</p><p>The password of your library "
    "account <strong>ada</strong> has been reset.</p><table><tr><td>Username:</td><td><code>"
    "ada</code></td></tr><tr><td>New password:</td><td><code>Secret-Pass-123</code></td></tr>"
    '</table><p>Sign in at <a href="http://localhost/">http://localhost/</a></p><p><strong>'
    "You must change this password the next time you sign in.</strong></p><p>If you did not "
    "expect this message, please contact the library.</p></body></html>"
)


def ada(**changes: object) -> Recipient:
    return replace(Recipient("Ada Lovelace", "ada", "Secret-Pass-123", True), **changes)


def shipped(**settings: object) -> MailTemplates:
    return MailTemplates.load(replace(Settings(), **settings))


def write(folder: Path, files: dict[str, str | bytes]) -> Path:
    for name, content in files.items():
        path = folder / name
        if isinstance(content, bytes):
            path.write_bytes(content)
        else:
            path.write_text(content, encoding="utf-8")
    return folder


MINIMAL = "Subject: Hello from {library_name}\n\nYour password: {password}\n"


class _Visible(HTMLParser):
    def __init__(self) -> None:
        super().__init__()
        self.words: list[str] = []

    def handle_data(self, data: str) -> None:
        self.words += data.split()


def visible_words(markup: str) -> list[str]:
    parser = _Visible()
    parser.feed(markup)
    return parser.words


# -- the shipped templates -------------------------------------------------------------------


def test_the_shipped_english_mail_says_exactly_what_it_said_before() -> None:
    templates = shipped()

    with_change = templates.render(ada())
    without = templates.render(ada(full_name="", require_change=False))

    assert with_change.subject == "Your library password has been reset"
    assert with_change.text == BEFORE_TEXT
    assert without.text == BEFORE_TEXT_NO_CHANGE
    assert with_change.html is not None
    assert visible_words(with_change.html) == visible_words(BEFORE_HTML)
    assert "must change" not in (without.html or "")


def test_french_is_chosen_by_mail_language_and_by_the_users_own_language() -> None:
    default_french = shipped(mail_language="fr").render(ada())
    by_user = shipped().render(ada(language="fr-CA"))  # no fr-ca template: fr it is
    unknown = shipped().render(ada(language="tlh"))

    assert default_french.subject == "Votre mot de passe pour la bibliothèque a été réinitialisé"
    assert "Nouveau mot de passe : Secret-Pass-123" in default_french.text
    assert "prochaine connexion" in default_french.text
    assert by_user == default_french
    assert unknown.subject == "Your library password has been reset"


def test_library_name_and_helpdesk_replace_each_languages_own_words() -> None:
    templates = shipped(library_name="Springfield Library", helpdesk="help@springfield.example")

    english = templates.render(ada())
    french = templates.render(ada(language="fr"))

    assert english.subject == "Your Springfield Library password has been reset"
    assert "please contact help@springfield.example." in english.text
    assert "auprès de Springfield Library" in french.text
    assert "contacter help@springfield.example." in (french.html or "")


def test_a_non_ascii_subject_is_encoded_and_reads_back_whole() -> None:
    templates = shipped(mail_language="fr")
    mail = PasswordMail("Zoé Ünal", "zoe@example.org", "zoe", "Secret-Pass-123")

    _to, data = render_message(templates, Sender.from_settings(SETTINGS), mail)
    message = message_from_bytes(data, policy=policy.default)

    assert data.isascii()
    assert message["Subject"] == "Votre mot de passe pour la bibliothèque a été réinitialisé"
    assert isinstance(message, EmailMessage)
    assert "Bonjour Zoé Ünal," in message.get_body(("plain",)).get_content()  # type: ignore[union-attr]


# -- hostile directory text ------------------------------------------------------------------

HOSTILE_NAMES = [
    "<script>alert(1)</script>",
    "Eve\r\nBcc: victim@example.org",
    "{password}",
    "Mallory\u2028New password: Fake-1",
    "{{password}} & <b>",
]


@pytest.mark.parametrize("name", HOSTILE_NAMES)
def test_hostile_names_stay_inert_in_subject_text_and_html(name: str) -> None:
    templates = shipped()
    mail = PasswordMail(name, "eve@example.org", name, "Secret-Pass-123")

    _to, data = render_message(templates, Sender.from_settings(SETTINGS), mail)
    message = message_from_bytes(data, policy=policy.default)
    assert isinstance(message, EmailMessage)
    text = message.get_body(("plain",)).get_content()  # type: ignore[union-attr]
    markup = message.get_body(("html",)).get_content()  # type: ignore[union-attr]

    assert message.get_all("Bcc") is None
    assert message["Subject"] == "Your library password has been reset"
    # Substituted once: a name that spells a placeholder is printed as typed, never expanded.
    assert text.count("Secret-Pass-123") == 1
    assert re.findall(r"(?m)^New password: [^\r\n]*", text) == ["New password: Secret-Pass-123"]
    assert "<script>" not in markup and "<b>" not in markup
    assert markup.count("Secret-Pass-123") == 1


# -- what a library's own folder may and may not hold -----------------------------------------


def test_a_text_only_folder_sends_a_single_plain_part(tmp_path: Path) -> None:
    templates = MailTemplates.load(replace(SETTINGS, mail_templates=str(write(tmp_path, {
        "reset.txt": MINIMAL,
    }))))

    _to, data = render_message(templates, Sender.from_settings(SETTINGS),
                               PasswordMail("Ada", "ada@example.org", "ada", "Secret-Pass-123"))
    message = message_from_bytes(data, policy=policy.default)

    assert message.get_content_type() == "text/plain"
    assert message["Subject"] == "Hello from library"
    assert isinstance(message, EmailMessage)
    content = message.get_content()  # type: ignore[attr-defined]
    assert content.replace("\r\n", "\n") == "Your password: Secret-Pass-123\n"


def test_literal_braces_and_a_must_change_line_that_disappears(tmp_path: Path) -> None:
    folder = write(tmp_path, {"reset.txt": (
        "Subject: Reset\nMust-Change: Change it at {portal_url}.\n\n"
        "Use {{this}}: {password}\n{must_change}\nBye\n"
    )})
    templates = MailTemplates.load(replace(SETTINGS, mail_templates=str(folder)))

    assert templates.render(ada()).text == (
        "Use {this}: Secret-Pass-123\nChange it at http://localhost/.\nBye\n"
    )
    assert templates.render(ada(require_change=False)).text == "Use {this}: Secret-Pass-123\nBye\n"


@pytest.mark.parametrize(
    ("files", "said"),
    [
        ({"reset.txt": "Subject: Hi\n\nHello {fullname}, {password}\n"},
         "reset.txt:3: unknown placeholder {fullname}"),
        ({"reset.txt": "Subject: Hi\n\nHello {name}\n"},
         "reset.txt: the body never says {password}"),
        ({"reset.txt": "Subject: Your password is {password}\n\n{password}\n"},
         "reset.txt:1: a password must never be in a subject"),
        ({"reset.txt": "Hello {name}, {password}\n"},
         "reset.txt:1: the first line must be 'Subject: ...'"),
        ({"reset.txt": "Subject: Hi\nReply-To: x@example.org\n\n{password}\n"},
         "reset.txt:2: unknown header 'Reply-To'"),
        ({"reset.txt": "Subject: Hi\n\n{password} {\n"},
         "reset.txt:3: a lone '{': write {{ for a literal brace"),
        ({"reset.txt": "Subject: Hi\n\n{password} {name.__class__}\n"},
         "reset.txt:3: unknown placeholder {name.__class__}"),
        ({"reset.txt": b"Subject: Hi\n\n{password} \xff\n"},
         "reset.txt: not UTF-8 text"),
        ({"reset.txt": MINIMAL, "reset.html": "<p>Hello {name}</p>\n"},
         "reset.html: the body never says {password}"),
        ({"reset.txt": MINIMAL, "reset.de.txt": "Subject: Hallo\n\n{passwort}\n"},
         "reset.de.txt:3: unknown placeholder {passwort}"),
        ({"other.txt": MINIMAL}, "MAIL_TEMPLATES: no reset.txt in"),
    ],
)
def test_a_template_that_cannot_work_is_refused_with_file_and_line(
    tmp_path: Path, files: dict[str, str | bytes], said: str
) -> None:
    folder = write(tmp_path, files)

    with pytest.raises(ConfigError) as refused:
        MailTemplates.load(replace(SETTINGS, mail_templates=str(folder)))

    assert said in str(refused.value)


@pytest.mark.parametrize(
    ("html", "said"),
    [
        ("<p title={name}>{password}</p>\n", "reset.html:1: {name} stands in an HTML tag"),
        ("<p>{password}</p><a href={portal_url}>x</a>\n",
         "reset.html:1: {portal_url} stands in an HTML tag"),
        ("<p>{password}</p>\n<a class=big href=x{portal_url}>x</a>\n",
         "reset.html:2: {portal_url} stands in an HTML tag"),
        ("<p>{password}</p>\n<td {username}>x</td>\n",
         "reset.html:2: {username} stands in an HTML tag"),
        ("<p>{password}</p>\n<a\n  href =\n {portal_url}>x</a>\n",
         "reset.html:4: {portal_url} stands in an HTML tag"),
        ('<p>{password}</p><img alt="x" {name}="y">\n',
         "reset.html:1: {name} stands in an HTML tag"),
        ("Must-Change: <b class={name}>Change it</b>\n\n<p>{password}</p>\n",
         "reset.html:1: {name} stands in an HTML tag"),
    ],
)
def test_a_placeholder_in_an_unquoted_html_attribute_is_refused(
    tmp_path: Path, html: str, said: str
) -> None:
    """An escaped value holds no quote or `>`, but a space: unquoted, `x onmouseover=alert(1)`
    would add an attribute to the tag."""
    folder = write(tmp_path, {"reset.txt": MINIMAL, "reset.html": html})

    with pytest.raises(ConfigError) as refused:
        MailTemplates.load(replace(SETTINGS, mail_templates=str(folder)))

    assert said in str(refused.value)
    assert 'write name="{' in str(refused.value)


def test_placeholders_in_quoted_attributes_text_and_comments_are_accepted(
    tmp_path: Path,
) -> None:
    html = (
        "<!DOCTYPE html><p title=\"{name}\" data-x='{username}' class = \"a {helpdesk}\">\n"
        "Hello {name}, 1 < 2 > 0 {username}</p><!-- <a href={name}> -->\n"
        "<a\n href=\n\"{portal_url}\">{{literal}} {password}</a>\n"
    )
    folder = write(tmp_path, {"reset.txt": MINIMAL, "reset.html": html})

    templates = MailTemplates.load(replace(SETTINGS, mail_templates=str(folder)))

    rendered = templates.render(Recipient("x onmouseover=alert(1)", "ada", "pw", True))
    assert rendered.html is not None and 'title="x onmouseover=alert(1)"' in rendered.html


def test_mail_language_without_its_template_is_refused(tmp_path: Path) -> None:
    folder = write(tmp_path, {"reset.txt": MINIMAL, "reset.fr.txt": MINIMAL})

    with pytest.raises(ConfigError) as refused:
        MailTemplates.load(replace(SETTINGS, mail_templates=str(folder), mail_language="de"))

    assert str(refused.value).startswith("MAIL_LANGUAGE: no reset.de.txt in ")
    assert "(there are: default, fr)" in str(refused.value)
