"""`resetbot directory check`: what resetbot sees in the directory, before it writes anything.

Read-only: the directory is opened through its own engine and only SELECTed from; resetbot's
own state database is not opened at all (unless the users live in it, DIRECTORY_URL unset).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

from sqlalchemy import inspect

from bot.terminal import Output, Refused
from core.directory import Directory
from core.directory.capabilities import OptionalFeature, available, optional_features
from core.directory.factory import open_directory
from core.directory.protocol import Counts, PasswordRules
from core.directory.sql.survey import Survey, survey
from core.settings import Settings, uses_ldap


@dataclass(frozen=True)
class DirectoryReport:
    profile: str
    #: Where the profile was read from (the file), when that is not its name.
    profile_source: str | None
    database: str
    table: str
    survey: Survey
    #: The optional grants that apply to the profile, each with whether it is there.
    optional: list[OptionalFeature]

    def warning(self) -> str | None:
        """Said when a reset would write another hash format than the table mostly holds."""
        common = self.survey.most_common
        if not self.survey.differs or common is None:
            return None
        held = (self.survey.hash_formats or {})[common]
        return (
            f"warning: resetbot writes {self.survey.writes} hashes, but most passwords in "
            f"{self.table} are {common} ({held:,} of {self.survey.users:,} users): make sure "
            "the system that checks them reads the new format, or set it in the profile "
            "([password] scheme, ident, rounds) or with PASSWORD_SCHEMES / PASSWORD_ROUNDS"
        )

    def as_json(self) -> dict[str, Any]:
        return {
            "profile": self.profile,
            "profile_source": self.profile_source,
            "database": self.database,
            "table": self.table,
            "users": self.survey.users,
            "staff": self.survey.staff,
            "without_email": self.survey.without_email,
            "hash_formats": self.survey.hash_formats,
            "writes": self.survey.writes,
            "warning": self.warning(),
            "optional": [feature.as_json() for feature in self.optional],
        }

    def lines(self) -> list[str]:
        profile = self.profile + (f" ({self.profile_source})" if self.profile_source else "")
        counts = self.survey
        formats = counts.hash_formats
        width = max((len(name) for name in formats or {}), default=0)
        lines = [
            "Directory check (read-only: nothing was changed)",
            f"Profile:          {profile}",
            f"Database:         {self.database}",
            f"Table:            {self.table}",
            f"Users:            {counts.users:,}",
            f"Staff:            {counts.staff:,}",
            f"Without e-mail:   {counts.without_email:,}",
            "Password hashes:" + (
                "  not read (an optional grant, below)" if formats is None
                else "" if formats else "  none (the table is empty)"
            ),
            *[f"  {name.ljust(width)}  {number:>9,}" for name, number in (formats or {}).items()],
            f"A reset writes:   {counts.writes}",
        ]
        warning = self.warning()
        return [*lines, *([warning] if warning else []), *self.optional_lines()]

    def optional_lines(self) -> list[str]:
        """Each optional grant: there, or missing with the GRANT and what resetbot does
        without it."""
        if not self.optional:
            return []
        lines = ["Optional grants:"]
        for feature in self.optional:
            if feature.available:
                note = f" ({feature.note})" if feature.note else ""
                lines.append(f"  {feature.name}: granted{note}")
            else:
                lines.append(f"  {feature.name}: not granted ({feature.grant}); "
                             f"without it {feature.without}")
        return lines


def directory_report(settings: Settings) -> DirectoryReport:
    """Open the directory as a reset would (the same refusals), count, and close it."""
    directory = Directory.from_settings(settings)
    try:
        _require_own_table(directory)
        profile = directory.profile
        optional = optional_features(directory)
        return DirectoryReport(
            profile=profile.name,
            profile_source=profile.source if profile.source != profile.name else None,
            database=directory.shown_url,
            table=profile.table,
            survey=survey(directory, read_hashes=profile.owned
                          or available(optional, "hash survey")),
            optional=optional,
        )
    finally:
        directory.dispose()


def _require_own_table(directory: Directory) -> None:
    """resetbot's own table beside its state is made by `db upgrade`: say so when it is not."""
    if directory.profile.owned and not inspect(directory.engine).has_table(
        directory.profile.table
    ):
        raise Refused(
            f"the database {directory.shown_url} has no "
            f"{directory.profile.table} table yet: run `resetbot db upgrade` first"
        )


@dataclass(frozen=True)
class LdapReport:
    """What `directory check` shows of an LDAP directory: the server hashes, so no formats."""

    profile: str
    server: str
    staff_group: str | None
    counts: Counts
    rules: PasswordRules

    def as_json(self) -> dict[str, Any]:
        return {
            "profile": self.profile,
            "server": self.server,
            "staff_group": self.staff_group,
            "users": self.counts.users,
            "staff": self.counts.staff,
            "without_email": self.counts.without_email,
            "locked_on_purpose": self.counts.locked,
            "password_rules": {"source": self.rules.source,
                               "min_length": self.rules.min_length,
                               "complexity": self.rules.complexity},
            "writes": "passwords, hashed by the server",
        }

    def lines(self) -> list[str]:
        rules = self.rules
        said = [f"at least {rules.min_length} characters"] if rules.min_length else []
        said += ["three kinds of characters"] if rules.complexity else []
        return [
            "Directory check (read-only: nothing was changed)",
            f"Profile:          {self.profile}",
            f"Server:           {self.server}",
            f"Staff group:      {self.staff_group or 'none (nobody is staff)'}",
            f"Users:            {self.counts.users:,}",
            f"Staff:            {self.counts.staff:,}",
            f"Without e-mail:   {self.counts.without_email:,}",
            f"Locked on purpose: {self.counts.locked:,}",
            f"Password rules:   {', '.join(said) or 'none read'} ({rules.source})",
            "A reset writes:   the password, over TLS; the server hashes it",
        ]


def ldap_report(settings: Settings) -> LdapReport:
    """Sign in as the service account, count and read the rules (the same refusals as a
    reset), and close."""
    from core.directory.ldap.directory import LdapDirectory

    directory = open_directory(settings)
    try:
        assert isinstance(directory, LdapDirectory)
        return LdapReport(
            profile=directory.profile.name,
            server=directory.config.url.shown,
            staff_group=directory.config.staff_group,
            counts=directory.survey(),
            rules=directory.password_rules(),
        )
    finally:
        directory.dispose()


def check_directory(cli: Output, settings: Settings, *, as_json: bool) -> None:
    report: DirectoryReport | LdapReport = (
        ldap_report(settings) if uses_ldap(settings) else directory_report(settings)
    )
    if as_json:
        cli.say(json.dumps(report.as_json(), indent=2, ensure_ascii=True))
        return
    for line in report.lines():
        cli.say(line)
