"""Koha's `borrowers` for tests: made, filled, dumped; hashes checked as Koha does.

On MariaDB it is Koha's own table (`KOHA_DDL`: all 82 columns, keys and foreign keys, with the
three tables those name), so a test meets what a library runs. PostgreSQL and SQLite cannot hold
Koha's MariaDB statements: there a small Koha-shaped table stands in, with the columns Koha's
profile reads and writes plus unrelated ones (branch, category, birth date, address, a
timestamp), so a test can show that a reset changes nothing but the password columns of its users.
"""

from __future__ import annotations

import subprocess
from collections.abc import Iterator, Sequence
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass, replace
from datetime import date, timedelta
from pathlib import Path
from typing import Any, Literal

import pytest
from sqlalchemy import Engine, inspect, text

from core.db import make_engine
from core.directory.sql.profile import shipped_profiles
from core.migrate import upgrade
from core.settings import Settings
from tests.support.databases import mariadb_database, postgres_database
from tests.support.schema_copies import SqliteSchemas
from tests.support.smtp import SmtpServer

TABLE = "borrowers"

#: Koha's own tables, as `installer/data/mysql/kohastructure.sql` creates them on MariaDB: Koha's
#: main branch at commit 00545f8 (the 24.x line: `borrowers` has `middle_name` and
#: `password_expiration_date`), written out here without Koha's column comments. `borrowers`
#: (82 columns) and the three tables its foreign keys name: `categories`, `branches`,
#: `sms_providers`. Created in this order, so every foreign key finds its table.
KOHA_VERSION = "Koha main @ 00545f8 (24.x)"
KOHA_DDL = (
    """
    CREATE TABLE `categories` (
      `categorycode` varchar(10) NOT NULL DEFAULT '',
      `description` longtext DEFAULT NULL,
      `enrolmentperiod` smallint(6) DEFAULT NULL,
      `enrolmentperioddate` date DEFAULT NULL,
      `password_expiry_days` smallint(6) DEFAULT NULL,
      `upperagelimit` smallint(6) DEFAULT NULL,
      `dateofbirthrequired` tinyint(1) DEFAULT NULL,
      `finetype` varchar(30) DEFAULT NULL,
      `bulk` tinyint(1) DEFAULT NULL,
      `enrolmentfee` decimal(28,6) DEFAULT NULL,
      `overduenoticerequired` tinyint(1) DEFAULT NULL,
      `issuelimit` smallint(6) DEFAULT NULL,
      `reservefee` decimal(28,6) DEFAULT NULL,
      `hidelostitems` tinyint(1) NOT NULL DEFAULT 0,
      `category_type` varchar(1) NOT NULL DEFAULT 'A',
      `BlockExpiredPatronOpacActions` tinyint(1) NOT NULL DEFAULT -1,
      `default_privacy` enum('default','never','forever') NOT NULL DEFAULT 'default',
      `checkprevcheckout` varchar(7) NOT NULL DEFAULT 'inherit',
      `can_be_guarantee` tinyint(1) NOT NULL DEFAULT 0,
      `reset_password` tinyint(1) DEFAULT NULL,
      `change_password` tinyint(1) DEFAULT NULL,
      `min_password_length` smallint(6) DEFAULT NULL,
      `require_strong_password` tinyint(1) DEFAULT NULL,
      `exclude_from_local_holds_priority` tinyint(1) DEFAULT NULL,
      PRIMARY KEY (`categorycode`),
      UNIQUE KEY `categorycode` (`categorycode`)
    ) ENGINE=InnoDB DEFAULT CHARSET=utf8mb4 COLLATE=utf8mb4_unicode_ci
    """,
    """
    CREATE TABLE `branches` (
      `branchcode` varchar(10) NOT NULL DEFAULT '',
      `branchname` longtext NOT NULL,
      `branchaddress1` longtext DEFAULT NULL,
      `branchaddress2` longtext DEFAULT NULL,
      `branchaddress3` longtext DEFAULT NULL,
      `branchzip` varchar(25) DEFAULT NULL,
      `branchcity` longtext DEFAULT NULL,
      `branchstate` longtext DEFAULT NULL,
      `branchcountry` mediumtext DEFAULT NULL,
      `branchphone` longtext DEFAULT NULL,
      `branchfax` longtext DEFAULT NULL,
      `branchemail` longtext DEFAULT NULL,
      `branchillemail` longtext DEFAULT NULL,
      `branchreplyto` longtext DEFAULT NULL,
      `branchreturnpath` longtext DEFAULT NULL,
      `branchurl` longtext DEFAULT NULL,
      `issuing` tinyint(4) DEFAULT NULL,
      `branchip` varchar(15) DEFAULT NULL,
      `branchnotes` longtext DEFAULT NULL,
      `geolocation` varchar(255) DEFAULT NULL,
      `marcorgcode` varchar(16) DEFAULT NULL,
      `pickup_location` tinyint(1) NOT NULL DEFAULT 1,
      `public` tinyint(1) NOT NULL DEFAULT 1,
      PRIMARY KEY (`branchcode`)
    ) ENGINE=InnoDB DEFAULT CHARSET=utf8mb4 COLLATE=utf8mb4_unicode_ci
    """,
    """
    CREATE TABLE `sms_providers` (
      `id` int(11) NOT NULL AUTO_INCREMENT,
      `name` varchar(255) NOT NULL,
      `domain` varchar(255) NOT NULL,
      PRIMARY KEY (`id`),
      UNIQUE KEY `name` (`name`(191))
    ) ENGINE=InnoDB DEFAULT CHARSET=utf8mb4 COLLATE=utf8mb4_unicode_ci
    """,
    """
    CREATE TABLE `borrowers` (
      `borrowernumber` int(11) NOT NULL AUTO_INCREMENT,
      `cardnumber` varchar(32) DEFAULT NULL,
      `surname` longtext DEFAULT NULL,
      `firstname` mediumtext DEFAULT NULL,
      `middle_name` longtext DEFAULT NULL,
      `title` longtext DEFAULT NULL,
      `othernames` longtext DEFAULT NULL,
      `initials` mediumtext DEFAULT NULL,
      `pronouns` longtext DEFAULT NULL,
      `streetnumber` tinytext DEFAULT NULL,
      `streettype` tinytext DEFAULT NULL,
      `address` longtext DEFAULT NULL,
      `address2` mediumtext DEFAULT NULL,
      `city` longtext DEFAULT NULL,
      `state` mediumtext DEFAULT NULL,
      `zipcode` tinytext DEFAULT NULL,
      `country` mediumtext DEFAULT NULL,
      `email` longtext DEFAULT NULL,
      `phone` mediumtext DEFAULT NULL,
      `mobile` tinytext DEFAULT NULL,
      `fax` longtext DEFAULT NULL,
      `emailpro` mediumtext DEFAULT NULL,
      `phonepro` mediumtext DEFAULT NULL,
      `B_streetnumber` tinytext DEFAULT NULL,
      `B_streettype` tinytext DEFAULT NULL,
      `B_address` mediumtext DEFAULT NULL,
      `B_address2` mediumtext DEFAULT NULL,
      `B_city` longtext DEFAULT NULL,
      `B_state` mediumtext DEFAULT NULL,
      `B_zipcode` tinytext DEFAULT NULL,
      `B_country` mediumtext DEFAULT NULL,
      `B_email` mediumtext DEFAULT NULL,
      `B_phone` longtext DEFAULT NULL,
      `dateofbirth` date DEFAULT NULL,
      `branchcode` varchar(10) NOT NULL DEFAULT '',
      `categorycode` varchar(10) NOT NULL DEFAULT '',
      `dateenrolled` date DEFAULT NULL,
      `dateexpiry` date DEFAULT NULL,
      `password_expiration_date` date DEFAULT NULL,
      `date_renewed` date DEFAULT NULL,
      `gonenoaddress` tinyint(1) DEFAULT NULL,
      `lost` tinyint(1) DEFAULT NULL,
      `debarred` date DEFAULT NULL,
      `debarredcomment` varchar(255) DEFAULT NULL,
      `contactname` longtext DEFAULT NULL,
      `contactfirstname` mediumtext DEFAULT NULL,
      `contacttitle` mediumtext DEFAULT NULL,
      `borrowernotes` longtext DEFAULT NULL,
      `relationship` varchar(100) DEFAULT NULL,
      `sex` varchar(1) DEFAULT NULL,
      `password` varchar(60) DEFAULT NULL,
      `secret` mediumtext DEFAULT NULL,
      `auth_method` enum('password','two-factor') NOT NULL DEFAULT 'password',
      `flags` bigint(11) DEFAULT NULL,
      `userid` varchar(75) DEFAULT NULL,
      `opacnote` longtext DEFAULT NULL,
      `contactnote` varchar(255) DEFAULT NULL,
      `sort1` varchar(80) DEFAULT NULL,
      `sort2` varchar(80) DEFAULT NULL,
      `altcontactfirstname` mediumtext DEFAULT NULL,
      `altcontactsurname` mediumtext DEFAULT NULL,
      `altcontactaddress1` mediumtext DEFAULT NULL,
      `altcontactaddress2` mediumtext DEFAULT NULL,
      `altcontactaddress3` mediumtext DEFAULT NULL,
      `altcontactstate` mediumtext DEFAULT NULL,
      `altcontactzipcode` mediumtext DEFAULT NULL,
      `altcontactcountry` mediumtext DEFAULT NULL,
      `altcontactphone` mediumtext DEFAULT NULL,
      `smsalertnumber` varchar(50) DEFAULT NULL,
      `sms_provider_id` int(11) DEFAULT NULL,
      `privacy` int(11) NOT NULL DEFAULT 1,
      `privacy_guarantor_fines` tinyint(1) NOT NULL DEFAULT 0,
      `privacy_guarantor_checkouts` tinyint(1) NOT NULL DEFAULT 0,
      `checkprevcheckout` varchar(7) NOT NULL DEFAULT 'inherit',
      `updated_on` timestamp NOT NULL DEFAULT current_timestamp() ON UPDATE current_timestamp(),
      `lastseen` datetime DEFAULT NULL,
      `lang` varchar(25) NOT NULL DEFAULT 'default',
      `login_attempts` int(4) NOT NULL DEFAULT 0,
      `overdrive_auth_token` mediumtext DEFAULT NULL,
      `anonymized` tinyint(1) NOT NULL DEFAULT 0,
      `autorenew_checkouts` tinyint(1) NOT NULL DEFAULT 1,
      `primary_contact_method` varchar(45) DEFAULT NULL,
      PRIMARY KEY (`borrowernumber`),
      UNIQUE KEY `cardnumber` (`cardnumber`),
      UNIQUE KEY `userid` (`userid`),
      KEY `categorycode` (`categorycode`),
      KEY `branchcode` (`branchcode`),
      KEY `surname_idx` (`surname`(191)),
      KEY `firstname_idx` (`firstname`(191)),
      KEY `othernames_idx` (`othernames`(191)),
      KEY `sms_provider_id` (`sms_provider_id`),
      KEY `cardnumber_idx` (`cardnumber`),
      KEY `userid_idx` (`userid`),
      KEY `middle_name_idx` (`middle_name`(768)),
      CONSTRAINT `borrowers_ibfk_1` FOREIGN KEY (`categorycode`)
        REFERENCES `categories` (`categorycode`),
      CONSTRAINT `borrowers_ibfk_2` FOREIGN KEY (`branchcode`) REFERENCES `branches` (`branchcode`),
      CONSTRAINT `borrowers_ibfk_3` FOREIGN KEY (`sms_provider_id`)
        REFERENCES `sms_providers` (`id`) ON DELETE SET NULL ON UPDATE CASCADE
    ) ENGINE=InnoDB DEFAULT CHARSET=utf8mb4 COLLATE=utf8mb4_unicode_ci
    """,
)

#: What Koha's foreign keys need before a patron can be added: categories, a branch, an SMS
#: provider (none of it is ever read by resetbot).
KOHA_REFERENCE_ROWS = (
    "INSERT INTO categories (categorycode, description, category_type, min_password_length, "
    "require_strong_password) VALUES ('PT', 'Patron', 'A', NULL, NULL), "
    "('S', 'Staff', 'S', 8, 1), ('KID', 'Children', 'C', 3, 0)",
    "INSERT INTO branches (branchcode, branchname) VALUES ('MAIN', 'Main library')",
    "INSERT INTO sms_providers (name, domain) VALUES ('Example Mobile', 'sms.example.org')",
)

#: The small stand-in on the databases Koha does not run on.
_DDL = {
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


#: An expiry date of "today" (when the rows are made): Koha reads it as expired already.
TODAY: Literal["today"] = "today"


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
    expires: date | Literal["today"] | None
    #: Koha's patron category (a row of `categories`): staff are `S` unless said otherwise.
    category: str | None = None

    @property
    def username(self) -> str:
        """As Koha signs in: the user id, else the card number."""
        return self.userid or self.cardnumber

    @property
    def is_staff(self) -> bool:
        return bool(self.flags)

    @property
    def categorycode(self) -> str:
        return self.category or ("S" if self.is_staff else "PT")

    def expiry(self) -> date | None:
        return date.today() if self.expires == TODAY else self.expires


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

#: The cases issue 17 met in a real Koha, beside BORROWERS (numbers from 101, so the eight above
#: keep their numbers): addresses that are not addresses, accounts staff locked on purpose,
#: expiry dates of today, accented user ids (NFC in the table), `_` and `%` in user ids, staff
#: with Koha's permission bits (superlibrarian 1, catalogue 4, a large mask), a child category.
#: Tests pass `BORROWERS + KOHA_CASES` to `create_borrowers` where they want them.
KOHA_CASES = [
    Borrower(101, "C0101", "blank", "Blanche", "Blank", "   ", 0, 0, PAST),
    Borrower(102, "C0102", "nanna", "Nanna", "Notapplicable", "n/a", 0, 0, None),
    Borrower(103, "C0103", "nonie", "Nonie", "None", "none", 0, 3, FUTURE),
    Borrower(104, "C0104", "lockie", "Lockie", "Locked", "lockie@example.org", 0, -1, PAST),
    Borrower(105, "C0105", "tess", "Tess", "Today", "tess@example.org", 0, 0, TODAY),
    Borrower(106, "C0106", "zoë", "Zoë", "Ångström", "zoe@example.org", 0, 0, None),
    Borrower(107, "C0107", "josé", "José", "Núñez", None, 0, 0, PAST),
    Borrower(108, "C0108", "mary_ann", "Mary Ann", "Under", "mary@example.org", 0, 0, None),
    Borrower(109, "C0109", "100%", "Percy", "Cent", "percy@example.org", 0, 0, None),
    Borrower(110, "C0110", "root", "Rita", "Superlibrarian", "rita@example.org", 1, 0, None),
    Borrower(111, "C0111", "cat", "Cato", "Cataloguer", "cato@example.org", 1 << 20 | 4, 0,
             None),
    Borrower(112, "C0112", None, "Kit", "Kid", "kit@example.org", None, 0, TODAY, "KID"),
    Borrower(113, "C0113", "sam", "Sam", "Staffnomail", "   ", 2, -1, None),
]


def create_borrowers(engine: Engine, borrowers: Sequence[Borrower] = BORROWERS) -> None:
    """The table and its rows, as a library's Koha database would hold them: on MariaDB Koha's
    own tables (`KOHA_DDL`, with the rows their foreign keys need), elsewhere the stand-in."""
    with engine.begin() as connection:
        if engine.dialect.name == "mysql":
            for statement in (*KOHA_DDL, *KOHA_REFERENCE_ROWS):
                connection.execute(text(statement))
        else:
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
                 "attempts": b.login_attempts, "expires": b.expiry(), "hash": OLD_HASH,
                 "category": b.categorycode, "born": date(1980, 1, 1) + timedelta(b.number - 1),
                 "address": f"{b.number} Library Lane"}
                for b in borrowers
            ],
        )
        if engine.dialect.name == "postgresql":
            connection.execute(text(
                "SELECT setval(pg_get_serial_sequence('borrowers', 'borrowernumber'), "
                "(SELECT max(borrowernumber) FROM borrowers))"
            ))


def dump_tables(engine: Engine) -> dict[str, list[tuple[Any, ...]]]:
    """Every row of every table of the database (Koha's `categories` ... too), in key order."""
    with engine.connect() as connection:
        names = sorted(inspect(connection).get_table_names())
        return {
            name: [tuple(found) for found in connection.execute(
                text(f"SELECT * FROM {name} ORDER BY 1")  # names from the catalog
            )]
            for name in names
        }


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
    return resources.files("core.directory.sql").joinpath("profiles/koha.toml").read_text("utf-8")


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


@contextmanager
def koha_on_mariadb(settings: Settings) -> Iterator[tuple[Settings, Engine]]:
    """Koha's `borrowers` on a throw-away MariaDB database, and `settings` pointed at it.

    bcrypt at its least cost (quick tests); resetbot's own state upgraded on the test's database.
    """
    with mariadb_database() as url:
        engine = make_engine(url)
        create_borrowers(engine)
        configured = replace(settings, directory_url=url, directory_profile="koha",
                             password_rounds=4, password_allow_weak_rounds=True)
        upgrade(configured)
        try:
            yield configured, engine
        finally:
            engine.dispose()


#: Koha's `updated_on` is the server's ON UPDATE CURRENT_TIMESTAMP: any write moves it.
MOVES_BY_ITSELF = "updated_on"


def before(number: int) -> str:
    """The password borrower `number` signs in with in `koha_with_passwords`."""
    return f"Koha-before-{number}-x"


@contextmanager
def koha_with_passwords(
    borrowers: Sequence[Borrower] = BORROWERS,
) -> Iterator[tuple[Engine, str]]:
    """Koha's tables on a throw-away MariaDB database ((root's engine, its URL)), each borrower
    signing in with `before(number)` (Koha's bcrypt), and the tables docs/koha.md's optional
    grants name (Koha's password rules and log, BorrowersLog off)."""
    from core.passwords import PasswordHasher

    with mariadb_database() as url:
        engine = make_engine(url)
        try:
            create_borrowers(engine, borrowers)
            create_password_rules(engine, {}, {"BorrowersLog": "0"})
            create_action_logs(engine)
            hasher = PasswordHasher(("bcrypt",), 4, ident="2a")
            with engine.begin() as connection:
                connection.execute(
                    text("UPDATE borrowers SET password = :hash WHERE borrowernumber = :n"),
                    [{"hash": hasher.hash(before(b.number)), "n": b.number} for b in borrowers])
            yield engine, url
        finally:
            engine.dispose()


def url_as(engine: Engine, user: str, password: str) -> str:
    """The URL of `engine`'s database, signing in as `user` instead."""
    return (f"mysql+pymysql://{user}:{password}@{engine.url.host}:{engine.url.port}/"
            f"{engine.url.database}?charset=utf8mb4")


def column_names(engine: Engine) -> list[str]:
    """`borrowers`' columns, in the order `dump` gives a row's values."""
    with engine.connect() as connection:
        return list(connection.execute(text("SELECT * FROM borrowers LIMIT 0")).keys())


def but_moving(row: tuple[Any, ...], names: Sequence[str]) -> tuple[Any, ...]:
    """A `dump` row without the column the server moves on any write (`MOVES_BY_ITSELF`)."""
    moved = list(names).index(MOVES_BY_ITSELF)
    return row[:moved] + row[moved + 1:]


#: Where a test's Koha directory can live (`koha_directory_in`), as pytest params: Koha's own
#: tables on MariaDB, the stand-in on PostgreSQL and SQLite.
ON_MARIADB = pytest.param("mariadb", marks=pytest.mark.mariadb)
ON_POSTGRES = pytest.param("postgres", marks=pytest.mark.postgres)
ON_SQLITE = "sqlite"


@dataclass(frozen=True)
class KohaDirectory:
    """A Koha `borrowers` holding a test's rows: its URL, the DIRECTORY_PROFILE that reads it,
    and an engine (as its owner) to look at it."""

    url: str
    profile: str
    engine: Engine


@contextmanager
def koha_directory_in(
    kind: str, folder: Path, borrowers: Sequence[Borrower] = BORROWERS,
) -> Iterator[KohaDirectory]:
    """`borrowers` in a Koha table on `kind` (`ON_MARIADB`, `ON_POSTGRES`, `ON_SQLITE`): Koha's
    own profile on MariaDB; elsewhere a library's profile file with the same words, in
    `folder`. Made before the test's settings point at it."""
    profile_file = folder / "library-profile.toml"
    profile_file.write_text(koha_profile_text(), encoding="utf-8")
    with ExitStack() as stack:
        if kind == "mariadb":
            url, profile = stack.enter_context(mariadb_database()), "koha"
        elif kind == "postgres":
            url, profile = stack.enter_context(postgres_database()), str(profile_file)
        else:
            url, profile = f"sqlite:///{folder / 'koha.db'}", str(profile_file)
        engine = make_engine(url)
        stack.callback(engine.dispose)
        create_borrowers(engine, borrowers)
        yield KohaDirectory(url, profile, engine)


# Fixtures for a module that defines `koha_directory` (a KohaDirectory, usually with
# `koha_directory_in` and its own rows) and imports these (`koha_engine as koha_engine` ...).


@pytest.fixture
def koha_engine(koha_directory: KohaDirectory) -> Engine:
    return koha_directory.engine


@pytest.fixture
def koha_settings(
    settings: Settings, koha_directory: KohaDirectory, smtp_server: SmtpServer
) -> Settings:
    """The test's settings on the Koha directory, mailing to the test's SMTP server; bcrypt at
    its least cost (quick tests)."""
    return replace(
        smtp_server.settings(settings), directory_url=koha_directory.url,
        directory_profile=koha_directory.profile, password_rounds=4,
        password_allow_weak_rounds=True,
    )


@pytest.fixture
def state_engine(koha_settings: Settings, sqlite_schemas: SqliteSchemas) -> Iterator[Engine]:
    """resetbot's own database, made by `db upgrade` exactly as in production (on SQLite, a
    copy of the file it made once: tests/support/schema_copies.py)."""
    sqlite_schemas.upgrade(koha_settings)
    engine = make_engine(koha_settings.database_url)
    yield engine
    engine.dispose()


def koha_env(settings: Settings) -> dict[str, str]:
    """The environment `resetbot` needs (beyond the CLI's) to run on `koha_on_mariadb`'s Koha."""
    return {"DIRECTORY_URL": str(settings.directory_url), "DIRECTORY_PROFILE": "koha",
            "PASSWORD_ROUNDS": "4", "PASSWORD_ALLOW_WEAK_ROUNDS": "true"}
