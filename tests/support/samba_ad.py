"""A throw-away Active Directory domain (Samba AD DC) for tests, on a loopback address.

The domain is provisioned ONCE per test run into a temporary folder (the template), seeded, and
then COPIED for each test and started from the copy, so a test may change passwords and lock
accounts without disturbing the next one.

Measured on the 2-core machine (Samba 4.17.12, Debian 12), quiet / loaded by other work
(load average 6):
- the template: `samba-tool domain provision` 3.4 s / 8.6-9 s (3.3-4.1 s of CPU); then a
  start, the seeding through LDAP (the fine-grained policy too) and the offline ACL step
  (`samba-tool dsacl`) 1.5 s (2.7 s when the policy took two more `samba-tool` runs);
- a copy (33 MB) and its certificate about 0.03 s; `samba -i -M single` from a copy to LDAPS
  accepting 0.13-0.15 s quiet (0.25-0.65 s before `tls dh params file`, below); 0.2-0.3 s
  at load 4-5.
  tests/core/test_active_directory_samba.py (21 tests) takes about 34 s at load 4.6 in one
  process, 20 s with two xdist workers.
  The first start of a domain without a certificate would spend 5-6 s making Samba's own
  4096-bit RSA key: the template gets its own small CA and each copy a P-256 certificate for
  its address instead (a few milliseconds), which also gives TLS a name that matches the URL.

How it runs:
- root only (Samba's DC refuses otherwise; CI runs as root);
- `server services = ldap`: no KDC, DNS, SMB or RPC; simple binds (the user's own sign-in),
  unicodePwd replaces and lockouts work with the LDAP server alone;
- `old password allowed period = 0`, so an old password stops binding at once;
- `tls dh params file`: RFC 7919's ffdhe2048 group; without one Samba searches for new DH
  parameters each time it starts (0.1-0.5 s of CPU, over half of a start: perf showed libgmp's
  prime tests); with it a start from a copy takes 0.13-0.15 s, measured quiet;
- `ldb:nosync = true` (Samba's own test setting): a write is answered before it is flushed to
  the disk. A password set took ~100 ms with the flushes, ~75 ms without (loaded machine; ~38
  ms of it is Samba's CPU, the Kerberos keys' PBKDF2). What the server and a restarted server
  read is the same either way; only a crash of the machine could lose a write. The bench asks
  for a durable copy (`domain(durable=True)`): a real DC flushes its writes;
- ports 389/636/3268/3269 are fixed, so each domain has its own loopback address: one per
  pytest-xdist worker (gw0 → 127.0.0.2, gw1 → 127.0.0.3, …; 127.0.0.2 without xdist); a test
  needing a second domain at once passes another address to `DomainTemplate.domain`; when
  another test run on the machine holds a worker's address, it takes its next one (+32, +64…);
- the template lives in the system's temporary folder under a name of the run (xdist's
  testrunuid), made under a file lock by whichever worker comes first, and removed by the last
  worker to let go of it; each copy is removed when its domain stops. Samba runs in the
  foreground as a child that dies with its parent (PR_SET_PDEATHSIG), so no server outlives a
  killed test run; what a killed run left in the temporary folder (copies and templates whose
  processes are gone) the next run removes.

The seed (everything under BASE_DN = DC=resetbot,DC=test; the users' OU is PEOPLE_OU):
- patrons ann (mail), ben (mail), cy (no mail), dee (blank mail), pat (a fine-grained password
  policy asking for 20 characters: a rule the service account cannot read, so the server refuses
  where resetbot's check could not);
- staff: dana (direct member of STAFF_GROUP) and sam (member of Circulation, a group nested in
  STAFF_GROUP: only the in-chain rule finds him);
- dis: disabled (userAccountControl bit 2); lou: locked out (wrong password bound
  LOCKOUT_THRESHOLD times, so the server set lockoutTime itself);
- olga: outside PEOPLE_OU (OU=Elsewhere), out of scope and out of the service account's reach;
- the service account CN=resetbot-svc,CN=Users: on PEOPLE_OU (inherited by its user objects)
  the "Reset Password" control access right and write on pwdLastSet and lockoutTime; nothing else.
"""

from __future__ import annotations

import contextlib
import ctypes
import datetime
import fcntl
import ipaddress
import os
import shutil
import signal
import socket
import ssl
import stat
import subprocess
import tempfile
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field, replace
from pathlib import Path
from types import EllipsisType

import ldap3
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID
from ldap3.protocol.formatters.formatters import format_sid
from ldap3.protocol.microsoft import security_descriptor_control
from ldap3.utils.conv import escape_filter_chars

from core.directory.ldap.config import LdapConfig
from core.directory.ldap.connection import send_at_once
from core.settings import Settings

REALM = "RESETBOT.TEST"
NETBIOS_DOMAIN = "RESETBOT"
DNS_DOMAIN = "resetbot.test"
BASE_DN = "DC=resetbot,DC=test"
HOST_NAME = "resetbot-dc"
PEOPLE_OU = f"OU=People,{BASE_DN}"
GROUPS_OU = f"OU=Groups,{BASE_DN}"
ELSEWHERE_OU = f"OU=Elsewhere,{BASE_DN}"
STAFF_GROUP = f"CN=Library Staff,{GROUPS_OU}"
NESTED_GROUP = f"CN=Circulation,{GROUPS_OU}"
ADMIN_NAME = f"Administrator@{DNS_DOMAIN}"
ADMIN_PASSWORD = "Adm1n-Template-Pass"
SERVICE_DN = f"CN=resetbot-svc,CN=Users,{BASE_DN}"
SERVICE_NAME = f"resetbot-svc@{DNS_DOMAIN}"
SERVICE_PASSWORD = "Svc-Template-Pass1"
LOCKOUT_THRESHOLD = 5
#: The fine-grained policy on `pat`: longer than the domain's minPwdLength (7).
STRICT_POLICY_LENGTH = 20

#: AD's schemaIDGUIDs and rights the service account is given (the same on every AD).
RESET_PASSWORD_RIGHT = "00299570-246d-11d0-a768-00aa006e0529"
PWD_LAST_SET_ATTRIBUTE = "bf967a0a-0de6-11d0-a285-00aa003049e2"
LOCKOUT_TIME_ATTRIBUTE = "28630ebf-41d5-11d1-a9c1-0000f80367c1"
USER_CLASS = "bf967aba-0de6-11d0-a285-00aa003049e2"

_UF_NORMAL_ACCOUNT = 0x200
_UF_ACCOUNTDISABLE = 0x2
#: pwdProperties' bit for passwords kept with reversible encryption (MS-ADTS 3.1.1.5.3.1).
_DOMAIN_PASSWORD_STORE_CLEARTEXT = 0x10
_START_TIMEOUT = 20.0
_PR_SET_PDEATHSIG = 1
_LDAP_PORTS = (389, 636, 3268, 3269)
_ADDRESS_STRIDE = 32
_ADDRESS_TRIES = 7
#: RFC 7919's ffdhe2048 group (public, well known), for Samba's DHE ciphers. Without a `tls dh
#: params file` Samba makes new DH parameters (a search for a 2048-bit safe prime) each time it
#: starts: measured, 0.1-0.5 s of CPU of a 0.25-0.65 s start, now 0.13-0.15 s in all.
_FFDHE2048 = """-----BEGIN DH PARAMETERS-----
MIIBCAKCAQEA//////////+t+FRYortKmq/cViAnPTzx2LnFg84tNpWp4TZBFGQz
+8yTnc4kmz75fS/jY2MMddj2gbICrsRhetPfHtXV/WVhJDP1H18GbtCFY2VVPe0a
87VXE15/V8k1mE8McODmi3fipona8+/och3xWKE2rec1MKzKT0g6eXq8CrGCsyT7
YdEIqUuyyOP7uWrat2DX9GgdT0Kj3jlN9K5W7edjcrsZCwenyO4KbXCeAvzhzffi
7MA0BM0oNC9hkXL+nOmFg/+OTxIy7vKBg8P+OxtMb61zO7X8vC7CIAXFjvGDfRaD
ssbzSibBsu/6iGtCOGEoXJf//////////wIBAg==
-----END DH PARAMETERS-----
"""


@dataclass(frozen=True)
class SeedUser:
    username: str
    dn: str
    password: str = field(repr=False)
    display_name: str | None
    mail: str | None
    staff: bool = False
    disabled: bool = False
    locked_out: bool = False
    in_scope: bool = True


def _person(
    username: str, name: str, ou: str = PEOPLE_OU, *,
    display_name: str | EllipsisType | None = ..., mail: str | EllipsisType | None = ...,
    **flags: bool,
) -> SeedUser:
    """`...`: the usual display name (the name) and address (username@example.org)."""
    return SeedUser(
        username=username,
        dn=f"CN={name},{ou}",
        password=f"Old-{username.capitalize()}-Pass1",
        display_name=name if display_name is ... else display_name,
        mail=f"{username}@example.org" if mail is ... else mail,
        **flags,
    )


SEED_USERS: tuple[SeedUser, ...] = (
    _person("ann", "Ann Reader"),
    _person("ben", "Ben Borrower"),
    _person("cy", "Cy Nomail", mail=None),
    _person("dee", "Dee Blank", mail=" "),
    _person("pat", "Pat Strict"),
    _person("dana", "Dana Desk", staff=True),
    _person("sam", "Sam Shelver", staff=True, display_name=None),
    _person("dis", "Dis Abled", disabled=True),
    _person("lou", "Lou Lockedout", locked_out=True),
    _person("olga", "Olga Outside", ou=ELSEWHERE_OU, in_scope=False),
)


def seed_user(username: str) -> SeedUser:
    return next(user for user in SEED_USERS if user.username == username)


# --- addresses and folders ---------------------------------------------------------------------


def worker_address() -> str:
    """This pytest process's loopback address: gw0 → 127.0.0.2, gw1 → 127.0.0.3, …"""
    worker = os.environ.get("PYTEST_XDIST_WORKER", "gw0")
    number = int(worker.removeprefix("gw")) if worker.startswith("gw") else 0
    return str(ipaddress.IPv4Address("127.0.0.2") + number)


def free_worker_address() -> str:
    """This worker's address, or (when another test run holds its ports) the next one of this
    worker's own: + 32, + 64, … so that workers never meet."""
    first = ipaddress.IPv4Address(worker_address())
    for step in range(_ADDRESS_TRIES):
        address = str(first + _ADDRESS_STRIDE * step)
        if ports_free(address):
            return address
    raise RuntimeError(f"no free loopback address for a Samba domain from {first}")


def ports_free(address: str) -> bool:
    for port in _LDAP_PORTS:
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
            # As Samba binds: connections of an earlier domain in TIME_WAIT do not count.
            probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            try:
                probe.bind((address, port))
            except OSError:
                return False
    return True


def _run_id() -> str:
    # Shared by every xdist worker of one run; a plain pytest run is its own run.
    return os.environ.get("PYTEST_XDIST_TESTRUNUID") or f"pid{os.getpid()}"


def _smb_conf(folder: Path, address: str, *, durable: bool = False) -> str:
    nosync = "false" if durable else "true"
    return f"""[global]
\tnetbios name = {HOST_NAME.upper()}
\trealm = {REALM}
\tworkgroup = {NETBIOS_DOMAIN}
\tserver role = active directory domain controller
\tserver services = ldap
\tinterfaces = {address}/8
\tbind interfaces only = yes
\told password allowed period = 0
\tidmap_ldb:use rfc2307 = yes
\tprivate dir = {folder}/private
\tlock directory = {folder}
\tstate directory = {folder}/state
\tcache directory = {folder}/cache
\tbinddns dir = {folder}/bind-dns
\tpid directory = {folder}/run
\tncalrpc dir = {folder}/run/ncalrpc
\twinbindd socket directory = {folder}/run/winbindd
\tlog file = {folder}/log/samba.log
\tlog level = 1
\ttls enabled = yes
\ttls keyfile = {folder}/tls/key.pem
\ttls certfile = {folder}/tls/cert.pem
\ttls cafile = {folder}/tls/ca.pem
\ttls dh params file = {folder}/tls/dh.pem
\tldb:nosync = {nosync}

[sysvol]
\tpath = {folder}/state/sysvol
\tread only = no
"""


# --- certificates ------------------------------------------------------------------------------


def _make_ca(folder: Path) -> None:
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "resetbot test AD CA")])
    now = datetime.datetime.now(datetime.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(hours=1))
        .not_valid_after(now + datetime.timedelta(days=2))
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True, content_commitment=False, key_encipherment=False,
                data_encipherment=False, key_agreement=False, key_cert_sign=True,
                crl_sign=True, encipher_only=False, decipher_only=False,
            ),
            critical=True,
        )
        .sign(key, hashes.SHA256())
    )
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "dh.pem").write_text(_FFDHE2048)
    (folder / "ca.pem").write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    (folder / "ca-key.pem").write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )


def _issue_server_certificate(folder: Path, address: str) -> None:
    """A certificate for `address` (and the DC's DNS name), signed by the template's CA."""
    ca_cert = x509.load_pem_x509_certificate((folder / "ca.pem").read_bytes())
    ca_key = serialization.load_pem_private_key((folder / "ca-key.pem").read_bytes(), None)
    assert isinstance(ca_key, ec.EllipticCurvePrivateKey)
    key = ec.generate_private_key(ec.SECP256R1())
    now = datetime.datetime.now(datetime.UTC)
    dns_name = f"{HOST_NAME}.{DNS_DOMAIN}"
    cert = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, dns_name)]))
        .issuer_name(ca_cert.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(hours=1))
        .not_valid_after(now + datetime.timedelta(days=2))
        .add_extension(
            x509.SubjectAlternativeName([
                x509.IPAddress(ipaddress.IPv4Address(address)),
                x509.DNSName(dns_name),
            ]),
            critical=False,
        )
        .add_extension(x509.ExtendedKeyUsage([x509.oid.ExtendedKeyUsageOID.SERVER_AUTH]),
                       critical=False)
        .sign(ca_key, hashes.SHA256())
    )
    (folder / "cert.pem").write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_file = folder / "key.pem"
    key_file.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.TraditionalOpenSSL,
            serialization.NoEncryption(),
        )
    )
    key_file.chmod(0o600)  # Samba refuses a key others can read


# --- the server process ------------------------------------------------------------------------


def _die_with_parent() -> None:
    libc = ctypes.CDLL(None, use_errno=True)
    libc.prctl(_PR_SET_PDEATHSIG, signal.SIGKILL)


def _start_samba(folder: Path, address: str) -> subprocess.Popen[bytes]:
    for sub in ("run", "log", "cache"):
        (folder / sub).mkdir(exist_ok=True)
    log = (folder / "log" / "stdout").open("wb")
    process = subprocess.Popen(
        ["samba", "-i", "-M", "single", "-s", str(folder / "etc" / "smb.conf")],
        stdin=subprocess.DEVNULL,
        stdout=log,
        stderr=subprocess.STDOUT,
        preexec_fn=_die_with_parent,
    )
    log.close()
    deadline = time.monotonic() + _START_TIMEOUT
    while True:
        if process.poll() is not None:
            output = (folder / "log" / "stdout").read_text(errors="replace")
            raise RuntimeError(f"samba exited with {process.returncode}:\n{output[-2000:]}")
        if _listening(address):
            if _answers_with_our_certificate(address, folder / "tls" / "ca.pem"):
                return process
            _stop_samba(process)
            raise AddressTaken(f"another Samba (another test run's) answers on {address}:636")
        if time.monotonic() > deadline:
            _stop_samba(process)
            raise RuntimeError(f"samba did not listen on {address}:636 in {_START_TIMEOUT} s")
        # Samba says nothing when it listens: the port accepting is the event, polled briefly.
        time.sleep(0.01)


class AddressTaken(RuntimeError):
    """A server of another test run took the address between our check and our start."""


def _listening(address: str) -> bool:
    try:
        socket.create_connection((address, 636), 0.2).close()
    except OSError:
        return False
    return True


def _answers_with_our_certificate(address: str, ca_file: Path) -> bool:
    """Whether the server on `address` is this domain's: its certificate is signed by our CA
    (each template has its own CA; another run's Samba on the same address has another)."""
    context = ssl.create_default_context(cafile=str(ca_file))
    context.check_hostname = False
    deadline = time.monotonic() + _START_TIMEOUT
    while True:
        try:
            with socket.create_connection((address, 636), 1) as raw, \
                    context.wrap_socket(raw, server_hostname=address):
                return True
        except ssl.SSLCertVerificationError:
            return False
        except OSError:  # the listener is up, its TLS not yet: try again shortly
            if time.monotonic() > deadline:
                raise
            time.sleep(0.01)


def _stop_samba(process: subprocess.Popen[bytes]) -> None:
    if process.poll() is None:
        process.terminate()
        try:
            process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


def _samba_tool(folder: Path, *args: str) -> None:
    subprocess.run(
        ["samba-tool", *args, "-H", str(folder / "private" / "sam.ldb"),
         "-s", str(folder / "etc" / "smb.conf")],
        check=True, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )


# --- connections -------------------------------------------------------------------------------


def unicode_pwd(password: str) -> bytes:
    return f'"{password}"'.encode("utf-16-le")


def _server(address: str, ca_file: Path) -> ldap3.Server:
    tls = ldap3.Tls(validate=ssl.CERT_REQUIRED, ca_certs_file=str(ca_file))
    return ldap3.Server(address, port=636, use_ssl=True, tls=tls, get_info=ldap3.NONE,
                        connect_timeout=5)


# --- the template ------------------------------------------------------------------------------


def _provision(folder: Path, address: str) -> None:
    """Provision, certificate, seed: the template every domain of this run is copied from."""
    empty_conf = folder / "empty.conf"
    empty_conf.write_text("")
    subprocess.run(
        ["samba-tool", "domain", "provision", f"--realm={REALM}", f"--domain={NETBIOS_DOMAIN}",
         f"--host-name={HOST_NAME}", f"--adminpass={ADMIN_PASSWORD}", "--server-role=dc",
         "--dns-backend=NONE", "--use-rfc2307", f"--targetdir={folder}", "-s", str(empty_conf),
         "--option=server services = ldap", f"--option=interfaces = {address}/8",
         "--option=bind interfaces only = yes"],
        check=True, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
    )
    empty_conf.unlink()
    (folder / "etc" / "smb.conf").write_text(_smb_conf(folder, address))
    _make_ca(folder / "tls")
    _issue_server_certificate(folder / "tls", address)
    process = _start_samba(folder, address)
    try:
        service_sid = _seed(address, folder / "tls" / "ca.pem")
    finally:
        _stop_samba(process)
    # Offline (the server stopped): Samba's own tool writes the security descriptor, which
    # Samba does not take as SDDL over LDAP. (The fine-grained policy went over LDAP in
    # `_seed`: two `samba-tool` runs fewer, ~0.8 s of the template's making.)
    aces = "".join(
        f"(OA;CI;{right};{guid};{USER_CLASS};{service_sid})"
        for right, guid in (
            ("CR", RESET_PASSWORD_RIGHT),
            ("WP", PWD_LAST_SET_ATTRIBUTE),
            ("WP", LOCKOUT_TIME_ATTRIBUTE),
        )
    )
    _samba_tool(folder, "dsacl", "set", f"--objectdn={PEOPLE_OU}", f"--sddl={aces}")


def _seed(address: str, ca_file: Path) -> str:
    """Fill the running template through LDAP; the service account's SID."""
    admin = ldap3.Connection(_server(address, ca_file), ADMIN_NAME, ADMIN_PASSWORD,
                             auto_bind=True, raise_exceptions=True)
    try:
        admin.modify(BASE_DN, {"lockoutThreshold": [(ldap3.MODIFY_REPLACE,
                                                     [str(LOCKOUT_THRESHOLD)])]})
        for ou in (PEOPLE_OU, GROUPS_OU, ELSEWHERE_OU):
            admin.add(ou, ["organizationalUnit"])
        admin.add(SERVICE_DN, ["user"], {
            "sAMAccountName": "resetbot-svc",
            "userPrincipalName": SERVICE_NAME,
            "unicodePwd": unicode_pwd(SERVICE_PASSWORD),
            "userAccountControl": str(_UF_NORMAL_ACCOUNT),
        })
        admin.search(SERVICE_DN, "(objectClass=*)", ldap3.BASE, attributes=["objectSid"])
        service_sid = str(format_sid(admin.response[0]["raw_attributes"]["objectSid"][0]))
        for user in SEED_USERS:
            attributes: dict[str, object] = {
                "sAMAccountName": user.username,
                "userPrincipalName": f"{user.username}@{DNS_DOMAIN}",
                "unicodePwd": unicode_pwd(user.password),
                "userAccountControl": str(
                    _UF_NORMAL_ACCOUNT | (_UF_ACCOUNTDISABLE if user.disabled else 0)
                ),
            }
            if user.display_name:
                attributes["displayName"] = user.display_name
            if user.mail is not None:
                attributes["mail"] = user.mail
            admin.add(user.dn, ["user"], attributes)
        admin.add(NESTED_GROUP, ["group"], {"sAMAccountName": "circulation",
                                            "member": [seed_user("sam").dn]})
        admin.add(STAFF_GROUP, ["group"], {"sAMAccountName": "library-staff",
                                           "member": [seed_user("dana").dn, NESTED_GROUP]})
        _add_strict_policy(admin, seed_user("pat").dn)
    finally:
        admin.unbind()
    locked = seed_user("lou")
    for _ in range(LOCKOUT_THRESHOLD):
        wrong = ldap3.Connection(_server(address, ca_file), locked.dn, "not-the-password")
        assert not wrong.bind()
        wrong.unbind()
    return service_sid


def _add_strict_policy(admin: ldap3.Connection, applies_to: str) -> None:
    """The fine-grained password policy `strict` on `applies_to`, as `samba-tool domain
    passwordsettings pso create strict 1 --min-pwd-length=N --complexity=on` and `pso apply`
    make it: the domain's own settings for everything else."""
    admin.search(BASE_DN, "(objectClass=*)", ldap3.BASE, attributes=[
        "pwdProperties", "pwdHistoryLength", "minPwdAge", "maxPwdAge", "lockoutDuration",
        "lockoutThreshold", "lockOutObservationWindow"])
    domain = {name: values[0].decode()
              for name, values in admin.response[0]["raw_attributes"].items()}
    reversible = int(domain["pwdProperties"]) & _DOMAIN_PASSWORD_STORE_CLEARTEXT
    admin.add(f"CN=strict,CN=Password Settings Container,CN=System,{BASE_DN}",
              ["msDS-PasswordSettings"], {
                  "msDS-PasswordSettingsPrecedence": "1",
                  "msDS-PasswordComplexityEnabled": "TRUE",
                  "msDS-PasswordReversibleEncryptionEnabled": "TRUE" if reversible else "FALSE",
                  "msDS-PasswordHistoryLength": domain["pwdHistoryLength"],
                  "msDS-MinimumPasswordLength": str(STRICT_POLICY_LENGTH),
                  "msDS-MinimumPasswordAge": domain["minPwdAge"],
                  "msDS-MaximumPasswordAge": domain["maxPwdAge"],
                  "msDS-LockoutDuration": domain["lockoutDuration"],
                  "msDS-LockoutThreshold": domain["lockoutThreshold"],
                  "msDS-LockoutObservationWindow": domain["lockOutObservationWindow"],
                  "msDS-PSOAppliesTo": applies_to,
              })


@dataclass
class DomainTemplate:
    """The run's provisioned domain, shared by this process's tests while it holds a claim."""

    folder: Path
    claim: Path

    @classmethod
    def acquire(cls) -> DomainTemplate:
        root = Path(tempfile.gettempdir())
        _sweep_stale(root)
        folder = root / f"resetbot-samba-{_run_id()}"
        claims = root / f"resetbot-samba-{_run_id()}.claims"
        with _locked(root / f"resetbot-samba-{_run_id()}.lock"):
            if not (folder / "ready").exists():
                shutil.rmtree(folder, ignore_errors=True)
                folder.mkdir()
                started = time.perf_counter()
                _provision(folder, free_worker_address())
                (folder / "ready").write_text(f"{time.perf_counter() - started:.2f} s\n")
            claims.mkdir(exist_ok=True)
            claim = claims / f"{os.getpid()}-{uuid.uuid4().hex}"
            claim.touch()
        return cls(folder=folder, claim=claim)

    def release(self) -> None:
        """Let go; the last claim removes the template (a later one provisions it anew)."""
        root = self.folder.parent
        lock = root / f"{self.folder.name}.lock"
        with _locked(lock):
            self.claim.unlink(missing_ok=True)
            if not any(self.claim.parent.iterdir()):
                self.claim.parent.rmdir()
                shutil.rmtree(self.folder, ignore_errors=True)
                lock.unlink(missing_ok=True)

    @property
    def provision_seconds(self) -> float:
        return float((self.folder / "ready").read_text().split()[0])

    @contextlib.contextmanager
    def domain(
        self, address: str | None = None, *, durable: bool = False
    ) -> Iterator[SambaDomain]:
        """A running copy of the template on `address` (default: this worker's, or its next
        free one should another test run's Samba take it meanwhile), then gone. `durable`:
        its writes are flushed before they are answered, as a real DC's (the bench)."""
        folder = Path(tempfile.mkdtemp(prefix=f"resetbot-samba-copy-{os.getpid()}-"))
        running: SambaDomain | None = None
        try:
            shutil.copytree(self.folder, folder, symlinks=True, dirs_exist_ok=True,
                            ignore=_sockets)
            for attempt in range(_ADDRESS_TRIES):
                chosen = address or free_worker_address()
                (folder / "etc" / "smb.conf").write_text(
                    _smb_conf(folder, chosen, durable=durable))
                _issue_server_certificate(folder / "tls", chosen)
                try:
                    running = SambaDomain(folder=folder, address=chosen)
                    running.start()
                    break
                except AddressTaken:
                    running = None
                    if address is not None or attempt == _ADDRESS_TRIES - 1:
                        raise
            assert running is not None
            yield running
        finally:
            if running is not None:
                running.stop()
            shutil.rmtree(folder, ignore_errors=True)


def _sockets(folder: str, names: list[str]) -> set[str]:
    # The stopped template's LDAPI sockets: the copy's server makes its own.
    return {name for name in names if stat.S_ISSOCK(os.lstat(os.path.join(folder, name)).st_mode)}


def _sweep_stale(root: Path) -> None:
    """Remove what a killed test run left: copies and templates whose processes are gone."""
    for copy in root.glob("resetbot-samba-copy-*"):
        owner = copy.name.removeprefix("resetbot-samba-copy-").split("-", 1)[0]
        if owner.isdigit() and not _alive(int(owner)):
            shutil.rmtree(copy, ignore_errors=True)
    for lock in root.glob("resetbot-samba-*.lock"):
        name = lock.name.removesuffix(".lock")
        claims = root / f"{name}.claims"
        with lock.open("a") as handle:
            try:
                fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                continue  # being provisioned or released right now
            try:
                owners = [claim.name.split("-", 1)[0] for claim in claims.glob("*")]
                if not any(owner.isdigit() and _alive(int(owner)) for owner in owners):
                    shutil.rmtree(claims, ignore_errors=True)
                    shutil.rmtree(root / name, ignore_errors=True)
                    lock.unlink(missing_ok=True)
            finally:
                fcntl.flock(handle, fcntl.LOCK_UN)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


@contextlib.contextmanager
def _locked(path: Path) -> Iterator[None]:
    with path.open("a") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


@dataclass
class SambaDomain:
    """One running domain: where it is, how to reach it, and its own sign-in as the proof."""

    folder: Path
    address: str
    start_seconds: float = 0.0
    _process: subprocess.Popen[bytes] | None = field(default=None, repr=False)

    def start(self) -> None:
        """Start (or start again, with what it had written) the domain's server."""
        started = time.perf_counter()
        self._process = _start_samba(self.folder, self.address)
        self.start_seconds = time.perf_counter() - started

    def stop(self) -> None:
        """Stop the server (a fault for a test to cause); `start` brings it back."""
        if self._process is not None:
            _stop_samba(self._process)
            self._process = None

    @property
    def ca_file(self) -> Path:
        return self.folder / "tls" / "ca.pem"

    @property
    def url(self) -> str:
        """DIRECTORY_URL for the users' OU."""
        return f"ldaps://{self.address}/{PEOPLE_OU}"

    def server(self) -> ldap3.Server:
        return _server(self.address, self.ca_file)

    def connect(self, name: str, password: str) -> ldap3.Connection:
        """A bound connection (raising on refusals) as `name` (a DN or name@domain)."""
        connection = ldap3.Connection(self.server(), name, password, raise_exceptions=True)
        connection.open()
        send_at_once(connection)
        connection.bind()
        return connection

    def config(self, bind_dn: str = SERVICE_NAME, password: str = SERVICE_PASSWORD) -> LdapConfig:
        """resetbot's LDAP settings for this domain: the service account, the CA file, the
        staff group."""
        return LdapConfig.from_env({
            "DIRECTORY_URL": self.url,
            "DIRECTORY_TLS_CA_FILE": str(self.ca_file),
            "DIRECTORY_BIND_DN": bind_dn,
            "DIRECTORY_BIND_PASSWORD": password,
            "DIRECTORY_PROFILE": "active-directory",
            "DIRECTORY_STAFF_GROUP": STAFF_GROUP,
        })

    def settings(self, settings: Settings) -> Settings:
        """`settings` (resetbot's state) with the users in this domain, as an operator sets
        them."""
        return replace(
            settings,
            directory_url=self.url,
            directory_profile="active-directory",
            directory_tls_ca_file=str(self.ca_file),
            directory_bind_dn=SERVICE_NAME,
            directory_bind_password=SERVICE_PASSWORD,
            directory_staff_group=STAFF_GROUP,
        )

    def admin(self) -> ldap3.Connection:
        return self.connect(ADMIN_NAME, ADMIN_PASSWORD)

    def service(self) -> ldap3.Connection:
        return self.connect(SERVICE_NAME, SERVICE_PASSWORD)

    def sign_in(self, name: str, password: str) -> str:
        """The directory's own answer to a user signing in: "ok", or AD's `data` code."""
        connection = ldap3.Connection(self.server(), name, password)
        try:
            connection.open()
            send_at_once(connection)
            if connection.bind():
                return "ok"
            message = str(connection.result.get("message", ""))
        finally:
            connection.unbind()
        marker = "data "
        if marker not in message:
            return message
        return message.split(marker, 1)[1].split(",", 1)[0]

    def signs_in(self, username: str, password: str) -> str:
        """`sign_in` as a seeded user, by their username."""
        return self.sign_in(seed_user(username).dn, password)

    def old_passwords_sign_in(self, usernames: set[str]) -> dict[str, str]:
        """Each seeded user's sign-in with their seeded password (all "ok": nobody touched
        them)."""
        return {name: self.signs_in(name, seed_user(name).password) for name in sorted(usernames)}

    def sid_of(self, dn: str) -> str:
        [sid] = self.read(dn, "objectSid")["objectSid"]
        assert isinstance(sid, bytes)
        return str(format_sid(sid))

    def aces_on(self, dn: str) -> list[Ace]:
        """The access-allowed object entries on `dn` (its DACL, read by the administrator)."""
        connection = self.admin()
        try:
            connection.search(dn, "(objectClass=*)", ldap3.BASE,
                              attributes=["nTSecurityDescriptor"],
                              controls=security_descriptor_control(sdflags=0x04))  # DACL
            [descriptor] = connection.response[0]["raw_attributes"]["nTSecurityDescriptor"]
        finally:
            connection.unbind()
        return allowed_object_aces(descriptor)

    def schema_guid(self, name: str) -> str:
        """The schemaIDGUID of the attribute or class named `name` (lDAPDisplayName), or the
        rightsGuid of the extended right named `name` (its cn), as this domain's schema and
        configuration say."""
        configuration = f"CN=Configuration,{BASE_DN}"
        connection = self.admin()
        try:
            connection.search(f"CN=Schema,{configuration}",
                              f"(lDAPDisplayName={escape_filter_chars(name)})",
                              ldap3.LEVEL, attributes=["schemaIDGUID"])
            if connection.response and connection.response[0].get("raw_attributes"):
                [raw] = connection.response[0]["raw_attributes"]["schemaIDGUID"]
                return str(uuid.UUID(bytes_le=bytes(raw)))
            connection.search(f"CN=Extended-Rights,{configuration}",
                              f"(cn={escape_filter_chars(name)})",
                              ldap3.LEVEL, attributes=["rightsGuid"])
            [found] = [entry for entry in connection.response
                       if entry.get("type") == "searchResEntry"]
            return str(found["raw_attributes"]["rightsGuid"][0].decode())
        finally:
            connection.unbind()

    def read(self, dn: str, *attributes: str) -> dict[str, list[object]]:
        """An entry's attributes as the administrator reads them (raw values)."""
        connection = self.admin()
        try:
            connection.search(dn, "(objectClass=*)", ldap3.BASE, attributes=list(attributes))
            raw: dict[str, list[object]] = connection.response[0]["raw_attributes"]
            return raw
        finally:
            connection.unbind()


# --- access control entries ------------------------------------------------------------------


#: SDDL's names for the access mask bits a delegation uses (MS-DTYP 2.4.3, 2.5.1.1).
_MASK_RIGHTS = {0x100: "CR", 0x20: "WP", 0x10: "RP", 0x08: "SW", 0x01: "CC", 0x02: "DC",
                0x04: "LC", 0x40: "DT", 0x80: "LO", 0x10000: "SD", 0x20000: "RC",
                0x40000: "WD", 0x80000: "WO"}
#: ACE flags (MS-DTYP 2.4.4.1): CONTAINER_INHERIT, NO_PROPAGATE, INHERIT_ONLY, INHERITED.
_ACE_FLAGS = {0x02: "CI", 0x04: "NP", 0x08: "IO", 0x10: "ID"}
_ACCESS_ALLOWED_OBJECT = 0x05


@dataclass(frozen=True)
class Ace:
    """One access-allowed object entry of a security descriptor, as SDDL names its parts."""

    flags: str
    rights: str
    object_type: str
    inherited_object_type: str
    sid: str


def allowed_object_aces(descriptor: bytes) -> list[Ace]:
    """The access-allowed object entries of a self-relative security descriptor's DACL
    (MS-DTYP 2.4.6): what a delegation on an OU gives. Other entries are left out."""
    dacl_at = int.from_bytes(descriptor[16:20], "little")
    if not dacl_at:
        return []
    count = int.from_bytes(descriptor[dacl_at + 4:dacl_at + 6], "little")
    at, found = dacl_at + 8, []
    for _ in range(count):
        kind, flags = descriptor[at], descriptor[at + 1]
        size = int.from_bytes(descriptor[at + 2:at + 4], "little")
        if kind == _ACCESS_ALLOWED_OBJECT:
            found.append(_object_ace(descriptor[at:at + size], flags))
        at += size
    return found


def _object_ace(ace: bytes, flags: int) -> Ace:
    mask = int.from_bytes(ace[4:8], "little")
    present = int.from_bytes(ace[8:12], "little")
    at, guids = 12, []
    for bit in (1, 2):  # ACE_OBJECT_TYPE_PRESENT, ACE_INHERITED_OBJECT_TYPE_PRESENT
        if present & bit:
            guids.append(str(uuid.UUID(bytes_le=bytes(ace[at:at + 16]))))
            at += 16
        else:
            guids.append("")
    return Ace(
        flags="".join(name for bit, name in _ACE_FLAGS.items() if flags & bit),
        rights="".join(name for bit, name in _MASK_RIGHTS.items() if mask & bit),
        object_type=guids[0], inherited_object_type=guids[1],
        sid=str(format_sid(bytes(ace[at:]))),
    )


# --- pytest ------------------------------------------------------------------------------------


def samba_available() -> None:
    """Skip where Samba cannot run (not installed, not root); in CI that is a failure."""
    problem = None
    if shutil.which("samba") is None or shutil.which("samba-tool") is None:
        problem = "Samba AD is not installed (apt-get install samba-ad-dc samba-ad-provision)"
    elif os.geteuid() != 0:
        problem = "a Samba AD DC runs as root only"
    if problem and os.environ.get("CI"):
        pytest.fail(f"{problem}: CI must run these tests (.ci/run installs Samba)")
    if problem:
        pytest.skip(problem)


@pytest.fixture(scope="session")
def samba_template() -> Iterator[DomainTemplate]:
    """The run's provisioned domain (made once per run, shared by the xdist workers)."""
    samba_available()
    template = DomainTemplate.acquire()
    yield template
    template.release()


@pytest.fixture
def domain(samba_template: DomainTemplate) -> Iterator[SambaDomain]:
    """A running copy of the template, for one test."""
    with samba_template.domain() as running:
        yield running
