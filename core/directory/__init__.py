"""The library's users: one Directory over its own engine, read and written as a profile says.

`Directory.from_settings(settings, state_engine)` gives the directory of DIRECTORY_URL (else
DATABASE_URL's) under DIRECTORY_PROFILE (`resetbot`, `koha`, or a .toml file).
"""

from core.directory.search_index import create_search_index
from core.directory.sql.profile import Profile, load_profile, resetbot_profile
from core.directory.sql.table import Directory, UserSearch, hasher_for
from core.directory.users import SEARCH_LIMIT, DirectoryUser, Preview

__all__ = [
    "SEARCH_LIMIT",
    "Directory",
    "DirectoryUser",
    "Preview",
    "Profile",
    "UserSearch",
    "create_search_index",
    "hasher_for",
    "load_profile",
    "resetbot_profile",
]
