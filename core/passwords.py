"""Password policy, generation and hashing. Nothing here logs or raises with a password in it.

Passwords are Unicode-normalised to NFC before the policy check and before hashing: "é" typed
as one character or as "e" plus a combining accent (macOS and some phones send the second) is
the same password, so the sign-in side must normalise what people type to NFC before verifying.
"""

from __future__ import annotations

import secrets
import string
import unicodedata
from functools import cache
from importlib import resources

from passlib.context import CryptContext

from core.controls import is_line_breaking
from core.settings import PasswordPolicy, Settings

BCRYPT_MAX_BYTES = 72
SYMBOLS = "!#$%&*+-=?@^_~"
# Characters people misread when copying from a mail: 0/O/o, 1/l/I/|, 5/S, 2/Z, 8/B.
LOOK_ALIKES = frozenset("0Oo1lI|5S2Z8B")
_CLASSES = {
    "lowercase letter": string.ascii_lowercase,
    "uppercase letter": string.ascii_uppercase,
    "digit": string.digits,
    "symbol": SYMBOLS,
}


@cache
def common_passwords() -> frozenset[str]:
    text = resources.files("core").joinpath("data/common-passwords.txt").read_text("utf-8")
    return frozenset(line.strip().lower() for line in text.splitlines() if line.strip())


def normalised(password: str) -> str:
    """The form resetbot checks and hashes: Unicode NFC."""
    return unicodedata.normalize("NFC", password)


def contains_username(password: str, username: str) -> bool:
    """Whether `password` holds `username`, case and Unicode form aside (an empty one never)."""
    wanted = normalised(username).lower()
    return bool(wanted) and wanted in normalised(password).lower()


def character_classes(password: str) -> int:
    present = set(password)
    found = sum(not present.isdisjoint(chars) for chars in _CLASS_SETS[:3])
    # Anything outside ASCII letters and digits counts as a symbol (spaces, accents, emoji).
    return found + (not present <= _ASCII_ALNUM)


_CLASS_SETS = tuple(frozenset(chars) for chars in _CLASSES.values())
_ASCII_ALNUM = frozenset(string.ascii_letters + string.digits)


def policy_violations(
    password: str,
    policy: PasswordPolicy,
    *,
    username: str | None = None,
    schemes: tuple[str, ...] = ("bcrypt",),
) -> list[str]:
    """Every reason `password` fails the policy, in plain words; empty when it passes."""
    password = normalised(password)
    reasons: list[str] = []
    if len(password) < policy.min_length:
        reasons.append(f"It must be at least {policy.min_length} characters long.")
    if character_classes(password) < policy.min_classes:
        reasons.append(
            f"It must mix at least {policy.min_classes} of: lowercase letters, "
            "uppercase letters, digits, symbols."
        )
    if policy.forbid_username and username and contains_username(password, username):
        reasons.append("It must not contain the username.")
    if policy.forbid_common and _is_common(password):
        reasons.append("It is too common: pick something people would not guess.")
    size = len(password.encode("utf-8", "surrogatepass"))  # never raises, whatever the text
    if schemes and schemes[0] in ("bcrypt", "ldap_bcrypt") and size > BCRYPT_MAX_BYTES:
        reasons.append(f"It must be at most {BCRYPT_MAX_BYTES} bytes long (a bcrypt limit).")
    # Printable ASCII holds none (the common case, and every generated password).
    if not (password.isascii() and password.isprintable()) and any(
        _untypeable(ch) for ch in password
    ):
        reasons.append("It must not contain tabs, line breaks or control characters.")
    if password != password.strip():
        reasons.append("It must not start or end with a space.")
    return reasons


def _untypeable(ch: str) -> bool:
    """Control characters (C0, DEL, C1), line/paragraph separators and unpaired surrogates (what
    undecodable bytes on stdin become): nobody can type them at a sign-in prompt, a password
    holding one locks its users out, and a surrogate cannot even be hashed."""
    return is_line_breaking(ch) or unicodedata.category(ch) == "Cs"


def _is_common(password: str) -> bool:
    lowered = password.lower()
    # People pad a common word with digits or a symbol to pass the classes rule: strip that too.
    core_word = lowered.rstrip(string.digits + SYMBOLS).lstrip(string.digits + SYMBOLS)
    common = common_passwords()
    return lowered in common or core_word in common


# What generated passwords are drawn from: every class, without look-alikes.
_GENERATED_ALPHABETS = tuple(
    "".join(ch for ch in chars if ch not in LOOK_ALIKES) for chars in _CLASSES.values()
)
_GENERATED_EVERY = "".join(_GENERATED_ALPHABETS)


_EVERY_SIZE = len(_GENERATED_EVERY)
#: Random bytes become characters of _GENERATED_EVERY by one `bytes.translate`: each byte below
#: the largest multiple of its size maps to one character, as many bytes to each (uniform);
#: the bytes above are dropped (none when the alphabet's size divides 256: it has 64).
_USED_BYTES = 256 - 256 % _EVERY_SIZE
_TO_CHARACTER = bytes.maketrans(
    bytes(range(_USED_BYTES)),
    bytes(ord(_GENERATED_EVERY[byte % _EVERY_SIZE]) for byte in range(_USED_BYTES)),
)
_UNUSED_BYTES = bytes(range(_USED_BYTES, 256))
_GENERATED_CLASSES = tuple(frozenset(alphabet) for alphabet in _GENERATED_ALPHABETS)


def generate_password(
    policy: PasswordPolicy, username: str | None = None, *, at_least: int = 0
) -> str:
    """A random password from `secrets` that passes `policy`, without look-alike characters:
    one of each class at least (ASCII lower and upper case, digit, symbol), no space, at least
    `at_least` long (the library system's own minimum).

    Each character is drawn uniformly from every class's characters at once, and a draw that
    misses a class or fails the policy is drawn again: every password that qualifies is as
    likely as any other. One read of the OS's CSPRNG and one C-level mapping per draw, not a
    call per character (a reset generates one password per user while a core hashes).
    """
    length = max(policy.generated_length, policy.min_length, at_least)
    while True:
        drawn = b""
        while len(drawn) < length:
            drawn += secrets.token_bytes(length).translate(_TO_CHARACTER, _UNUSED_BYTES)
        candidate = drawn[:length].decode("ascii")
        if all(not chars.isdisjoint(candidate) for chars in _GENERATED_CLASSES) and not (
            policy_violations(candidate, policy, username=username)
        ):
            return candidate


class PasswordHasher:
    """A passlib CryptContext built from settings; the first scheme hashes, all of them verify."""

    def __init__(
        self, schemes: tuple[str, ...], rounds: int | None = None, *, ident: str | None = None
    ) -> None:
        """`ident`: the bcrypt variant written (`2a` for Perl's Crypt::Eksblowfish, Koha)."""
        self.schemes = schemes
        options: dict[str, object] = {}
        if rounds is not None:
            options[f"{schemes[0]}__rounds"] = rounds
        if ident is not None:
            options[f"{schemes[0]}__ident"] = ident
        self._context = CryptContext(schemes=list(schemes), **options)

    @classmethod
    def from_settings(cls, settings: Settings) -> PasswordHasher:
        return cls(settings.password_schemes, settings.password_rounds)

    def hash(self, password: str) -> str:
        """The hash of the NFC form: what a sign-in that normalises the typed password checks."""
        return str(self._context.hash(normalised(password)))

    def verify(self, password: str, password_hash: str) -> bool:
        return bool(self._context.verify(normalised(password), password_hash))
