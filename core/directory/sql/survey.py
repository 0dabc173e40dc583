"""What resetbot sees in a directory, read-only: counts and the password hash formats it holds.

`survey` only SELECTs, through the directory's own engine: it is what `resetbot directory check`
shows before a library lets resetbot write anything. A hash is never kept or shown: each is
reduced to its format's prefix (`$2a$08$`: scheme, variant and cost), which holds no salt and no
digest.
"""

from __future__ import annotations

import re
import secrets
from collections import Counter
from dataclasses import dataclass

from sqlalchemy import select

from core.directory.sql.table import Directory
from core.models import Scope

EMPTY = "empty"
UNKNOWN = "other/unknown"
#: Rows fetched per round trip while the password column is read.
SURVEY_BATCH = 10_000

#: Each known format's prefix: what names the scheme and its cost, and never a salt or digest.
_FORMATS = [
    re.compile(pattern) for pattern in (
        r"\$2[abxy]?\$\d{2}\$",  # bcrypt: variant and cost
        r"\$argon2(?:id|i|d)\$v=\d+\$m=\d+,t=\d+,p=\d+\$",
        r"\$[56]\$rounds=\d+\$",  # sha256/sha512-crypt with a cost of its own
        r"\$(?:1|5|6|apr1|md5|y|gy|7)\$",  # md5/sha-crypt, yescrypt, scrypt: the scheme only
        r"\$pbkdf2(?:-sha\d+)?\$\d+\$",
        r"\$scrypt\$ln=\d+,r=\d+,p=\d+\$",
        r"\{[A-Z0-9-]{2,20}\}",  # LDAP's {SSHA}, {CRYPT}, ...
        r"[a-z0-9_]{3,30}\$\d+\$",  # Django's pbkdf2_sha256$600000$
    )
]


def hash_format(stored: object) -> str:
    """The format prefix of a stored password (`$2a$08$`), `empty`, or `other/unknown`."""
    if stored is None:
        return EMPTY
    value = stored.decode("ascii", "replace") if isinstance(stored, bytes) else str(stored)
    if not value.strip():
        return EMPTY
    for pattern in _FORMATS:
        found = pattern.match(value)
        if found:
            return found.group(0)
    return UNKNOWN


@dataclass(frozen=True)
class Survey:
    users: int
    staff: int
    without_email: int
    #: Format prefix -> users whose password has it, the most common first; None when the
    #: database user may not read the password column (an optional grant).
    hash_formats: dict[str, int] | None
    #: The prefix of the hashes a reset writes now (profile and PASSWORD_* settings).
    writes: str

    @property
    def most_common(self) -> str | None:
        """The format most users' passwords have, leaving out empty ones."""
        formats = [name for name in self.hash_formats or {} if name != EMPTY]
        return formats[0] if formats else None

    @property
    def differs(self) -> bool:
        """Whether what resetbot writes is not what the table mostly holds."""
        common = self.most_common
        return common is not None and common != self.writes


def survey(directory: Directory, *, read_hashes: bool = True) -> Survey:
    """Count the directory's users and (`read_hashes`) their password formats: SELECTs only."""
    counted = directory.preview(Scope.ALL, ())
    return Survey(
        users=counted.users,
        staff=counted.staff,
        without_email=counted.without_email,
        hash_formats=_hash_formats(directory) if read_hashes else None,
        writes=written_format(directory),
    )


def _hash_formats(directory: Directory) -> dict[str, int]:
    column = directory.table.c[directory.profile.password]
    formats: Counter[str] = Counter()
    with directory.engine.connect() as connection:
        rows = connection.execution_options(stream_results=True, yield_per=SURVEY_BATCH).execute(
            select(column)
        )
        for (stored,) in rows:
            formats[hash_format(stored)] += 1
    return dict(sorted(formats.items(), key=lambda item: (-item[1], item[0])))


def written_format(directory: Directory) -> str:
    """The prefix of what a reset writes: one throw-away password hashed as a reset would."""
    return hash_format(directory.hasher.hash(secrets.token_urlsafe(16)))
