"""Whether DIRECTORY_URL names an LDAP server: a look at its scheme, nothing more.

Apart from core/directory/ldap/ so that reading the settings (every command does) tells a
database from an LDAP server without importing ldap3, nor the directory package with it.
"""

from __future__ import annotations

from typing import Literal
from urllib.parse import urlsplit

LdapScheme = Literal["ldaps", "ldap"]
SCHEMES: tuple[LdapScheme, ...] = ("ldaps", "ldap")


def is_ldap_url(url: str | None) -> bool:
    """Whether DIRECTORY_URL names an LDAP server rather than a database."""
    return bool(url) and urlsplit(str(url).strip()).scheme.lower() in SCHEMES
