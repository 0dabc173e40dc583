"""The few LDAP messages a password set sends and reads, in BER, for the pipelined writes.

Why not ldap3's own encoding: ldap3 builds each request through pyasn1 and decodes each answer
the same way, ~0.3 ms of the worker's CPU a message (measured: bench/README.md, "LDAP
directories"), as much as the server spends on it. A password set needs two request shapes
(a ModifyRequest, RFC 4511 4.6; the Password Modify extended request, RFC 3062) and one answer
shape (an LDAPResult, in a ModifyResponse or an ExtendedResponse): encoded and read here in a
few microseconds. Everything else (the bind, StartTLS, searches) stays ldap3's, on the same
TLS socket: the pipeline (pipeline.py) writes on it only between ldap3's operations, and reads
every answer it asked for before ldap3 uses the socket again.

Nothing here logs or keeps what it encodes: a request holding a password lives in the caller's
memory only as long as the caller keeps it.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass

#: RFC 4511 ModifyRequest's operations.
MODIFY_OPERATIONS = {"MODIFY_ADD": 0, "MODIFY_DELETE": 1, "MODIFY_REPLACE": 2}
#: RFC 3062: the Password Modify extended operation.
PASSWORD_MODIFY = "1.3.6.1.4.1.4203.1.11.1"  # noqa: S105 - an OID
#: RFC 4511 4.4.1: the server's notice that it is closing the connection.
NOTICE_OF_DISCONNECTION = "1.3.6.1.4.1.1466.20036"

# BER tags (RFC 4511's APPLICATION and context tags; universal ones from X.690).
_INTEGER, _OCTET_STRING, _ENUMERATED, _SEQUENCE, _SET = 0x02, 0x04, 0x0A, 0x30, 0x31
_MODIFY_REQUEST, _MODIFY_RESPONSE = 0x66, 0x67
_EXTENDED_REQUEST, _EXTENDED_RESPONSE = 0x77, 0x78
_RESPONSE_NAME = 0x8A
#: Answers this module reads: an LDAPResult (with, for an extended one, optional extras).
RESULT_TAGS = frozenset({_MODIFY_RESPONSE, _EXTENDED_RESPONSE})
#: The largest message accepted from a server (an LDAPResult is tens of bytes; a diagnostic
#: a few hundred): anything bigger is no answer to a password set.
MAX_MESSAGE = 1 << 20


class WireError(ValueError):
    """What the server sent is not an LDAP message this module can read."""


# -- encoding ------------------------------------------------------------------------------------


def _length(size: int) -> bytes:
    if size < 0x80:
        return bytes((size,))
    octets = size.to_bytes((size.bit_length() + 7) // 8, "big")
    return bytes((0x80 | len(octets),)) + octets


def _tlv(tag: int, content: bytes) -> bytes:
    return bytes((tag,)) + _length(len(content)) + content


def _integer(tag: int, value: int) -> bytes:
    return _tlv(tag, value.to_bytes(max(1, (value.bit_length() + 8) // 8), "big", signed=True))


def _text(value: str | bytes, tag: int = _OCTET_STRING) -> bytes:
    return _tlv(tag, value.encode("utf-8") if isinstance(value, str) else bytes(value))


def message(message_id: int, operation: bytes) -> bytes:
    """An LDAPMessage: the id and one protocol operation (no controls)."""
    return _tlv(_SEQUENCE, _integer(_INTEGER, message_id) + operation)


def modify_request(
    dn: str, changes: Iterable[tuple[str, str, Sequence[str | bytes]]]
) -> bytes:
    """A ModifyRequest of (attribute, ldap3's operation name, values), in the order given (the
    server applies them in that order, as one change)."""
    items = b"".join(
        _tlv(_SEQUENCE, _integer(_ENUMERATED, MODIFY_OPERATIONS[operation]) + _tlv(
            _SEQUENCE, _text(attribute) + _tlv(_SET, b"".join(_text(v) for v in values))))
        for attribute, operation, values in changes
    )
    return _tlv(_MODIFY_REQUEST, _text(dn) + _tlv(_SEQUENCE, items))


def password_modify_request(dn: str, password: str) -> bytes:
    """RFC 3062's request: the user's DN (userIdentity [0]) and the new password (newPasswd
    [2]), no old password (an administrator's set)."""
    value = _tlv(_SEQUENCE, _text(dn, 0x80) + _text(password, 0x82))
    return _tlv(_EXTENDED_REQUEST, _text(PASSWORD_MODIFY, 0x80) + _text(value, 0x81))


# -- decoding ------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Answer:
    """One LDAPResult as the server sent it."""

    message_id: int
    #: The protocol operation's tag (ModifyResponse 0x67, ExtendedResponse 0x78).
    operation: int
    code: int
    matched: str
    diagnostic: str
    #: An ExtendedResponse's responseName (the notice of disconnection has one), else None.
    name: str | None = None

    @property
    def is_disconnection(self) -> bool:
        return self.message_id == 0 and self.name == NOTICE_OF_DISCONNECTION


def _header(data: bytes | bytearray, at: int, end: int) -> tuple[int, int, int]:
    """(tag, where its content starts, where it ends) of the element at `at`; WireError when
    `data[:end]` does not hold it whole."""
    if at + 2 > end:
        raise WireError("a truncated element")
    tag, first = data[at], data[at + 1]
    start = at + 2
    if first & 0x80:
        count = first & 0x7F
        if count == 0 or count > 4 or start + count > end:
            raise WireError("an unreadable length")
        size = int.from_bytes(data[start : start + count], "big")
        start += count
    else:
        size = first
    if start + size > end:
        raise WireError("an element longer than its message")
    return tag, start, start + size


def message_size(buffer: bytes | bytearray) -> int | None:
    """The size of the whole LDAPMessage at the buffer's start, None until its header is in.
    WireError for what is no LDAPMessage (or one larger than MAX_MESSAGE)."""
    if len(buffer) < 2:
        return None
    if buffer[0] != _SEQUENCE:
        raise WireError(f"not an LDAP message (tag {buffer[0]:#04x})")
    first = buffer[1]
    if not first & 0x80:
        return 2 + first
    count = first & 0x7F
    if count == 0 or count > 4:
        raise WireError("an LDAP message of unreadable length")
    if len(buffer) < 2 + count:
        return None
    size = 2 + count + int.from_bytes(buffer[2 : 2 + count], "big")
    if size > MAX_MESSAGE:
        raise WireError(f"an LDAP message of {size} bytes")
    return size


def _number(data: bytes | bytearray, start: int, end: int) -> int:
    if start == end or end - start > 8:
        raise WireError("an unreadable number")
    return int.from_bytes(data[start:end], "big", signed=True)


def _words(data: bytes | bytearray, start: int, end: int) -> str:
    return bytes(data[start:end]).decode("utf-8", "replace")


def read_answer(data: bytes | bytearray) -> Answer:
    """The LDAPResult in one whole LDAPMessage (as `message_size` cut it). WireError for any
    other operation (a search's entry, an unexpected request)."""
    tag, start, end = _header(data, 0, len(data))
    if tag != _SEQUENCE:
        raise WireError("not an LDAP message")
    tag, id_start, at = _header(data, start, end)
    if tag != _INTEGER:
        raise WireError("an LDAP message without its id")
    message_id = _number(data, id_start, at)
    operation, at, op_end = _header(data, at, end)
    if operation not in RESULT_TAGS:
        raise WireError(f"an answer of an unexpected kind ({operation:#04x})")
    tag, code_start, code_end = _header(data, at, op_end)
    if tag != _ENUMERATED:
        raise WireError("an LDAPResult without its result code")
    tag, matched_start, matched_end = _header(data, code_end, op_end)
    if tag != _OCTET_STRING:
        raise WireError("an LDAPResult without its matched DN")
    tag, said_start, said_end = _header(data, matched_end, op_end)
    if tag != _OCTET_STRING:
        raise WireError("an LDAPResult without its diagnostic message")
    name: str | None = None
    at = said_end
    while at < op_end:  # referral [3], responseName [10], responseValue [11]: only the name
        tag, value_start, at = _header(data, at, op_end)
        if tag == _RESPONSE_NAME:
            name = _words(data, value_start, at)
    return Answer(message_id, operation, _number(data, code_start, code_end),
                  _words(data, matched_start, matched_end), _words(data, said_start, said_end),
                  name)
