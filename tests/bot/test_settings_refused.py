"""Settings that fail fast: exit 2 and one exact line that names the variable and says what is
expected; nothing created, nothing started.

Each refusal is checked through `bot.cli.main`, the console script's own entry point, in this
process with the environment and the working directory a script would have (a subprocess costs
about a second of CPU to import resetbot: forty of them were a minute of the suite); the real
`resetbot` script proves the same for a few of them, and for the state directory's key file."""

from __future__ import annotations

import base64
import os
import secrets
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest
from cryptography.fernet import Fernet

from bot.cli import EXIT_CONFIG, main
from core.errors import ConfigError
from core.schemes import ACCEPTED, SAFE_MINIMUMS
from core.sealing import seal, unseal
from core.settings import Settings, key_strength_bits

SCRIPT = Path(sys.executable).parent / "resetbot"
KEY = "4384154792593121a7a2067034090bd95ba9990bd9951c8b1bb60ac7332ddf88"
OLD_KEY = "d684c92f38631de17bef9a00fa830ca6a394ca03f7c4a6bb4fa7a60fd6e82fdb"
ACCEPTED_LIST = ", ".join(ACCEPTED)
KEY_EXPECTED = (
    "expected a Fernet key, or 32 or more random bytes in base64 or hex; make one with: "
    "python3 -c 'import secrets; print(secrets.token_hex(32))'"
)
DASH = "\N{EN DASH}"
KEY_PREDICTABLE = (
    "too predictable for a key: repeated or patterned text (fewer than 128 bits by resetbot's "
    f"estimate) ({KEY_EXPECTED})"
)


def resetbot(tmp_path: Path, env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    """The console script in an empty directory, with only `env` (no .env file to find)."""
    return subprocess.run(
        [str(SCRIPT), *(args or ("tasks",))],
        env={"PATH": str(SCRIPT.parent), **env},
        capture_output=True, text=True, timeout=60, check=False, cwd=tmp_path,
    )


def resetbot_main(
    tmp_path: Path, env: dict[str, str], monkeypatch: pytest.MonkeyPatch,
    capfd: pytest.CaptureFixture[str], *args: str,
) -> subprocess.CompletedProcess[str]:
    """What `resetbot(tmp_path, env, *args)` does, without the new process: `main()` as the
    console script calls it (no arguments: it reads os.environ and a .env in the working
    directory), with os.environ holding only `env` and the empty `tmp_path` as the directory."""
    argv = list(args or ("tasks",))
    capfd.readouterr()
    with monkeypatch.context() as patch:
        patch.chdir(tmp_path)
        patch.setattr(sys, "argv", [str(SCRIPT), *argv])
        for name in list(os.environ):
            patch.delenv(name)
        for name, value in {"PATH": str(SCRIPT.parent), **env}.items():
            patch.setenv(name, value)
        code = main(argv)
    captured = capfd.readouterr()
    return subprocess.CompletedProcess([str(SCRIPT), *argv], code, captured.out, captured.err)


def refusal(result: subprocess.CompletedProcess[str]) -> str:
    assert result.returncode == EXIT_CONFIG, result.stderr
    assert result.stdout == ""
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in result.stderr, result.stderr
    return lines[0]


#: Settings and the one line each is refused with.
BAD_SETTINGS: list[tuple[dict[str, str], str]] = [
    ({"PASSWORD_MIN_LENGTH": "abc"},
     f"PASSWORD_MIN_LENGTH: 'abc' is not a whole number (4{DASH}128)"),
    ({"PASSWORD_MIN_LENGTH": "2"}, f"PASSWORD_MIN_LENGTH: 2 is out of range (4{DASH}128)"),
    ({"PASSWORD_GENERATED_LENGTH": "10"},
     "PASSWORD_GENERATED_LENGTH: 10 is below PASSWORD_MIN_LENGTH (12): generated passwords "
     f"must meet the policy (12{DASH}64)"),
    ({"SMTP_SECURITY": "tls"}, "SMTP_SECURITY: 'tls' is not starttls, ssl or none"),
    ({"PASSWORD_FORBID_COMMON": "maybe"},
     "PASSWORD_FORBID_COMMON: 'maybe' is not true or false (true/false, yes/no, on/off, 1/0)"),
    # secret keys are never echoed
    ({"RESET_SECRET_KEY": "k"}, f"RESET_SECRET_KEY: not a usable key ({KEY_EXPECTED})"),
    ({"RESET_SECRET_KEY": "correct horse battery staple"},
     f"RESET_SECRET_KEY: not a usable key ({KEY_EXPECTED})"),
    ({"RESET_SECRET_KEY": "00" * 32}, f"RESET_SECRET_KEY: not a usable key ({KEY_EXPECTED})"),
    ({"RESET_SECRET_KEY": secrets.token_hex(16)},
     f"RESET_SECRET_KEY: not a usable key ({KEY_EXPECTED})"),
    # Patterns that pass as base64 or hex of 32 bytes with many distinct byte values.
    ({"RESET_SECRET_KEY": "Library2026" * 4}, f"RESET_SECRET_KEY: {KEY_PREDICTABLE}"),
    ({"RESET_SECRET_KEY": "Library2026" * 6}, f"RESET_SECRET_KEY: {KEY_PREDICTABLE}"),
    ({"RESET_SECRET_KEY": KEY[:32] * 2}, f"RESET_SECRET_KEY: {KEY_PREDICTABLE}"),
    ({"RESET_SECRET_KEY": KEY, "RESET_SECRET_KEY_OLD": f"{OLD_KEY},old-password"},
     f"RESET_SECRET_KEY_OLD: key 2 is not a usable key ({KEY_EXPECTED})"),
    ({"PASSWORD_SCHEMES": "plaintext"},
     f"PASSWORD_SCHEMES: 'plaintext' is not a password hash resetbot accepts (expected one or "
     f"more of {ACCEPTED_LIST})"),
    ({"PASSWORD_SCHEMES": "bcrypt,md5_crypt"},
     f"PASSWORD_SCHEMES: 'md5_crypt' is not a password hash resetbot accepts (expected one or "
     f"more of {ACCEPTED_LIST})"),
    ({"PASSWORD_SCHEMES": "ldap_salted_sha1"},
     f"PASSWORD_SCHEMES: 'ldap_salted_sha1' is not a password hash resetbot accepts (expected "
     f"one or more of {ACCEPTED_LIST})"),
    ({"PASSWORD_ROUNDS": "9"},
     f"PASSWORD_ROUNDS: 9 is below the safe minimum for bcrypt (10{DASH}31); "
     "PASSWORD_ALLOW_WEAK_ROUNDS=true allows less, for tests and demos only"),
    ({"PASSWORD_ROUNDS": "40"}, f"PASSWORD_ROUNDS: 40 is too high for bcrypt (10{DASH}31)"),
    ({"PASSWORD_ROUNDS": "3", "PASSWORD_ALLOW_WEAK_ROUNDS": "true"},
     f"PASSWORD_ROUNDS: 3 is too low for bcrypt (4{DASH}31)"),
    ({"PASSWORD_SCHEMES": "pbkdf2_sha256"},
     "PASSWORD_ROUNDS: unset, and passlib's default cost for pbkdf2_sha256 (29000) is below "
     f"its safe minimum: set it (600000{DASH}4294967295)"),
    ({"PASSWORD_SCHEMES": "pbkdf2_sha256", "PASSWORD_ROUNDS": "1000"},
     f"PASSWORD_ROUNDS: 1000 is below the safe minimum for pbkdf2_sha256 "
     f"(600000{DASH}4294967295); PASSWORD_ALLOW_WEAK_ROUNDS=true allows less, for tests and "
     "demos only"),
    ({"MAIL_FROM": "the library"},
     "MAIL_FROM: 'the library' is not an e-mail address (expected e.g. resetbot@library.org or "
     "Library <resetbot@library.org>)"),
    ({"MAIL_FROM": "Library <resetbot@>"},
     "MAIL_FROM: 'Library <resetbot@>' is not an e-mail address (expected e.g. "
     "resetbot@library.org or Library <resetbot@library.org>)"),
    ({"PORTAL_URL": "library.example.org/account"},
     "PORTAL_URL: 'library.example.org/account' is not an http(s) URL (expected e.g. "
     "https://library.example.org/account)"),
    ({"PORTAL_URL": "javascript:alert(1)"},
     "PORTAL_URL: 'javascript:alert(1)' is not an http(s) URL (expected e.g. "
     "https://library.example.org/account)"),
    ({"MAIL_RETRY_DELAYS": ""},
     f"MAIL_RETRY_DELAYS: '' lists nothing (seconds before each retry: whole numbers 0{DASH}86400,"
     " comma-separated, e.g. 60,300,900)"),
    ({"MAIL_RETRY_DELAYS": "60,soon"},
     f"MAIL_RETRY_DELAYS: 'soon' is not a delay (seconds before each retry: whole numbers "
     f"0{DASH}86400, comma-separated)"),
    ({"SMTP_TIMEOUT": "nan"},
     "SMTP_TIMEOUT: 'nan' is not a number of seconds (more than 0, at most 3600)"),
    ({"SMTP_TIMEOUT": "inf"},
     "SMTP_TIMEOUT: 'inf' is not a number of seconds (more than 0, at most 3600)"),
    ({"RESET_REAPER_INTERVAL": "0"},
     "RESET_REAPER_INTERVAL: '0' is not a number of seconds (more than 0, at most 3600)"),
    ({"SMTP_USERNAME": "relay"},
     "SMTP_USERNAME is set with SMTP_SECURITY=none: the login and every password mail would "
     "cross the network in clear (expected SMTP_SECURITY=starttls or ssl, or "
     "SMTP_ALLOW_PLAINTEXT_AUTH=true for a relay on this host)"),
    ({"SMTP_HOST": "mail.library.example", "SMTP_SECURITY": "none"},
     "SMTP_SECURITY=none with SMTP_HOST=mail.library.example, which is not a loopback "
     "address: every password mail would cross the network in clear (expected "
     "SMTP_SECURITY=starttls or ssl, or SMTP_ALLOW_PLAINTEXT=true to send in clear on purpose)"),
    ({"REDIS_URL": "http://:hunter2@127.0.0.1:6379"},
     "REDIS_URL: http://... is not a Redis URL (expected redis://HOST:6379/0, "
     "rediss://HOST:6380/0 or unix:///PATH/redis.sock)"),
    ({"DATABASE_URL": "mysql+mysqldb://reset:hunter2@127.0.0.1/library"},
     "DATABASE_URL: the driver for 'mysql+mysqldb' is not installed (No module named "
     "'MySQLdb'); resetbot ships psycopg 3 and PyMySQL (expected sqlite:///FILE, "
     "postgresql+psycopg://USER@HOST/DB or mysql+pymysql://USER@HOST/DB)"),
    ({"DATABASE_URL": "nosuchdb://host/db"},
     "DATABASE_URL: 'nosuchdb' is not a database kind resetbot knows (expected sqlite:///FILE, "
     "postgresql+psycopg://USER@HOST/DB or mysql+pymysql://USER@HOST/DB)"),
    ({"DATABASE_URL": "not a url"},
     "DATABASE_URL is not a database URL (expected sqlite:///FILE, "
     "postgresql+psycopg://USER@HOST/DB or mysql+pymysql://USER@HOST/DB); if its password "
     "holds @, #, / or :, URL-encode the password (`@` is `%40`)"),
    ({"DIRECTORY_PROFILE": "no such profile"},
     "DIRECTORY_PROFILE: 'no such profile' is neither a profile name (resetbot, koha, "
     "openldap, active-directory) nor a .toml file's path"),
    # An LDAP directory's settings are read whole at start; its password is never shown.
    ({"DIRECTORY_URL": "ldaps://ldap.example.org/dc=example,dc=org",
      "DIRECTORY_BIND_PASSWORD": "hunter2"},
     "DIRECTORY_BIND_DN: not set (resetbot signs in as a service account; it never binds "
     "anonymously)"),
    ({"DIRECTORY_URL": "ldaps://ldap.example.org/dc=example,dc=org",
      "DIRECTORY_BIND_DN": "cn=resetbot,dc=example,dc=org", "DIRECTORY_BIND_PASSWORD": "hunter2",
      "DIRECTORY_PROFILE": "koha"},
     "DIRECTORY_PROFILE: 'koha' is neither an LDAP profile resetbot ships (openldap, "
     "active-directory) nor a file"),

]


def assert_refused_with(result: subprocess.CompletedProcess[str], env: dict[str, str],
                        line: str) -> None:
    shown = refusal(result)
    assert shown == f"resetbot: {line}"
    assert "hunter2" not in shown
    for variable in ("RESET_SECRET_KEY", "RESET_SECRET_KEY_OLD"):  # secrets are never shown
        assert all(part not in shown for part in env.get(variable, "").split(",") if len(part) > 3)


@pytest.mark.parametrize(("env", "line"), BAD_SETTINGS,
                         ids=lambda value: "-".join(value) if isinstance(value, dict) else None)
def test_a_bad_setting_stops_the_command_with_one_line(
    tmp_path: Path, env: dict[str, str], line: str, monkeypatch: pytest.MonkeyPatch,
    capfd: pytest.CaptureFixture[str],
) -> None:
    assert_refused_with(resetbot_main(tmp_path, env, monkeypatch, capfd), env, line)
    assert list(tmp_path.iterdir()) == []  # nothing created


def test_the_console_script_stops_on_a_bad_setting_with_one_line(tmp_path: Path) -> None:
    """The real script, for a secret key (never shown) and a URL with a password in it."""
    for env, line in BAD_SETTINGS:
        if "RESET_SECRET_KEY_OLD" in env or "hunter2" in env.get("DATABASE_URL", ""):
            assert_refused_with(resetbot(tmp_path, env), env, line)


def test_a_sqlite_file_in_a_missing_folder_is_refused_and_nothing_is_created(
    tmp_path: Path,
) -> None:
    missing = tmp_path / "no-such-folder"
    env = {"DATABASE_URL": f"sqlite:///{missing / 'resetbot.db'}"}
    for command in (("tasks",), ("worker", "--burst"), ("db", "upgrade")):
        assert refusal(resetbot(tmp_path, env, *command)) == (
            f"resetbot: DATABASE_URL: the folder {missing} does not exist (resetbot does not "
            "create it: create it, or correct the path)"
        )
    assert not missing.exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == []


def test_the_key_file_is_checked_like_the_variable(tmp_path: Path) -> None:
    state = tmp_path / ".resetbot"
    state.mkdir()
    (state / "secret.key").write_text("k\n")
    line = refusal(resetbot(tmp_path, {}, "worker", "--burst"))
    assert line == (
        f"resetbot: RESET_SECRET_KEY is unset and {state / 'secret.key'} does not hold a usable "
        "key: set RESET_SECRET_KEY, or delete the file to have a new one made"
    )


# ---- what is accepted ---------------------------------------------------------------------------


@pytest.mark.parametrize("key", [
    Fernet.generate_key().decode(),
    secrets.token_hex(32),
    secrets.token_urlsafe(32),  # what resetbot writes to .resetbot/secret.key
    base64.b64encode(os.urandom(48)).decode(),
], ids=["fernet", "hex", "urlsafe", "base64"])  # fixed ids: every xdist worker collects the same
def test_keys_in_every_documented_form_are_accepted(key: str) -> None:
    settings = Settings.from_env({"RESET_SECRET_KEY": key, "RESET_SECRET_KEY_OLD": KEY},
                                 env_file=None)
    assert settings.reset_secret_key == key and settings.reset_secret_key_old == (KEY,)


@pytest.mark.parametrize(("env", "expected"), [
    ({"PASSWORD_SCHEMES": "argon2,bcrypt"}, (("argon2", "bcrypt"), None)),
    ({"PASSWORD_SCHEMES": "LDAP_BCRYPT", "PASSWORD_ROUNDS": "10"}, (("ldap_bcrypt",), 10)),
    ({"PASSWORD_SCHEMES": "pbkdf2_sha256", "PASSWORD_ROUNDS": "600000"},
     (("pbkdf2_sha256",), 600_000)),
    ({"PASSWORD_SCHEMES": "scrypt", "PASSWORD_ROUNDS": "17"}, (("scrypt",), 17)),
    ({"PASSWORD_SCHEMES": "sha512_crypt"}, (("sha512_crypt",), None)),  # passlib: 656,000
    ({"PASSWORD_ROUNDS": "8", "PASSWORD_ALLOW_WEAK_ROUNDS": "yes"}, (("bcrypt",), 8)),
])
def test_hashes_fit_for_passwords_at_a_safe_cost_are_accepted(
    env: dict[str, str], expected: tuple[tuple[str, ...], int | None]
) -> None:
    settings = Settings.from_env(env, env_file=None)
    assert (settings.password_schemes, settings.password_rounds) == expected


def test_each_scheme_is_accepted_at_its_safe_minimum_and_refused_below_it() -> None:
    for scheme, cost in SAFE_MINIMUMS.items():
        env = {"PASSWORD_SCHEMES": scheme, "PASSWORD_ROUNDS": str(cost.minimum)}
        assert Settings.from_env(env, env_file=None).password_rounds == cost.minimum
        if cost.minimum > 1:
            below = {**env, "PASSWORD_ROUNDS": str(cost.minimum - 1)}
            with pytest.raises(ConfigError, match=f"^PASSWORD_ROUNDS: .* {scheme} "):
                Settings.from_env(below, env_file=None)


def test_a_relay_on_this_host_may_take_a_login_without_tls_when_said_so() -> None:
    settings = Settings.from_env(
        {"SMTP_USERNAME": "relay", "SMTP_ALLOW_PLAINTEXT_AUTH": "true"}, env_file=None
    )
    assert settings.smtp_username == "relay" and settings.smtp_security == "none"
    tls = Settings.from_env({"SMTP_USERNAME": "relay", "SMTP_SECURITY": "starttls"},
                            env_file=None)
    assert tls.smtp_port == 587


@pytest.mark.parametrize("host", ["mail.library.example", "192.0.2.25", "[2001:db8::25]",
                                  "localhost.library.example"])
def test_a_mail_server_elsewhere_gets_starttls_with_a_verified_certificate_by_default(
    host: str,
) -> None:
    settings = Settings.from_env({"SMTP_HOST": host}, env_file=None)
    assert (settings.smtp_security, settings.smtp_port) == ("starttls", 587)


@pytest.mark.parametrize("host", ["localhost", "LOCALHOST.", "127.0.0.1", "127.5.6.7", "::1",
                                  "[::1]", "::ffff:127.0.0.1"])
def test_a_mail_server_on_this_host_keeps_plain_smtp_by_default(host: str) -> None:
    settings = Settings.from_env({"SMTP_HOST": host}, env_file=None)
    assert (settings.smtp_security, settings.smtp_port) == ("none", 25)


def test_plain_smtp_to_a_server_elsewhere_only_when_said_so() -> None:
    settings = Settings.from_env(
        {"SMTP_HOST": "192.0.2.25", "SMTP_SECURITY": "none", "SMTP_ALLOW_PLAINTEXT": "true"},
        env_file=None,
    )
    assert (settings.smtp_security, settings.smtp_port) == ("none", 25)
    assert Settings.from_env(settings.to_env(), env_file=None) == settings


@pytest.mark.parametrize("value", [
    "resetbot@library.example.org", "Library <resetbot@library.example.org>",
    '"Library, Main" <resetbot@library.example.org>', "resetbot@localhost",
])
def test_sender_addresses_are_accepted(value: str) -> None:
    assert Settings.from_env({"MAIL_FROM": value}, env_file=None).mail_from == value


@pytest.mark.parametrize("make", [
    lambda: secrets.token_hex(32), lambda: secrets.token_urlsafe(32),
    lambda: base64.b64encode(secrets.token_bytes(32)).decode(),
    lambda: Fernet.generate_key().decode(),
], ids=["token_hex", "token_urlsafe", "base64", "fernet"])
def test_random_keys_pass_the_entropy_estimate_every_time(make: Callable[[], str]) -> None:
    for _ in range(2000):
        key = make()
        assert key_strength_bits(key) >= 128, key
    for fixture_key in (KEY, OLD_KEY):
        assert Settings.from_env({"RESET_SECRET_KEY": fixture_key}, env_file=None)


def test_the_entropy_estimate_counts_a_repeated_pattern_once() -> None:
    pattern = secrets.token_hex(16)  # 32 hex characters: at most 128 bits
    assert key_strength_bits(pattern * 4) < key_strength_bits(pattern) + 4 * 8
    assert key_strength_bits("Library2026" * 4) < 64


# ---- key rotation -------------------------------------------------------------------------------


def test_a_password_sealed_with_the_old_key_opens_after_rotation() -> None:
    before = Settings.from_env({"RESET_SECRET_KEY": OLD_KEY}, env_file=None)
    sealed = seal(before.reset_secret_key, "Quiet-Harbour-7419")
    after = Settings.from_env(
        {"RESET_SECRET_KEY": KEY, "RESET_SECRET_KEY_OLD": f"{secrets.token_hex(32)},{OLD_KEY}"},
        env_file=None,
    )
    assert unseal(after.reset_secret_key, sealed, after.reset_secret_key_old) == (
        "Quiet-Harbour-7419"
    )
    # New seals use the current key only: the old key alone no longer opens them.
    resealed = seal(after.reset_secret_key, "Quiet-Harbour-7419")
    with pytest.raises(ConfigError, match="RESET_SECRET_KEY_OLD") as refused:
        unseal(OLD_KEY, resealed)
    assert "Quiet-Harbour" not in str(refused.value) and resealed not in str(refused.value)
    # Without the old key listed, the old seal cannot be opened.
    with pytest.raises(ConfigError, match=r"^RESET_SECRET_KEY differs"):
        unseal(after.reset_secret_key, sealed)
