"""The BER the pipelined password sets send and read (core/directory/ldap/wire.py), against
ldap3's own ASN.1 definitions (pyasn1): what is sent is what ldap3 would have sent, and an
answer is read whatever its lengths' form. The real servers' side: tests/core/test_ldap_*.py."""

from __future__ import annotations

import pytest
from ldap3.protocol.rfc3062 import PasswdModifyRequestValue
from ldap3.protocol.rfc4511 import LDAPMessage
from pyasn1.codec.ber import decoder

from core.directory.ldap import wire


def decoded(data: bytes) -> object:
    value, rest = decoder.decode(data, asn1Spec=LDAPMessage())
    assert rest == b""
    return value


def test_a_modify_request_is_ldap3s_modify_in_the_order_given() -> None:
    value: object = decoded(wire.message(7, wire.modify_request("uid=ann,dc=x", [
        ("pwdReset", "MODIFY_REPLACE", ["TRUE"]),
        ("pwdAccountLockedTime", "MODIFY_REPLACE", []),
        ("unicodePwd", "MODIFY_REPLACE", ['"Ünïcode"'.encode("utf-16-le")]),
    ])))
    assert int(value["messageID"]) == 7  # type: ignore[index]
    request = value["protocolOp"]["modifyRequest"]  # type: ignore[index]
    assert str(request["object"]) == "uid=ann,dc=x"
    changes = [(int(change["operation"]), str(change["modification"]["type"]),
                [bytes(v) for v in change["modification"]["vals"]])
               for change in request["changes"]]
    assert changes == [(2, "pwdReset", [b"TRUE"]), (2, "pwdAccountLockedTime", []),
                       (2, "unicodePwd", ['"Ünïcode"'.encode("utf-16-le")])]


def test_a_password_modify_request_names_the_user_and_the_new_password_only() -> None:
    password = "Lång-" + "x" * 300  # a long value: lengths in their long form
    value: object = decoded(wire.message(2**31 - 2, wire.password_modify_request(
        "uid=bob,ou=people,dc=x", password)))
    request = value["protocolOp"]["extendedReq"]  # type: ignore[index]
    assert str(request["requestName"]) == wire.PASSWORD_MODIFY
    inner, rest = decoder.decode(bytes(request["requestValue"]),
                                 asn1Spec=PasswdModifyRequestValue())
    assert rest == b""
    assert bytes(inner["userIdentity"]) == b"uid=bob,ou=people,dc=x"
    assert not inner["oldPasswd"].isValue
    assert bytes(inner["newPasswd"]).decode() == password


def answer_bytes(message_id: int, tag: int, code: int, said: bytes, extra: bytes = b"") -> bytes:
    result = bytes((0x0A, 1, code)) + b"\x04\x00" + bytes((0x04, len(said))) + said + extra
    operation = bytes((tag, len(result))) + result
    body = bytes((0x02, 1, message_id)) + operation
    return bytes((0x30, 0x81, len(body))) + body  # the message's length in its long form


def test_answers_are_read_whole_and_in_pieces() -> None:
    first = answer_bytes(5, 0x67, 19, b"0000052D: Constraint violation")
    second = answer_bytes(6, 0x78, 0, b"")
    stream = first + second
    assert wire.message_size(stream[:1]) is None and wire.message_size(stream[:2]) is None
    assert wire.message_size(stream[:3]) == len(first)
    answer = wire.read_answer(stream[: len(first)])
    assert (answer.message_id, answer.code, answer.diagnostic) == (
        5, 19, "0000052D: Constraint violation")
    assert wire.read_answer(stream[len(first):]).code == 0


def test_the_servers_notice_of_disconnection_is_known() -> None:
    name = wire.NOTICE_OF_DISCONNECTION.encode()
    notice = wire.read_answer(answer_bytes(0, 0x78, 52, b"shutting down",
                                           bytes((0x8A, len(name))) + name))
    assert notice.is_disconnection and notice.code == 52


@pytest.mark.parametrize("data", [
    b"\x04\x03abc",  # no LDAPMessage
    answer_bytes(3, 0x64, 0, b""),  # a search entry's tag: no answer to a password set
    answer_bytes(3, 0x67, 0, b"")[:-1],  # cut short
])
def test_what_is_no_answer_is_refused(data: bytes) -> None:
    with pytest.raises(wire.WireError):
        wire.read_answer(data)
