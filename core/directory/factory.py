"""The one place a directory is made from Settings: a SQL table's or an LDAP server's.

Everything that reads or writes users (the worker, the planner, the preview, the approval and
schedule re-counts, the CLI and the Slack app) gets its directory here and talks to it only
through the protocol (core/directory/protocol.py).
"""

from __future__ import annotations

from sqlalchemy import Engine

from core.directory.protocol import Directory, checked
from core.directory.sql import SqlDirectory
from core.directory.sql.table import Directory as TableDirectory
from core.settings import Settings, ldap_environment, uses_ldap


def open_directory(
    settings: Settings, state_engine: Engine | None = None, *, check: bool = True
) -> Directory:
    """The directory of `settings`: DIRECTORY_URL's LDAP server or database, else the table
    beside resetbot's state (`state_engine`, when given, is shared).

    `check` reads what the directory needs now (a table's columns; the LDAP base, staff group
    and password rules), so a wrong setting is refused at start (ConfigError naming it).
    """
    if uses_ldap(settings):
        # Imported here: ldap3 is loaded only by those who use an LDAP directory.
        from core.directory.ldap.config import LdapConfig
        from core.directory.ldap.directory import LdapDirectory

        directory = LdapDirectory(LdapConfig.from_env(ldap_environment(settings)))
        return checked(directory) if check else directory
    return SqlDirectory(TableDirectory.from_settings(settings, state_engine, check=check))
