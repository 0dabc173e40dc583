"""Whole tasks on an LDAP directory against the floor measured beside them (the `ldap` phase),
and the picker's search copy of a large OpenLDAP directory (the `ldappicker` phase).

The servers are the tests' own (tests/support/openldap.py: Debian's slapd with ppolicy,
`ppolicy_hash_cleartext` and lockout; tests/support/samba_ad.py: Samba's AD DC), loaded once
with the bench's users and copied fresh for every timed run, so that each run sets passwords on
the same untouched directory (a second run with the same default password would meet ppolicy's
history). Every run and its floor get their own fresh copy.

- **resetbot**: a task of the whole directory (scope `all`), confirmed through core (create +
  consume), done by N `resetbot worker` processes with the directory's settings in their
  environment, resetbot's own state on a throw-away PostgreSQL database; timed from the
  confirm to the summary posted on the Slack stand-in (as the other phases).
- **floor**: the same number of password sets issued straight through ldap3 (bench/ldapfloor.py)
  on one connection per worker (N processes at once, each its share of the DNs), started
  together once bound; timed from the go to the last one done. `writes=password`: only the
  password operation (Password Modify; AD's unicodePwd); `writes=all` (`--ldap-floor-writes`):
  also the must-change and unlock modification resetbot sends after each password.
- beside each: the server's own CPU seconds (slapd's or samba's process, from /proc), the
  workers' (or floor processes') CPU seconds, and the foreign load (other people's processes'
  share of the machine's CPU meanwhile).
"""

from __future__ import annotations

import json
import os
import shutil
import stat
import statistics
import subprocess
import sys
import tempfile
import time
import tracemalloc
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager, contextmanager
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import psutil
from ldap3 import MODIFY_ADD

from bench.harness import (
    DEFAULT_PASSWORD,
    Confirmer,
    Database,
    HashConfig,
    Stack,
    WorkerPool,
    process_environment,
    run_task,
)
from bench.latency import Latencies
from bench.measure import MB, ForeignLoad
from bench.services import postgres_database
from core.db import make_engine, make_sessionmaker
from core.directory import Directory
from core.schema import create_schema
from core.settings import Settings

Row = dict[str, Any]
FLOOR_WRITES = ("password", "all")
#: A share of the users in the staff group (they are in scope `all` all the same).
STAFF_SHARE = 10
LIMIT = 100
FIRST_NAMES = ("Ann", "Bruno", "Chloe", "Dmitri", "Elif", "Farah", "Gustav", "Hana", "Ivo",
               "Jana", "Kemal", "Lena", "Mateo", "Nora", "Oskar", "Priya", "Quinn", "Rosa",
               "Sven", "Tomoko", "Ugo", "Vera", "Wim", "Ximena", "Yusuf", "Zofia")
LAST_NAMES = ("Berg", "Costa", "Dubois", "Eriksen", "Fischer", "Garcia", "Horvat", "Ivanova",
              "Jensen", "Kowalski", "Larsen", "Moreau", "Novak", "Olsen", "Petrov", "Quist",
              "Rossi", "Schmidt", "Tanaka", "Uddin", "Varga", "Weber", "Yilmaz", "Zeller")


@dataclass(frozen=True)
class Person:
    uid: str
    name: str
    mail: str
    staff: bool


def people(size: int) -> list[Person]:
    """`size` users, every one with an address (so that every mode sets every password)."""
    found = []
    for number in range(size):
        first = FIRST_NAMES[number % len(FIRST_NAMES)]
        last = LAST_NAMES[(number // len(FIRST_NAMES)) % len(LAST_NAMES)]
        uid = f"{first[0]}{last}{number:06d}".lower()
        found.append(Person(uid, f"{first} {last}", f"{uid}@library.example.org",
                            number % STAFF_SHARE == 0))
    return found


@dataclass
class LdapServer:
    """One running server, fresh for one timed run."""

    family: str  # "openldap" or "ad"
    env: dict[str, str]  # the DIRECTORY_* settings a worker is given
    floor_server: dict[str, Any]  # how bench.ldapfloor reaches it
    dns: list[str]
    pid: int

    def cpu_seconds(self) -> float:
        """The server's own CPU time so far (utime + stime of its process and children)."""
        try:
            process = psutil.Process(self.pid)
            total = 0.0
            for each in [process, *process.children(recursive=True)]:
                times = each.cpu_times()
                total += times.user + times.system + times.children_user + times.children_system
            return total
        except psutil.NoSuchProcess:
            return 0.0


Fresh = Callable[[], AbstractContextManager[LdapServer]]


# -- OpenLDAP ------------------------------------------------------------------------------------


@contextmanager
def openldap_source(size: int) -> Iterator[tuple[Fresh, float]]:
    """A slapd template holding `size` users (loaded with `slapadd -q` before any start), and
    how long that took; each call of the first gives a fresh running copy."""
    from tests.support.openldap import OpenLdapTemplate, Seeded

    everyone = [Seeded(person.uid, f"Old-pass-{person.uid}", person.name, person.mail,
                       staff=person.staff) for person in people(size)]
    started = time.perf_counter()
    with OpenLdapTemplate.build(everyone, max_size=64 * MB + size * 8192,
                                durable=True) as template:
        loaded = time.perf_counter() - started

        @contextmanager
        def fresh() -> Iterator[LdapServer]:
            with template.start() as server:
                assert server.process is not None
                env = server.env("ldaps")
                yield LdapServer(
                    "openldap", env,
                    {"host": "127.0.0.1", "port": server.tls_port, "ca_file": str(server.ca_file),
                     "bind_dn": env["DIRECTORY_BIND_DN"],
                     "bind_password": env["DIRECTORY_BIND_PASSWORD"]},
                    [server.user_dn(user.uid) for user in everyone], server.process.pid,
                )

        yield fresh, loaded


# -- Samba AD --------------------------------------------------------------------------------------


def free_address() -> str:
    """A loopback address whose LDAP ports are free (AD's are fixed), away from the tests'
    (127.0.0.2 onwards, see tests/support/samba_ad.py)."""
    from tests.support import samba_ad

    for last in range(2, 250):
        address = f"127.0.91.{last}"
        if samba_ad.ports_free(address):
            return address
    raise RuntimeError("no free loopback address for the bench's Samba domain")


def _no_sockets(folder: str, names: list[str]) -> set[str]:
    return {name for name in names if stat.S_ISSOCK(os.lstat(os.path.join(folder, name)).st_mode)}


def _samba_pid() -> int:
    """The bench's one running Samba (its title is rewritten: "samba: root process")."""
    found = [process for process in psutil.Process().children(recursive=True)
             if process.name() == "samba"]
    if len(found) != 1:
        raise RuntimeError(f"expected one samba process of the bench's, found {len(found)}")
    return int(found[0].pid)


@contextmanager
def samba_source(size: int) -> Iterator[tuple[Fresh, float]]:
    """The tests' provisioned domain with `size` more users in OU=Bench under its people's OU
    (where the service account's rights are inherited), copied fresh for each run."""
    from tests.support import samba_ad

    # The template is provisioned on the address of a pytest-xdist worker the test runs on
    # this machine do not use (-n 2: gw0 and gw1 on 127.0.0.2 and .3): a test run starting its
    # domain at the same moment would otherwise take the same address (seen: certificate
    # signature failure, the other domain answering).
    os.environ["PYTEST_XDIST_WORKER"] = "gw9"
    address = free_address()
    template = samba_ad.DomainTemplate.acquire()
    loaded_folder = Path(tempfile.mkdtemp(prefix="resetbot-bench-samba-"))
    bench_ou = f"OU=Bench,{samba_ad.PEOPLE_OU}"
    everyone = people(size)
    try:
        started = time.perf_counter()
        with template.domain(address) as domain:
            _add_people(domain, bench_ou, everyone)
            domain.stop()
            shutil.copytree(domain.folder, loaded_folder, symlinks=True, dirs_exist_ok=True,
                            ignore=_no_sockets)
        loaded = time.perf_counter() - started
        source = samba_ad.DomainTemplate(folder=loaded_folder, claim=template.claim)

        @contextmanager
        def fresh() -> Iterator[LdapServer]:
            with source.domain(address, durable=True) as running:
                env = {
                    "DIRECTORY_URL": f"ldaps://{address}/{bench_ou}",
                    "DIRECTORY_TLS_CA_FILE": str(running.ca_file),
                    "DIRECTORY_BIND_DN": samba_ad.SERVICE_NAME,
                    "DIRECTORY_BIND_PASSWORD": samba_ad.SERVICE_PASSWORD,
                    "DIRECTORY_PROFILE": "active-directory",
                    "DIRECTORY_STAFF_GROUP": samba_ad.STAFF_GROUP,
                }
                yield LdapServer(
                    "ad", env,
                    {"host": address, "port": 636, "ca_file": str(running.ca_file),
                     "bind_dn": samba_ad.SERVICE_NAME,
                     "bind_password": samba_ad.SERVICE_PASSWORD},
                    [_ad_dn(person, bench_ou) for person in everyone],
                    _samba_pid(),
                )

        yield fresh, loaded
    finally:
        shutil.rmtree(loaded_folder, ignore_errors=True)
        template.release()


def _ad_dn(person: Person, ou: str) -> str:
    return f"CN={person.uid},{ou}"


def _add_people(domain: Any, ou: str, everyone: list[Person]) -> None:
    """Users with no password yet (PASSWD_NOTREQD: quick to add; resetbot sets one), a tenth of
    them in the staff group."""
    from tests.support import samba_ad

    admin = domain.admin()
    try:
        admin.add(ou, ["organizationalUnit"])
        for person in everyone:
            admin.add(_ad_dn(person, ou), ["user"], {
                "sAMAccountName": person.uid,
                "userPrincipalName": f"{person.uid}@{samba_ad.DNS_DOMAIN}",
                "displayName": person.name,
                "mail": person.mail,
                "userAccountControl": str(0x200 | 0x20),  # normal account, no password needed
            })
        staff = [_ad_dn(person, ou) for person in everyone if person.staff]
        if staff:
            admin.modify(samba_ad.STAFF_GROUP, {"member": [(MODIFY_ADD, staff)]})
    finally:
        admin.unbind()


# -- one timed run ---------------------------------------------------------------------------------


def floor_run(server: LdapServer, mode: str, workers: int, writes: str) -> Row:
    """The floor: `workers` processes, one connection each, their shares of the DNs."""
    shares = [server.dns[index::workers] for index in range(workers)]
    processes = [
        subprocess.Popen([sys.executable, "-m", "bench.ldapfloor"], stdin=subprocess.PIPE,
                         stdout=subprocess.PIPE, text=True, env=process_environment({}),
                         cwd=tempfile.gettempdir())
        for _ in shares
    ]
    for process, share in zip(processes, shares, strict=True):
        assert process.stdin is not None and process.stdout is not None
        process.stdin.write(json.dumps({
            "family": server.family, "server": server.floor_server, "dns": share,
            "mode": mode, "writes": writes, "default_password": DEFAULT_PASSWORD,
        }) + "\n")
        process.stdin.flush()
    for process in processes:
        assert process.stdout is not None
        ready = process.stdout.readline().strip()
        if ready != "ready":
            raise RuntimeError(f"bench.ldapfloor did not bind ({ready!r})")
    foreign = ForeignLoad(None)
    foreign.start()
    server_before = server.cpu_seconds()
    started = time.perf_counter()
    for process in processes:
        assert process.stdin is not None
        process.stdin.write("go\n")
        process.stdin.flush()
    results = []
    for process in processes:
        out, _ = process.communicate(timeout=3600)
        results.append(json.loads(out.strip().splitlines()[-1]))
    wall = time.perf_counter() - started
    server_cpu = server.cpu_seconds() - server_before
    foreign_share, by_role = foreign.stop()
    sets = sum(int(result["sets"]) for result in results)
    refused = sum(int(result["refused"]) for result in results)
    if refused or sets != len(server.dns):
        raise RuntimeError(f"floor: {sets} set, {refused} refused of {len(server.dns)}")
    return {
        "wall_s": round(wall, 3), "sets": sets, "client_cpu_s": round(
            sum(float(result["cpu_s"]) for result in results), 2),
        "server_cpu_s": round(server_cpu, 2), "foreign_load": round(foreign_share, 3),
        "cpu_by_role": by_role,
    }


@contextmanager
def state_database(size: int, settings: Settings) -> Iterator[Database]:
    """resetbot's own state on a throw-away PostgreSQL database (its users table stays empty:
    the workers read the LDAP server)."""
    with postgres_database() as url:
        engine = make_engine(url)
        directory = Directory.own_table(engine, settings.directory)
        try:
            create_schema(engine, directory)
            yield Database(url, engine, make_sessionmaker(engine), directory, size, 0.0)
        finally:
            engine.dispose()


def resetbot_run(
    stack: Stack, db: Database, server: LdapServer, mode: str, workers: int,
    base: Settings, workdir: Path, command: list[str], window: int,
) -> Row:
    """A whole-directory task by `workers` resetbot workers, confirm to summary, with
    DIRECTORY_LDAP_WINDOW `window`."""
    redis = stack.redis()
    # No hashing in the workers (the server hashes); the scheme only satisfies the settings.
    env = stack.environment(db.url, HashConfig("pbkdf2_sha256", 1000),
                            {**server.env, "DIRECTORY_LDAP_WINDOW": str(window)})
    with WorkerPool(workers, env, redis, workdir, command) as pool:
        server_before = server.cpu_seconds()
        # Samba spends ~20 ms of CPU a set quiet, 180 ms seen under heavy load: the timeout
        # leaves room for that (2,000 AD users: 12 min), OpenLDAP's sets are ~1 ms.
        per_user = 0.4 if server.family == "ad" else 0.05
        run = run_task(stack, db, Confirmer(base, redis), mode, pool,
                       timeout=len(server.dns) * per_user + 300)
        server_cpu = server.cpu_seconds() - server_before
    done = sum(run.counts.values())
    if run.status != "completed" or done != len(server.dns):
        raise RuntimeError(f"task {run.task_id} ended {run.status} with {run.counts}")
    return {
        "wall_s": round(run.wall_seconds, 3), "counts": run.counts, "mails": run.mails,
        "window": window,
        "worker_cpu_s": round(run.worker_cpu_seconds, 2), "server_cpu_s": round(server_cpu, 2),
        "foreign_load": round(run.foreign_load, 3), "cpu_by_role": run.cpu_by_role,
        "slack_calls": run.slack_total,
    }


def ldap_summary(rows: list[Row]) -> list[Row]:
    """Median over repeats of each (server, size, mode, workers, window)."""
    groups: dict[tuple[Any, ...], list[Row]] = {}
    for row in rows:
        groups.setdefault((row["server"], row["size"], row["mode"], row["workers"],
                           row["resetbot"].get("window", 1)), []).append(row)
    summary = []
    for (server, size, mode, workers, window), runs in sorted(groups.items()):
        entry: Row = {"server": server, "size": size, "mode": mode, "workers": workers,
                      "window": window, "runs": len(runs),
                      "wall_s": round(statistics.median(r["resetbot"]["wall_s"] for r in runs), 2)}
        for writes in FLOOR_WRITES:
            measured = [r for r in runs if writes in r["floors"]]
            if measured:
                entry[f"floor_{writes}_s"] = round(statistics.median(
                    r["floors"][writes]["wall_s"] for r in measured), 2)
                entry[f"ratio_{writes}"] = round(statistics.median(
                    r["resetbot"]["wall_s"] / r["floors"][writes]["wall_s"] for r in measured), 3)
                entry[f"ratios_{writes}"] = [
                    round(r["resetbot"]["wall_s"] / r["floors"][writes]["wall_s"], 3)
                    for r in measured]
        # CPU seconds of the workers and the server against the floor's client and server: what
        # resetbot costs whatever else the machine runs (the wall time waits for a core too).
        for writes in FLOOR_WRITES:
            measured = [r for r in runs if writes in r["floors"]]
            if measured:
                entry[f"cpu_ratio_{writes}"] = round(statistics.median(
                    (r["resetbot"]["worker_cpu_s"] + r["resetbot"]["server_cpu_s"])
                    / (r["floors"][writes]["client_cpu_s"] + r["floors"][writes]["server_cpu_s"])
                    for r in measured), 3)
        entry["server_cpu_s"] = round(statistics.median(
            r["resetbot"]["server_cpu_s"] for r in runs), 2)
        entry["worker_cpu_s"] = round(statistics.median(
            r["resetbot"]["worker_cpu_s"] for r in runs), 2)
        entry["foreign_max"] = max(max(r["resetbot"]["foreign_load"],
                                       *(f["foreign_load"] for f in r["floors"].values()))
                                   for r in runs)
        summary.append(entry)
    return summary


# -- the phases ------------------------------------------------------------------------------------


def ldap_phase(
    stack: Stack, base: Settings, workdir: Path, command: list[str], *, servers: list[str],
    sizes: dict[str, int], modes: list[str], workers: list[int], repeat: int,
    floor_writes: list[str], log: Callable[[str], None], windows: list[int],
) -> list[Row]:
    rows: list[Row] = []
    sources = {"openldap": openldap_source, "ad": samba_source}
    for name in servers:
        size = sizes[name]
        with sources[name](size) as (fresh, loaded), state_database(size, base) as db:
            log(f"ldap: {name}, {size:,} users (loaded in {loaded:.1f}s)")
            for index in range(repeat):
                for mode in modes:
                    for count in workers:
                        for row in _timed(stack, db, fresh, name, size, mode, count, index,
                                          floor_writes, base, workdir, command, log, windows):
                            row["loaded_s"] = round(loaded, 1)
                            rows.append(row)
    return rows


def _timed(
    stack: Stack, db: Database, fresh: Fresh, name: str, size: int, mode: str, workers: int,
    repeat: int, floor_writes: list[str], base: Settings, workdir: Path, command: list[str],
    log: Callable[[str], None], windows: list[int],
) -> list[Row]:
    """One floor (or two) and one resetbot task per window, each on a fresh copy, side by side
    (the windows' rows share the floors)."""
    floors: dict[str, Row] = {}
    for writes in floor_writes:
        with fresh() as server:
            floors[writes] = floor_run(server, mode, workers, writes)
    rows: list[Row] = []
    for window in windows:
        with fresh() as server:
            measured = resetbot_run(stack, db, server, mode, workers, base, workdir, command,
                                    window)
        rows.append({"server": name, "size": size, "mode": mode, "workers": workers,
                     "repeat": repeat, "floors": floors, "resetbot": measured})
        words = ", ".join(
            f"floor[{writes}] {floor['wall_s']:.1f}s (server {floor['server_cpu_s']}s, client "
            f"{floor['client_cpu_s']}s, foreign {floor['foreign_load']:.0%}) ratio "
            f"{measured['wall_s'] / floor['wall_s']:.3f}"
            for writes, floor in floors.items())
        log(f"  {name} {size:,} {mode} {workers}w window {window}: resetbot "
            f"{measured['wall_s']:.1f}s (server {measured['server_cpu_s']}s, workers "
            f"{measured['worker_cpu_s']}s, foreign {measured['foreign_load']:.0%}); {words}")
    return rows


def ldap_picker_phase(size: int, queries: int, base: Settings,
                      log: Callable[[str], None]) -> Row:
    """The app's search copy of an OpenLDAP directory of `size` users, read from its paged
    `picker_rows` as bot/app.py makes it: its build (first read), memory (traced) and
    searches' p50/p99 (rare terms: a username, a name with its number; common: a first name,
    a surname, a fragment; misses)."""
    from core.directory.ldap.config import LdapConfig
    from core.directory.ldap.directory import LdapDirectory
    from core.directory.picker import attach_search_copy

    with openldap_source(size) as (fresh, loaded), fresh() as server:
        log(f"ldap picker: {size:,} OpenLDAP users (loaded in {loaded:.1f}s)")
        directory = LdapDirectory(LdapConfig.from_env(server.env))
        settings = replace(base, directory_url=server.env["DIRECTORY_URL"],
                           directory_profile="openldap")
        try:
            copy = attach_search_copy(settings, directory)
            assert copy is not None
            server_before = server.cpu_seconds()
            started, cpu_started = time.perf_counter(), time.process_time()
            assert copy.reload() and len(copy) == size
            build_s, build_cpu = time.perf_counter() - started, time.process_time() - cpu_started
            server_cpu = server.cpu_seconds() - server_before
            pages = directory.pages_read
            # Memory from a second read, traced (tracemalloc slows the read several times over:
            # the build above is timed without it). The old copy is let go first.
            copy = attach_search_copy(settings, directory)
            assert copy is not None
            tracemalloc.start()
            before = tracemalloc.get_traced_memory()[0]
            assert copy.reload()
            held, peak = tracemalloc.get_traced_memory()
            tracemalloc.stop()
            terms = _picker_terms(size, queries)
            for term, _kind in terms[:20]:
                directory.search(term, LIMIT)  # warm
            wall, cpu = Latencies(), Latencies()
            for term, kind in terms:
                began, thread_began = time.perf_counter(), time.thread_time()
                directory.search(term, LIMIT)
                wall.add(time.perf_counter() - began, kind)
                cpu.add(time.thread_time() - thread_began, kind)
        finally:
            directory.dispose()
    row = {"size": size, "loaded_s": round(loaded, 1), "build_s": round(build_s, 2),
           "build_cpu_s": round(build_cpu, 2), "server_cpu_s": round(server_cpu, 2),
           "pages": pages, "page_size": directory.page_size,
           "memory_mb": round((held - before) / MB, 1),
           "memory_peak_mb": round((peak - before) / MB, 1),
           "search": wall.summary(), "search_cpu": cpu.summary()}
    log(f"  copy built in {build_s:.2f}s ({build_cpu:.2f}s CPU here, slapd {server_cpu:.2f}s; "
        f"{pages} pages of {directory.page_size}), {row['memory_mb']} MB held (peak "
        f"{row['memory_peak_mb']} MB, traced); search p50 {wall.summary()['p50_ms']} p99 "
        f"{wall.summary()['p99_ms']} ms (CPU p99 {cpu.summary()['p99_ms']} ms)")
    return row


def _picker_terms(size: int, total: int) -> list[tuple[str, str]]:
    everyone = people(size)
    terms: list[tuple[str, str]] = []
    fragments = ["ann", "berg", "costa", "lena", "son", "ova", "library.example", "zel"]
    for index in range(total):
        person = everyone[(index * 7919) % size]
        match index % 4:
            case 0:
                terms.append((person.uid, "rare"))
            case 1:
                terms.append((f"{person.uid[-6:]}@", "rare"))
            case 2:
                terms.append((fragments[index % len(fragments)], "common"))
            case _:
                terms.append((f"nobody{index}x", "miss"))
    return terms
