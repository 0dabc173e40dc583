"""A real OpenLDAP server for tests: Debian's slapd as this test run's own process.

    with OpenLdapTemplate.build() as template:     # once per module: config + seeded data
        with template.start() as server:           # per test: a fresh copy, started (~0.05 s)
            server.config()                        # an LdapConfig for the service account
            server.user_dn("ann")                  # a seeded user's DN

The template is made once: a self-signed certificate (made with `cryptography`, for the
loopback names), a cn=config of its own loaded with `slapadd -n0` (the mdb backend, the ppolicy
overlay with `pwdMustChange`, `ppolicy_hash_cleartext` and lockout, TLS), and the seeded
directory loaded with `slapadd -n1`, both offline, before any slapd runs. The config names its
files relative to the server's folder (slapd's working directory), so each `start()` only
copies the template into a new temporary folder (the database's unused pages stay holes) and
runs `slapd -d 16384` there (in the foreground, never detached) on two free loopback ports
(ldap:// for StartTLS and ldaps://); when the test ends the server is killed (its copy is
thrown away) and the folder removed. Nothing is left in /tmp.

The service account `cn=resetbot,ou=services,...` gets, by the ACL, only what Password Modify
and the ppolicy attributes need (write on userPassword, pwdReset and pwdAccountLockedTime, read
of the users' named attributes, the staff group and the policy) and nothing else. Tests look at
what happened as the rootdn (ADMIN_DN), which no ACL limits.

slapd missing is a failure, not a skip: CI installs it (.ci/run), and so must a developer
(`apt-get install slapd ldap-utils`, with `slapd/no_configuration` pre-seeded).
"""

from __future__ import annotations

import base64
import ctypes
import datetime as dt
import errno
import hashlib
import os
import secrets
import shutil
import signal
import socket
import subprocess
import tempfile
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID
from ldap3 import NONE, SIMPLE, Connection, Server, Tls

from core.directory.ldap import attempt_bind
from core.directory.ldap.config import LdapConfig, LdapUrl
from core.directory.ldap.connection import send_at_once
from core.settings import Settings

SLAPD = "/usr/sbin/slapd"
SLAPADD = "/usr/sbin/slapadd"
MODULES = "/usr/lib/ldap"
SCHEMAS = Path("/etc/ldap/schema")
BASE_DN = "dc=example,dc=org"
PEOPLE = f"ou=people,{BASE_DN}"
ADMIN_DN = f"cn=admin,{BASE_DN}"
SERVICE_DN = f"cn=resetbot,ou=services,{BASE_DN}"
STAFF_GROUP = f"cn=staff,ou=groups,{BASE_DN}"
DESK_GROUP = f"cn=desk,ou=groups,{BASE_DN}"
POLICY_DN = f"cn=default,ou=policies,{BASE_DN}"
#: ppolicy's permanent lock: locked on purpose by the library.
PERMANENT_LOCK = "000001010000Z"
MIN_LENGTH = 8
#: The most entries one search or one page gives the service account (so reading more needs
#: paged results; the rootdn has no limit).
PAGE_LIMIT = 10
#: prctl(2): the signal a child gets when its parent ends.
PR_SET_PDEATHSIG = 1
#: How long slapd may take to say it is ready before the test fails.
START_TIMEOUT = 10.0
#: How much of a file `_copy_sparse` reads at once.
COPY_CHUNK = 1024 * 1024


@dataclass(frozen=True)
class Seeded:
    uid: str
    password: str = field(repr=False)
    name: str
    mail: str | None
    staff: bool = False
    #: A pwdAccountLockedTime value: PERMANENT_LOCK, or "recent" (a lockout still running).
    locked: str | None = None
    #: An empty `mail` value (present but blank) instead of none.
    blank_mail: bool = False


def seeded_users() -> list[Seeded]:
    """Staff (members of STAFF_GROUP; the last also of DESK_GROUP by `uniqueMember`), patrons,
    a patron without mail, one with a blank mail, one locked on purpose, one locked by failed
    sign-ins, and enough patrons that the service account must page (PAGE_LIMIT)."""
    users = [
        Seeded("sam", "Staff-old-1", "Sam Staff", "sam@example.org", staff=True),
        Seeded("sue", "Staff-old-2", "Sue Staff", "sue@example.org", staff=True),
        Seeded("ann", "Patron-old-1", "Ann Patron", "ann@example.org"),
        Seeded("bob", "Patron-old-2", "Bob Patron", "bob@example.org"),
        Seeded("nomail", "Patron-old-3", "No Mail", None),
        Seeded("blank", "Patron-old-4", "Blank Mail", None, blank_mail=True),
        Seeded("frozen", "Patron-old-5", "Locked OnPurpose", "frozen@example.org",
               locked=PERMANENT_LOCK),
        Seeded("tripped", "Patron-old-6", "Locked Byfailures", "tripped@example.org",
               locked="recent"),
    ]
    users += [
        Seeded(f"p{n:02d}", f"Patron-old-p{n:02d}", f"Patron {n:02d}", f"p{n:02d}@example.org")
        for n in range(1, 18)
    ]
    return users


def require_slapd() -> None:
    missing = [path for path in (SLAPD, SLAPADD) if not Path(path).exists()]
    if missing:
        pytest.fail(
            f"{', '.join(missing)} not found: the OpenLDAP tests need Debian's slapd and "
            "ldap-utils (echo 'slapd slapd/no_configuration boolean true' | debconf-set-selections"
            " && apt-get install -y slapd ldap-utils; .ci/run does this)",
            pytrace=False,
        )


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def self_signed(folder: Path, name: str, hosts: tuple[str, ...]) -> tuple[Path, Path]:
    """A self-signed certificate for `hosts` (names and addresses) and its key, as PEM files."""
    import ipaddress

    key = ec.generate_private_key(ec.SECP256R1())
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, hosts[0])])
    alternatives: list[x509.GeneralName] = []
    for host in hosts:
        try:
            alternatives.append(x509.IPAddress(ipaddress.ip_address(host)))
        except ValueError:
            alternatives.append(x509.DNSName(host))
    now = dt.datetime.now(dt.UTC)
    certificate = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(now + dt.timedelta(days=2))
        .add_extension(x509.SubjectAlternativeName(alternatives), critical=False)
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(key, hashes.SHA256())
    )
    cert_path, key_path = folder / f"{name}.crt", folder / f"{name}.key"
    cert_path.write_bytes(certificate.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    ))
    key_path.chmod(0o600)
    return cert_path, key_path


def ssha(password: str) -> str:
    salt = secrets.token_bytes(8)
    digest = hashlib.sha1(password.encode() + salt).digest()  # {SSHA}: what slapd checks
    return "{SSHA}" + base64.b64encode(digest + salt).decode()


def _schema_ldif() -> str:
    parts = ["dn: cn=schema,cn=config\nobjectClass: olcSchemaConfig\ncn: schema\n"]
    for name in ("core", "cosine", "inetorgperson"):
        text = (SCHEMAS / f"{name}.ldif").read_text()
        parts.append("\n".join(line for line in text.splitlines() if not line.startswith("#")))
    return "\n\n".join(part.strip() + "\n" for part in parts)


def resetbot_rules() -> list[str]:
    """The service account's rules, as the OpenLDAP docs note (core/directory/ldap/openldap.py)
    gives them: Password Modify (write only: never read userPassword), write on pwdReset and
    pwdAccountLockedTime, read of the people's named attributes, the groups' members and the
    policies' lengths. Each ends `by * break`, so a directory's own rules after them still
    decide for everyone else."""
    service = f'dn.exact="{SERVICE_DN}"'
    people = "entry,objectClass,entryUUID,uid,cn,displayName,mail"
    return [
        f"to attrs=userPassword by {service} =w by * break",
        f'to dn.subtree="{PEOPLE}" attrs=pwdReset,pwdAccountLockedTime by {service} write '
        "by * break",
        f'to dn.base="{BASE_DN}" attrs=entry by {service} search by * break',
        f'to dn.subtree="{PEOPLE}" attrs={people} by {service} read by * break',
        f'to dn.subtree="ou=groups,{BASE_DN}" attrs=entry,objectClass,member,uniqueMember '
        f"by {service} read by * break",
        f'to dn.subtree="ou=policies,{BASE_DN}" attrs=entry,objectClass,pwdMinLength,'
        f"pwdCheckQuality by {service} read by * break",
    ]


def access_rules() -> list[str]:
    """resetbot's rules, then the test directory's own: users sign in and change their own
    password; nobody else reads anything (the rootdn, which tests look with, is above ACLs)."""
    return [
        *resetbot_rules(),
        "to attrs=userPassword by self =w by anonymous auth by * none",
        "to * by * none",
    ]


#: The mdb database's largest size: plenty for the tests' users (the bench asks for more).
DB_MAX_SIZE = 64 * 1024 * 1024


def config_ldif(
    folder: Path, admin_password: str, max_size: int = DB_MAX_SIZE, *, durable: bool = False
) -> str:
    """cn=config: the modules, the schema, the mdb database with its ACL and the ppolicy
    overlay. The rootdn password is a throw-away one of this template. `folder` may be
    relative (Path("."): the files are then found from slapd's working directory).

    `olcDbNoSync`: a write is not flushed to the disk before it is answered (3.2 ms a
    password change with the flush, 0.7-1.9 ms without, measured here). What a test reads,
    and what a restarted slapd finds, is the same either way: only a crash of the machine
    itself could lose it, and the copy is thrown away after the test. The bench asks for a
    `durable` database, as a real directory's."""
    no_sync = "FALSE" if durable else "TRUE"
    data = folder / "data"
    acl = "\n".join(f"olcAccess: {{{n}}}{rule}" for n, rule in enumerate(access_rules()))
    return f"""dn: cn=config
objectClass: olcGlobal
cn: config
olcPidFile: {folder}/slapd.pid
olcArgsFile: {folder}/slapd.args
olcTLSCertificateFile: {folder}/server.crt
olcTLSCertificateKeyFile: {folder}/server.key
olcTLSProtocolMin: 3.3
olcLogLevel: none

dn: cn=module{{0}},cn=config
objectClass: olcModuleList
cn: module{{0}}
olcModulePath: {MODULES}
olcModuleLoad: {{0}}back_mdb
olcModuleLoad: {{1}}ppolicy

{_schema_ldif()}
dn: olcDatabase={{-1}}frontend,cn=config
objectClass: olcDatabaseConfig
objectClass: olcFrontendConfig
olcDatabase: {{-1}}frontend
olcSizeLimit: {PAGE_LIMIT}

dn: olcDatabase={{0}}config,cn=config
objectClass: olcDatabaseConfig
olcDatabase: {{0}}config
olcAccess: {{0}}to * by * none

dn: olcDatabase={{1}}mdb,cn=config
objectClass: olcDatabaseConfig
objectClass: olcMdbConfig
olcDatabase: {{1}}mdb
olcSuffix: {BASE_DN}
olcDbDirectory: {data}
olcDbMaxSize: {max_size}
olcDbNoSync: {no_sync}
olcRootDN: {ADMIN_DN}
olcRootPW: {ssha(admin_password)}
olcSecurity: tls=1
olcLimits: {{0}}dn.exact="{SERVICE_DN}" size.soft={PAGE_LIMIT} size.hard={PAGE_LIMIT}
  size.pr=unlimited size.prtotal=unlimited
olcDbIndex: objectClass eq
olcDbIndex: entryUUID eq
olcDbIndex: uid eq
{acl}

dn: olcOverlay={{0}}ppolicy,olcDatabase={{1}}mdb,cn=config
objectClass: olcOverlayConfig
objectClass: olcPPolicyConfig
olcOverlay: {{0}}ppolicy
olcPPolicyDefault: {POLICY_DN}
olcPPolicyHashCleartext: TRUE
olcPPolicyUseLockout: TRUE
"""


def data_ldif(users: list[Seeded], service_password: str) -> str:
    recent = dt.datetime.now(dt.UTC).strftime("%Y%m%d%H%M%SZ")
    entries = [
        f"dn: {BASE_DN}\nobjectClass: dcObject\nobjectClass: organization\ndc: example\n"
        "o: Example Library",
        *[f"dn: ou={ou},{BASE_DN}\nobjectClass: organizationalUnit\nou: {ou}"
          for ou in ("people", "groups", "services", "policies")],
        f"dn: {SERVICE_DN}\nobjectClass: applicationProcess\nobjectClass: simpleSecurityObject\n"
        f"cn: resetbot\nuserPassword: {ssha(service_password)}",
        f"dn: {POLICY_DN}\nobjectClass: organizationalRole\nobjectClass: pwdPolicy\ncn: default\n"
        f"pwdAttribute: userPassword\npwdMinLength: {MIN_LENGTH}\npwdCheckQuality: 2\n"
        "pwdMustChange: TRUE\npwdLockout: TRUE\npwdMaxFailure: 3\npwdLockoutDuration: 3600\n"
        "pwdInHistory: 3\npwdAllowUserChange: TRUE",
    ]
    for user in users:
        lines = [f"dn: uid={user.uid},{PEOPLE}", "objectClass: inetOrgPerson", f"uid: {user.uid}",
                 f"cn: {user.name}", f"sn: {user.name.split()[-1]}",
                 f"userPassword: {ssha(user.password)}"]
        if user.uid != "p01":  # one user named by cn only (displayName, else cn)
            lines.append(f"displayName: {user.name}")
        if user.mail:
            lines.append(f"mail: {user.mail}")
        if user.blank_mail:
            lines.append("mail:: IA==")  # one space: there, but no address
        if user.locked:
            lines.append("pwdAccountLockedTime: "
                         + (recent if user.locked == "recent" else user.locked))
        entries.append("\n".join(lines))
    staff = [user for user in users if user.staff]
    entries.append(f"dn: {STAFF_GROUP}\nobjectClass: groupOfNames\ncn: staff\n"
                   + "\n".join(f"member: uid={user.uid},{PEOPLE}" for user in staff))
    # The desk's group names one of them as a groupOfUniqueNames does (with a unique id).
    entries.append(f"dn: {DESK_GROUP}\nobjectClass: groupOfUniqueNames\ncn: desk\n"
                   f"uniqueMember: uid={staff[-1].uid},{PEOPLE}#'0101'B")
    return "\n\n".join(entries) + "\n"


@dataclass
class OpenLdapTemplate:
    """A prepared slapd (config and seeded data) in a temporary folder; copied per server."""

    folder: Path
    users: list[Seeded]
    service_password: str = field(repr=False)
    admin_password: str = field(repr=False)
    max_size: int = DB_MAX_SIZE
    durable: bool = False

    @classmethod
    @contextmanager
    def build(
        cls, users: list[Seeded] | None = None, *, max_size: int = DB_MAX_SIZE,
        durable: bool = False,
    ) -> Iterator[OpenLdapTemplate]:
        """`max_size`: the database's largest size in bytes (about 4 KB an entry with its
        indexes: the bench's 100,000 users need ~400 MB). `durable`: writes are flushed to the
        disk before they are answered, as a real directory's (the bench's floors)."""
        require_slapd()
        users = seeded_users() if users is None else users
        folder = Path(tempfile.mkdtemp(prefix="resetbot-slapd-template-"))
        try:
            template = cls(folder, users, secrets.token_urlsafe(12), secrets.token_urlsafe(12),
                           max_size, durable)
            template._prepare()
            yield template
        finally:
            shutil.rmtree(folder, ignore_errors=True)

    def _prepare(self) -> None:
        self_signed(self.folder, "server", ("localhost", "127.0.0.1"))
        (self.folder / "data").mkdir()
        (self.folder / "slapd.d").mkdir()
        # Relative paths: the same cn=config serves every copy (measured: a `slapadd -n0` per
        # copy was 0.03 s of a 0.2 s start).
        (self.folder / "config.ldif").write_text(
            config_ldif(Path("."), self.admin_password, self.max_size, durable=self.durable)
        )
        (self.folder / "data.ldif").write_text(data_ldif(self.users, self.service_password))
        _run([SLAPADD, "-n0", "-F", "slapd.d", "-l", "config.ldif"], self.folder)
        # -q: no consistency checks into a new, empty database (several times quicker).
        _run([SLAPADD, "-q", "-n1", "-F", "slapd.d", "-l", "data.ldif"], self.folder)

    @contextmanager
    def start(self) -> Iterator[OpenLdap]:
        """A fresh copy of the template, running; killed and removed after."""
        folder = Path(tempfile.mkdtemp(prefix="resetbot-slapd-"))
        try:
            for name in ("slapd.d", "data"):
                shutil.copytree(self.folder / name, folder / name, copy_function=_copy_sparse)
            for name in ("server.crt", "server.key"):
                shutil.copy2(self.folder / name, folder / name)
            server = OpenLdap(self, folder, free_port(), free_port())
            server.start()
            try:
                yield server
            finally:
                server.kill()
        finally:
            shutil.rmtree(folder, ignore_errors=True)


@dataclass
class OpenLdap:
    template: OpenLdapTemplate
    folder: Path
    port: int
    tls_port: int
    process: subprocess.Popen[str] | None = None
    _said: list[str] = field(default_factory=list)
    _ready: threading.Event = field(default_factory=threading.Event)

    @property
    def ca_file(self) -> Path:
        return self.folder / "server.crt"

    def start(self) -> None:
        urls = f"ldap://127.0.0.1:{self.port}/ ldaps://127.0.0.1:{self.tls_port}/"
        # -d: in the foreground (never detached). Level 16384 (syncrepl, unused here) logs
        # nothing but the lines every level logs: "slapd starting", and why it could not.
        self.process = subprocess.Popen(
            [SLAPD, "-d", "16384", "-h", urls, "-F", "slapd.d"], cwd=self.folder,
            stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
            text=True, preexec_fn=_end_with_parent,
        )
        self._said = []
        self._ready = threading.Event()
        threading.Thread(target=self._read_stderr, daemon=True).start()
        if not self._ready.wait(START_TIMEOUT) or not self._listening():
            self.stop()
            pytest.fail("slapd did not start: " + " | ".join(self._said[-8:]), pytrace=False)

    def _listening(self) -> bool:
        """Whether both ports take connections. slapd says "slapd starting" just before its
        listener thread calls listen(), and logs nothing after it at a quiet level (the
        connection log would write a line per operation), so the ports are tried: a refused
        connect returns at once, and it comes up within milliseconds."""
        assert self.process is not None
        deadline = time.monotonic() + START_TIMEOUT
        waiting = [self.port, self.tls_port]
        while waiting and time.monotonic() < deadline and self.process.poll() is None:
            try:
                socket.create_connection(("127.0.0.1", waiting[0]), timeout=1).close()
                waiting.pop(0)
            except ConnectionRefusedError:
                time.sleep(0.002)
        return not waiting

    def _read_stderr(self) -> None:
        """Drain slapd's stderr (a full pipe would stop it); set `_ready` when it starts, or
        when it ends without starting (the caller then reads why)."""
        assert self.process is not None and self.process.stderr is not None
        for line in self.process.stderr:
            self._said.append(line.rstrip())
            if "slapd starting" in line:
                self._ready.set()
        self._ready.set()

    def stop(self) -> None:
        """Stop slapd as an operator does (SIGTERM: it finishes and closes the database), for
        a test to start it again on what it had written."""
        if self.process is None or self.process.poll() is not None:
            return
        os.kill(self.process.pid, signal.SIGTERM)
        try:
            self.process.wait(timeout=START_TIMEOUT)
        except subprocess.TimeoutExpired:
            self.kill()

    def kill(self) -> None:
        """End slapd at once: for a copy about to be thrown away (a clean stop would spend
        its time closing a database nobody opens again)."""
        if self.process is None or self.process.poll() is not None:
            return
        self.process.kill()
        self.process.wait()

    # -- settings and looking ------------------------------------------------------------------

    def url(self, scheme: str = "ldaps") -> LdapUrl:
        port = self.tls_port if scheme == "ldaps" else self.port
        return LdapUrl(scheme, "localhost", port, BASE_DN)  # type: ignore[arg-type]

    def env(self, scheme: str = "ldaps") -> dict[str, str]:
        port = self.tls_port if scheme == "ldaps" else self.port
        return {
            "DIRECTORY_URL": f"{scheme}://localhost:{port}/{BASE_DN}",
            "DIRECTORY_TLS_CA_FILE": str(self.ca_file),
            "DIRECTORY_BIND_DN": SERVICE_DN,
            "DIRECTORY_BIND_PASSWORD": self.template.service_password,
            "DIRECTORY_PROFILE": "openldap",
            "DIRECTORY_STAFF_GROUP": STAFF_GROUP,
        }

    def config(self, scheme: str = "ldaps", **changes: Any) -> LdapConfig:
        env = self.env(scheme)
        env.update({key: str(value) for key, value in changes.items()})
        return LdapConfig.from_env(env)

    def settings(self, settings: Settings, scheme: str = "ldaps") -> Settings:
        """`settings` (resetbot's state) with the users on this server, as an operator sets
        them: the service account, the CA file, the staff group."""
        env = self.env(scheme)
        return replace(
            settings,
            directory_url=env["DIRECTORY_URL"],
            directory_profile="openldap",
            directory_tls_ca_file=env["DIRECTORY_TLS_CA_FILE"],
            directory_bind_dn=env["DIRECTORY_BIND_DN"],
            directory_bind_password=env["DIRECTORY_BIND_PASSWORD"],
            directory_staff_group=STAFF_GROUP,
        )

    @staticmethod
    def user_dn(uid: str) -> str:
        return f"uid={uid},{PEOPLE}"

    def seeded(self, uid: str) -> Seeded:
        return next(user for user in self.template.users if user.uid == uid)

    def old(self, uid: str) -> str:
        """The seeded user's password, before any test changed it."""
        return self.seeded(uid).password

    def binds(self, uid: str, password: str) -> tuple[int, str | None]:
        """The directory's own sign-in as the user: the bind's result code (0, or 49) and the
        password policy's word on it (`changeAfterReset`, `accountLocked`, or None)."""
        attempt = attempt_bind(self.config(), self.user_dn(uid), password)
        return attempt.result, attempt.ppolicy_error

    @contextmanager
    def admin(self) -> Iterator[Connection]:
        """The rootdn, over StartTLS: for looking at what a test did (no ACL applies)."""
        server = Server("127.0.0.1", port=self.port, get_info=NONE,
                        tls=Tls(ca_certs_file=str(self.ca_file), validate=2))
        connection = Connection(server, ADMIN_DN, self.template.admin_password,
                                authentication=SIMPLE, raise_exceptions=True)
        connection.open()
        send_at_once(connection)
        connection.start_tls()
        connection.bind()
        try:
            yield connection
        finally:
            connection.unbind()

    def operational(self, uid: str, *names: str) -> dict[str, list[str]]:
        """The named (operational) attributes of a user, as the rootdn reads them."""
        with self.admin() as connection:
            connection.search(self.user_dn(uid), "(objectClass=*)", "BASE", attributes=list(names))
            raw = connection.response[0]["raw_attributes"]
        return {key: [value.decode() for value in values] for key, values in raw.items()}


@pytest.fixture(scope="module")
def openldap_template() -> Iterator[OpenLdapTemplate]:
    """The seeded template, built once per test module (about 0.1 s)."""
    with OpenLdapTemplate.build() as built:
        yield built


@pytest.fixture
def slapd(openldap_template: OpenLdapTemplate) -> Iterator[OpenLdap]:
    """A fresh copy of the template, running, for one test."""
    with openldap_template.start() as server:
        yield server


def _end_with_parent() -> None:
    """In the child, before slapd runs: SIGTERM it should the test process die (a killed test
    run would otherwise leave a slapd behind: seen here once)."""
    libc = ctypes.CDLL(None, use_errno=True)
    libc.prctl(PR_SET_PDEATHSIG, signal.SIGTERM)


def _copy_sparse(source: str, target: str) -> str:
    """Copy a file, leaving its holes holes: the mdb file is as large as its largest size
    (DB_MAX_SIZE; hundreds of MB for the bench) but holds a few pages, which is all a copy
    writes (shutil's copy wrote every zero: 64 MB a test, then freed them)."""
    with open(source, "rb") as reader, open(target, "wb") as writer:
        size = os.fstat(reader.fileno()).st_size
        offset = 0
        while offset < size:
            try:
                start = os.lseek(reader.fileno(), offset, os.SEEK_DATA)
            except OSError as error:
                if error.errno != errno.ENXIO:  # ENXIO: nothing but a hole from here on
                    raise
                break
            offset = os.lseek(reader.fileno(), start, os.SEEK_HOLE)
            reader.seek(start)
            writer.seek(start)
            while reader.tell() < offset:
                writer.write(reader.read(min(COPY_CHUNK, offset - reader.tell())))
        writer.truncate(size)
    shutil.copymode(source, target)
    return target


def _run(command: list[str], folder: Path) -> None:
    done = subprocess.run(command, cwd=folder, capture_output=True, text=True, check=False)
    if done.returncode != 0:
        pytest.fail(f"{' '.join(command[:2])} failed ({done.returncode}): "
                    + (done.stderr or done.stdout).strip()[-800:], pytrace=False)
