"""The floor of an LDAP task: password sets issued straight through ldap3, nothing else.

`python -m bench.ldapfloor` reads one JSON object on its first line of stdin:
    {"family": "openldap" | "ad", "server": {host, port, ca_file, bind_dn, bind_password},
     "dns": [...], "mode": "default" | "generated", "writes": "password" | "all",
     "default_password": "..."}
opens one connection (LDAPS, the certificate verified, no schema read: `get_info=NONE`, as
resetbot's own connection), binds as the service account and, for each DN in turn, sets the
password the way resetbot's profile does (OpenLDAP: the RFC 3062 Password Modify operation;
AD: a replace of `unicodePwd`), waiting for each answer (synchronous, one request in flight).
With "writes": "all" it also sends what resetbot writes after each password (must change and
unlock: OpenLDAP `pwdReset`/`pwdAccountLockedTime`, AD `pwdLastSet`/`lockoutTime`).
Once bound it prints "ready" and waits for a line on stdin ("go"), so that several of them
start their loops at once; then it prints one JSON line: sets made, refused, the loop's wall
and CPU seconds (the connection and bind are outside the timed loop, as a worker's are made
before its task).
"""

from __future__ import annotations

import json
import secrets
import ssl
import sys
import time
from typing import Any

from ldap3 import MODIFY_REPLACE, NONE, SIMPLE, SYNC, Connection, Server, Tls


def _connection(server: dict[str, Any]) -> Connection:
    tls = Tls(validate=ssl.CERT_REQUIRED, ca_certs_file=server["ca_file"])
    ldap_server = Server(server["host"], port=int(server["port"]), use_ssl=True, tls=tls,
                         get_info=NONE, connect_timeout=10)
    return Connection(ldap_server, user=server["bind_dn"], password=server["bind_password"],
                      authentication=SIMPLE, client_strategy=SYNC, auto_bind=True,
                      raise_exceptions=False, check_names=False)


def _generated() -> str:
    # As resetbot's generated passwords: random, and of every kind AD's complexity asks for.
    return "Gx7-" + secrets.token_urlsafe(12)


def _after_set(family: str) -> dict[str, list[tuple[str, list[Any]]]]:
    if family == "openldap":
        return {"pwdReset": [(MODIFY_REPLACE, ["TRUE"])],
                "pwdAccountLockedTime": [(MODIFY_REPLACE, [])]}
    return {"pwdLastSet": [(MODIFY_REPLACE, ["0"])], "lockoutTime": [(MODIFY_REPLACE, ["0"])]}


def set_all(connection: Connection, job: dict[str, Any]) -> tuple[int, int]:
    """(sets the server took, sets it refused)."""
    family, all_writes = job["family"], job["writes"] == "all"
    after = _after_set(family)
    taken = refused = 0
    for dn in job["dns"]:
        password = job["default_password"] if job["mode"] == "default" else _generated()
        if family == "openldap":
            connection.extend.standard.modify_password(user=dn, new_password=password)
        else:
            value = f'"{password}"'.encode("utf-16-le")
            connection.modify(dn, {"unicodePwd": [(MODIFY_REPLACE, [value])]})
        ok = connection.result.get("result") == 0
        if ok and all_writes:
            connection.modify(dn, after)
            ok = connection.result.get("result") == 0
        taken += ok
        refused += not ok
    return taken, refused


def main() -> int:
    job = json.loads(sys.stdin.readline())
    connection = _connection(job["server"])
    print("ready", flush=True)
    sys.stdin.readline()
    try:
        started, cpu_started = time.perf_counter(), time.process_time()
        taken, refused = set_all(connection, job)
        wall, cpu = time.perf_counter() - started, time.process_time() - cpu_started
    finally:
        connection.unbind()
    print(json.dumps({"sets": taken, "refused": refused, "wall_s": wall, "cpu_s": cpu}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
