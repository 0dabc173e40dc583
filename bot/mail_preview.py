"""`resetbot mail preview`: the password mail as a user would get it, with the password masked.

Lets a library check its own templates (`MAIL_TEMPLATES`) and languages before a reset.
"""

from __future__ import annotations

from dataclasses import dataclass

from bot.terminal import shown
from jobs.mail_templates import MailTemplates, Recipient

#: Shown where the password goes: a preview never holds a real one.
MASK = "\N{BULLET}" * 16


@dataclass(frozen=True)
class SampleUser:
    username: str = "ada"
    full_name: str = "Ada Lovelace"
    email: str | None = "ada@example.org"


def preview_text(
    templates: MailTemplates,
    *,
    username: str,
    full_name: str,
    email: str | None,
    language: str | None,
    require_change: bool = True,
) -> str:
    """Subject, text part and HTML part of the mail for this user, password masked."""
    rendered = templates.render(
        Recipient(full_name, username, MASK, require_change, language)
    )
    # The directory's text as every terminal line shows it: control characters as escapes.
    address = shown(email) or "(no e-mail address: this user would not be mailed)"
    lines = [
        f"To: {shown(full_name or username)} <{address}>" if email else f"To: {address}",
        f"Subject: {rendered.subject}",
        "",
        "----- text part -----",
        rendered.text.rstrip("\n"),
        "",
    ]
    if rendered.html is None:
        lines.append("(no HTML part: add reset.html to the templates folder to send one)")
    else:
        lines += ["----- HTML part -----", rendered.html.rstrip("\n")]
    return "\n".join(lines)
