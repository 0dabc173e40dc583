"""A Koha-shaped `borrowers` table for tests: made, filled, dumped; hashes checked as Koha does.

The table has the columns Koha's profile reads and writes, plus unrelated ones a real
`borrowers` has (branch, category, birth date, address, a timestamp MariaDB moves on update),
so a test can show that a reset changes nothing but the password columns of its users.
"""

from __future__ import annotations

import subprocess
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import date
from typing import Any

from sqlalchemy import Engine, text

from core.directory.profile import shipped_profiles

TABLE = "borrowers"

_DDL = {
    "mysql": """
        CREATE TABLE borrowers (
            borrowernumber INT NOT NULL AUTO_INCREMENT PRIMARY KEY,
            cardnumber VARCHAR(32) NULL UNIQUE,
            surname LONGTEXT NULL,
            firstname MEDIUMTEXT NULL,
            email MEDIUMTEXT NULL,
            address MEDIUMTEXT NULL,
            dateofbirth DATE NULL,
            branchcode VARCHAR(10) NOT NULL DEFAULT '',
            categorycode VARCHAR(10) NOT NULL DEFAULT '',
            userid VARCHAR(75) NULL UNIQUE,
            password VARCHAR(60) NULL,
            flags BIGINT NULL,
            login_attempts INT NOT NULL DEFAULT 0,
            password_expiration_date DATE NULL,
            updated_on TIMESTAMP NOT NULL DEFAULT CURRENT_TIMESTAMP ON UPDATE CURRENT_TIMESTAMP
        ) ENGINE=InnoDB DEFAULT CHARSET=utf8mb4 COLLATE=utf8mb4_unicode_ci
    """,
    "postgresql": """
        CREATE TABLE borrowers (
            borrowernumber SERIAL PRIMARY KEY,
            cardnumber VARCHAR(32) NULL UNIQUE,
            surname TEXT NULL,
            firstname TEXT NULL,
            email TEXT NULL,
            address TEXT NULL,
            dateofbirth DATE NULL,
            branchcode VARCHAR(10) NOT NULL DEFAULT '',
            categorycode VARCHAR(10) NOT NULL DEFAULT '',
            userid VARCHAR(75) NULL UNIQUE,
            password VARCHAR(60) NULL,
            flags BIGINT NULL,
            login_attempts INTEGER NOT NULL DEFAULT 0,
            password_expiration_date DATE NULL,
            updated_on TIMESTAMP NOT NULL DEFAULT CURRENT_TIMESTAMP
        )
    """,
    "sqlite": """
        CREATE TABLE borrowers (
            borrowernumber INTEGER PRIMARY KEY AUTOINCREMENT,
            cardnumber VARCHAR(32) NULL UNIQUE,
            surname TEXT NULL,
            firstname TEXT NULL,
            email TEXT NULL,
            address TEXT NULL,
            dateofbirth DATE NULL,
            branchcode VARCHAR(10) NOT NULL DEFAULT '',
            categorycode VARCHAR(10) NOT NULL DEFAULT '',
            userid VARCHAR(75) NULL UNIQUE,
            password VARCHAR(60) NULL,
            flags BIGINT NULL,
            login_attempts INTEGER NOT NULL DEFAULT 0,
            password_expiration_date DATE NULL,
            updated_on TIMESTAMP NOT NULL DEFAULT CURRENT_TIMESTAMP
        )
    """,
}

#: A hash Koha wrote before (cost 8, $2a$): what every row holds until a reset.
OLD_HASH = "$2a$08$" + "Dp7OeWlJqZbyS9qxNl5wBe" + "qkVSa2J6O4Rm0jBk7CwYh0c5Rt1z5mW"
PAST = date(2020, 1, 31)
FUTURE = date(2099, 12, 31)


@dataclass(frozen=True)
class Borrower:
    number: int
    cardnumber: str
    userid: str | None
    firstname: str
    surname: str
    email: str | None
    flags: int | None
    login_attempts: int
    expires: date | None

    @property
    def username(self) -> str:
        """As Koha signs in: the user id, else the card number."""
        return self.userid or self.cardnumber

    @property
    def is_staff(self) -> bool:
        return bool(self.flags)


BORROWERS = [
    Borrower(1, "C0001", "ada", "Ada", "Lovelace", "ada@example.org", 0, 3, PAST),
    Borrower(2, "C0002", None, "Bob", "Binder", "bob@example.org", None, -1, FUTURE),
    Borrower(3, "C0003", "carol", "Carol", "Cataloguer", "carol@example.org", 1, 0, None),
    Borrower(4, "C0004", "", "Dave", "Dewey", None, 0, 0, None),
    Borrower(5, "C0005", "erin", "Erin", "Editor", None, 4, 3, PAST),
    Borrower(6, "C0006", "frank", "Frank", "Folio", "", 0, 3, FUTURE),
    Borrower(7, "C0007", "grace", "Grace", "Gutenberg", "grace@example.org", 0, 0, PAST),
    Borrower(8, "C0008", "heidi", "Heidi", "Hopper", "heidi@example.org", 0, -1, None),
]
PATRONS = {b.number for b in BORROWERS if not b.is_staff}
STAFF = {b.number for b in BORROWERS if b.is_staff}
EVERYONE = PATRONS | STAFF


def create_borrowers(engine: Engine) -> None:
    """The table and its rows, as a library's Koha database would hold them."""
    with engine.begin() as connection:
        connection.execute(text(_DDL[engine.dialect.name]))
        connection.execute(
            text(
                "INSERT INTO borrowers (borrowernumber, cardnumber, userid, firstname, surname, "
                "email, flags, login_attempts, password_expiration_date, password, branchcode, "
                "categorycode, dateofbirth, address) VALUES (:n, :card, :userid, :first, :sur, "
                ":email, :flags, :attempts, :expires, :hash, 'MAIN', :category, :born, :address)"
            ),
            [
                {"n": b.number, "card": b.cardnumber, "userid": b.userid, "first": b.firstname,
                 "sur": b.surname, "email": b.email, "flags": b.flags,
                 "attempts": b.login_attempts, "expires": b.expires, "hash": OLD_HASH,
                 "category": "S" if b.is_staff else "PT", "born": date(1980, 1, b.number),
                 "address": f"{b.number} Library Lane"}
                for b in BORROWERS
            ],
        )
        if engine.dialect.name == "postgresql":
            connection.execute(text(
                "SELECT setval(pg_get_serial_sequence('borrowers', 'borrowernumber'), 8)"
            ))


def dump(engine: Engine) -> dict[int, tuple[Any, ...]]:
    """Every column of every row, by borrowernumber: what "byte-identical" is checked on."""
    with engine.connect() as connection:
        rows = connection.execute(text("SELECT * FROM borrowers ORDER BY borrowernumber")).all()
    return {int(row[0]): tuple(row) for row in rows}


def row(engine: Engine, number: int) -> dict[str, Any]:
    with engine.connect() as connection:
        found = connection.execute(
            text("SELECT * FROM borrowers WHERE borrowernumber = :n"), {"n": number}
        ).mappings().one()
    return dict(found)


def schema_objects(engine: Engine) -> list[tuple[Any, ...]]:
    """Every table, column, index and trigger of the database, to show none was added."""
    queries = {
        "mysql": [
            "SELECT table_name, table_type FROM information_schema.tables "
            "WHERE table_schema = DATABASE()",
            "SELECT table_name, column_name, column_type, is_nullable, column_default "
            "FROM information_schema.columns WHERE table_schema = DATABASE()",
            "SELECT table_name, index_name, column_name FROM information_schema.statistics "
            "WHERE table_schema = DATABASE()",
            "SELECT trigger_name FROM information_schema.triggers "
            "WHERE trigger_schema = DATABASE()",
        ],
        "postgresql": [
            "SELECT table_name, table_type FROM information_schema.tables "
            "WHERE table_schema NOT IN ('pg_catalog', 'information_schema')",
            "SELECT table_name, column_name, data_type FROM information_schema.columns "
            "WHERE table_schema NOT IN ('pg_catalog', 'information_schema')",
            "SELECT tablename, indexname FROM pg_indexes WHERE schemaname = 'public'",
            "SELECT tgname FROM pg_trigger WHERE NOT tgisinternal",
            "SELECT extname FROM pg_extension",
        ],
        "sqlite": ["SELECT type, name, tbl_name, sql FROM sqlite_master"],
    }[engine.dialect.name]
    with engine.connect() as connection:
        return sorted(
            tuple(map(str, found)) for query in queries for found in connection.execute(text(query))
        )


def koha_profile_text() -> str:
    """The shipped Koha profile, as a library would copy it into a file of its own."""
    from importlib import resources

    assert "koha" in shipped_profiles()
    return resources.files("core.directory").joinpath("profiles/koha.toml").read_text("utf-8")


#: Reads "password\nhash\n" pairs on stdin; prints yes/no per pair, as Koha checks a sign-in:
#: bcrypt($password, $stored) eq $stored. A hash Crypt::Eksblowfish refuses ($2b$) is a no.
_PERL_CHECK = r"""
use strict; use warnings;
use Crypt::Eksblowfish::Bcrypt qw(bcrypt);
while (defined(my $password = <STDIN>)) {
    chomp $password;
    my $stored = <STDIN>; chomp $stored;
    my $ok = eval { bcrypt($password, $stored) eq $stored };
    print(($ok ? "yes" : "no"), "\n");
}
"""


def koha_accepts(pairs: Sequence[tuple[str, str]]) -> list[bool]:
    """Whether Koha's own check accepts each (password, stored hash); passwords go on stdin."""
    given = "".join(f"{password}\n{stored}\n" for password, stored in pairs)
    done = subprocess.run(
        ["perl", "-e", _PERL_CHECK], input=given, capture_output=True, text=True, check=True,
        timeout=60,
    )
    return [line == "yes" for line in done.stdout.splitlines()]


def add_borrowers(engine: Engine, borrowers: Sequence[Borrower], category: str = "PT") -> None:
    """More patrons beside the usual ones (the columns every Koha `borrowers` has), each with
    the hash Koha wrote before; `category` is their categorycode."""
    with engine.begin() as connection:
        connection.execute(
            text(
                "INSERT INTO borrowers (borrowernumber, cardnumber, userid, firstname, surname, "
                "email, flags, login_attempts, password_expiration_date, password, branchcode, "
                "categorycode) VALUES (:n, :card, :userid, :first, :sur, :email, :flags, "
                ":attempts, :expires, :hash, 'MAIN', :category)"
            ),
            [
                {"n": b.number, "card": b.cardnumber, "userid": b.userid, "first": b.firstname,
                 "sur": b.surname, "email": b.email, "flags": b.flags,
                 "attempts": b.login_attempts, "expires": b.expires, "hash": OLD_HASH,
                 "category": category}
                for b in borrowers
            ],
        )


#: Koha's `categories` (the columns of its password rules, with Koha's types and defaults) and
#: `systempreferences`, as kohastructure.sql has them (Koha 23.11), for MariaDB. IF NOT EXISTS:
#: a fixture with Koha's whole `categories` keeps its own.
_RULES_DDL = [
    """
    CREATE TABLE IF NOT EXISTS categories (
        categorycode VARCHAR(10) NOT NULL DEFAULT '',
        description LONGTEXT DEFAULT NULL,
        category_type VARCHAR(1) NOT NULL DEFAULT 'A',
        min_password_length SMALLINT(6) DEFAULT NULL,
        require_strong_password TINYINT(1) DEFAULT NULL,
        PRIMARY KEY (categorycode)
    ) ENGINE=InnoDB DEFAULT CHARSET=utf8mb4 COLLATE=utf8mb4_unicode_ci
    """,
    """
    CREATE TABLE IF NOT EXISTS systempreferences (
        variable VARCHAR(50) NOT NULL DEFAULT '',
        value MEDIUMTEXT DEFAULT NULL,
        options LONGTEXT DEFAULT NULL,
        explanation MEDIUMTEXT DEFAULT NULL,
        type VARCHAR(20) DEFAULT NULL,
        PRIMARY KEY (variable)
    ) ENGINE=InnoDB DEFAULT CHARSET=utf8mb4 COLLATE=utf8mb4_unicode_ci
    """,
]
#: Koha's `action_logs` (Koha 23.11), where Koha's staff read who changed what.
_ACTION_LOGS_DDL = """
    CREATE TABLE IF NOT EXISTS action_logs (
        action_id INT(11) NOT NULL AUTO_INCREMENT,
        timestamp TIMESTAMP NOT NULL DEFAULT CURRENT_TIMESTAMP,
        user INT(11) NOT NULL DEFAULT 0,
        module MEDIUMTEXT DEFAULT NULL,
        action MEDIUMTEXT DEFAULT NULL,
        object INT(11) DEFAULT NULL,
        info MEDIUMTEXT DEFAULT NULL,
        interface VARCHAR(30) DEFAULT NULL,
        script VARCHAR(255) DEFAULT NULL,
        trace TEXT DEFAULT NULL,
        diff LONGTEXT DEFAULT NULL,
        PRIMARY KEY (action_id),
        KEY timestamp_idx (timestamp),
        KEY user_idx (user),
        KEY module_idx (module(191)),
        KEY action_idx (action(191)),
        KEY object_idx (object),
        KEY info_idx (info(191)),
        KEY interface (interface)
    ) ENGINE=InnoDB DEFAULT CHARSET=utf8mb4 COLLATE=utf8mb4_unicode_ci
"""


def create_password_rules(
    engine: Engine,
    categories: dict[str, tuple[int | None, int | None]],
    preferences: dict[str, str],
) -> None:
    """Koha's password rules on MariaDB: categories (code -> (min_password_length,
    require_strong_password), NULL meaning "as the preference") and system preferences."""
    with engine.begin() as connection:
        for ddl in _RULES_DDL:
            connection.execute(text(ddl))
        for code, (length, strong) in categories.items():
            connection.execute(text(
                "INSERT INTO categories (categorycode, description, min_password_length, "
                "require_strong_password) VALUES (:code, :code, :length, :strong) "
                "ON DUPLICATE KEY UPDATE min_password_length = :length, "
                "require_strong_password = :strong"
            ), {"code": code, "length": length, "strong": strong})
        for name, value in preferences.items():
            connection.execute(text(
                "INSERT INTO systempreferences (variable, value, type) VALUES (:n, :v, 'Free') "
                "ON DUPLICATE KEY UPDATE value = :v"
            ), {"n": name, "v": value})


def create_action_logs(engine: Engine) -> None:
    with engine.begin() as connection:
        connection.execute(text(_ACTION_LOGS_DDL))


def action_logs(engine: Engine) -> list[dict[str, Any]]:
    with engine.connect() as connection:
        rows = connection.execute(text("SELECT * FROM action_logs ORDER BY action_id"))
        return [dict(found) for found in rows.mappings()]
