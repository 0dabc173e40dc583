"""Directories on an LDAP server: OpenLDAP (ppolicy) and Active Directory (issue 19 groundwork).

The shape both share:
- `config.LdapConfig.from_env(env)`: DIRECTORY_URL (ldaps:// or ldap:// + StartTLS, the base DN
  as the URL's path), DIRECTORY_TLS_CA_FILE, DIRECTORY_BIND_DN, DIRECTORY_BIND_PASSWORD(_FILE),
  DIRECTORY_PROFILE, DIRECTORY_STAFF_GROUP. The bind password is never in a repr.
- `profile.LdapProfile`: the `[ldap]` section of a profile (shipped: `openldap`,
  `active-directory` in `profiles/`): attributes, and one named kind per rule (staff, password
  method, must-change, unlock, locked on purpose, password rules).
- `connection.connect(config)`: one verified-TLS connection bound as the service account
  (ldap3, `get_info=NONE`); `connection.attempt_bind` signs in as a user with the ppolicy
  control (the directory's own check of a password).
- The directory class (`directory.LdapDirectory`) implements core/directory/protocol.py's
  `Directory`; what differs between servers (setting a password, must-change, unlock, staff,
  locked on purpose, the password rules) is chosen by the profile's kinds.

Not wired to the engine yet: see core/directory/protocol.py for what is left.
"""

from core.directory.ldap.config import LdapConfig, LdapUrl, is_ldap_url, parse_ldap_url
from core.directory.ldap.connection import (
    BindAttempt,
    DirectoryTlsError,
    attempt_bind,
    connect,
    open_connection,
)
from core.directory.ldap.profile import LdapProfile, load_ldap_profile, parse_ldap_profile

__all__ = [
    "BindAttempt",
    "DirectoryTlsError",
    "LdapConfig",
    "LdapProfile",
    "LdapUrl",
    "attempt_bind",
    "connect",
    "is_ldap_url",
    "load_ldap_profile",
    "open_connection",
    "parse_ldap_profile",
    "parse_ldap_url",
]
