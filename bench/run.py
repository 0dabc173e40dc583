"""The resetbot benchmark: `python -m bench.run [--quick]`. See bench/README.md.

Phases, all in one run on loopback (private Redis, throw-away PostgreSQL databases, an SMTP
sink, the Slack Web API stand-in, workers as separate processes):
  throughput  whole tasks at each size up to --throughput-max, both modes, 1 and N workers,
              against the hash floor measured beside them (pbkdf2_sha256, passlib's default cost)
  slack       Web API calls per task at 1,000 users (and every throughput size)
  bcrypt      the same at --bcrypt-users users with bcrypt at its default cost (12)
  large       each size above --throughput-max, on SQLite and PostgreSQL: picker search and
              preview latency, confirm latency, and a whole task with peak RSS sampled
  picker      each size above --throughput-max: options search on a Koha-shaped `borrowers`
              table (MariaDB, PostgreSQL, SQLite) through the in-memory search copy, beside
              resetbot's own table with the same terms; the copy's build, reload and memory
  koha        a --koha-users task (default 10,000) on a Koha directory (`borrowers` on
              MariaDB, the `koha` profile; state on PostgreSQL), bcrypt $2a$ cost 8, both
              modes, against the hash floor measured in the same workers; and the preview's
              latency at --koha-preview-users (default 100,000) Koha users
  ldap        whole tasks on OpenLDAP (--ldap-users, default 10,000) and Samba AD (--ad-users,
              default 2,000), both modes, 1 and N workers, against the floor measured beside
              them: the same password sets straight through ldap3, one connection per worker;
              the servers' CPU beside the workers' (see bench/ldapbench.py)
  ldappicker  the picker's search copy of --ldap-picker-users (default 100,000) OpenLDAP
              users, read by paged search: build time, memory, search p50/p99
  small       a one-user e-mailed reset, confirm to mail accepted, with a worker already idle
  eta         the time left shown once 10 % of a task is done, against the real time it took
  file        a file of --file-lines users (default 100,000) given in Slack, on SQLite and
              PostgreSQL: files.info + download with the bot token, parse, match, preview
"""

from __future__ import annotations

import argparse
import shutil
import signal
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import replace
from pathlib import Path
from typing import Any

from bench.harness import (
    Confirmer,
    ConfirmsTasks,
    Database,
    HashConfig,
    Stack,
    TaskRun,
    WorkerPool,
    bench_request,
    database,
    eta_run,
    first_user_with_email,
    measure_hash,
    measure_parallel_hash,
    one_user_reset,
    run_task,
    worker_command,
)
from bench.latency import (
    Latencies,
    preview_latency_core,
    preview_requests,
    search_latency_core,
)
from bench.measure import PeakRss
from bench.report import Report
from bench.slackapp import (
    AppProcess,
    HttpConfirmer,
    app_available,
    preview_latency_http,
    search_latency_http,
)
from bench.synth import search_terms
from core.settings import Settings

MODES = ("default", "generated")
#: Schemes a library may configure, and how many hashes to time of each.
SCHEMES = (("pbkdf2_sha256", 40), ("bcrypt", 8), ("argon2", 10))


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m bench.run", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", default=None,
                        help="directory sizes, comma-separated (default 10000,100000)")
    parser.add_argument("--workers", default=None, help="worker counts (default 1,2)")
    parser.add_argument("--repeat", type=int, default=None,
                        help="repeats of each throughput configuration (default 3)")
    parser.add_argument("--out", default="bench/results/latest.json", help="JSON output file")
    parser.add_argument("--quick", action="store_true",
                        help="small sizes, one repeat: a few minutes instead of ~18")
    parser.add_argument("--throughput-max", type=int, default=None,
                        help="largest size timed with full-cost hashing (default 10000)")
    parser.add_argument("--rounds", type=int, default=None,
                        help="pbkdf2 rounds for throughput runs (default: passlib's)")
    parser.add_argument("--bcrypt-users", type=int, default=None,
                        help="users in the bcrypt-12 run (default 100; 0 skips it)")
    parser.add_argument("--bcrypt-chunk-size", type=int, default=10,
                        help="RESET_CHUNK_SIZE for the bcrypt run (default 10)")
    parser.add_argument("--memory-rounds", type=int, default=1000,
                        help="pbkdf2 rounds for the large task whose memory is sampled")
    parser.add_argument("--memory-mode", choices=MODES, default="generated",
                        help="reset mode of the large task whose memory is sampled")
    parser.add_argument("--no-large-task", action="store_true",
                        help="large phase: only the confirm's latency, no whole task")
    parser.add_argument("--slack-size", type=int, default=1000,
                        help="extra small size for Slack call counts (0 skips)")
    parser.add_argument("--db", choices=("postgresql", "sqlite"), default="postgresql",
                        help="database for the throughput runs")
    parser.add_argument("--modes", default=",".join(MODES),
                        help="reset modes for the throughput runs (default: default,generated)")
    parser.add_argument("--phases",
                        default="schemes,throughput,slack,bcrypt,large,picker,small,eta,file",
                        help="which phases to run")
    parser.add_argument("--koha-users", type=int, default=None,
                        help="users in the koha phase's tasks (default 10000; --quick 2000;"
                             " 0 skips them)")
    parser.add_argument("--koha-preview-users", type=int, default=None,
                        help="Koha users for the koha phase's preview latency (default 100000;"
                             " --quick 20000; 0 skips it)")
    parser.add_argument("--ldap-servers", default="openldap,ad",
                        help="servers for the ldap phase (default openldap,ad)")
    parser.add_argument("--ldap-users", type=int, default=None,
                        help="OpenLDAP users in the ldap phase (default 10000; --quick 2000)")
    parser.add_argument("--ad-users", type=int, default=None,
                        help="Samba AD users in the ldap phase (default 2000; --quick 500)")
    parser.add_argument("--ldap-floor-writes", default="password,all",
                        help="floors measured: password (the password operation only), all "
                             "(with the must-change/unlock modify too); default both")
    parser.add_argument("--ldap-window", default=None,
                        help="DIRECTORY_LDAP_WINDOW for the ldap phase's workers; several "
                             "(1,16) run a task per window beside the same floors (default: "
                             "the setting's default)")
    parser.add_argument("--ldap-repeat", type=int, default=1,
                        help="repeats of each ldap configuration (default 1)")
    parser.add_argument("--ldap-picker-users", type=int, default=None,
                        help="OpenLDAP users for the ldappicker phase (default 100000)")
    parser.add_argument("--small-repeat", type=int, default=10,
                        help="one-user resets timed in the small phase (default 10)")
    parser.add_argument("--eta-users", type=int, default=None,
                        help="users in the ETA phase's task (default 10000; --quick 2000)")
    parser.add_argument("--file-lines", type=int, default=None,
                        help="lines of the file phase's file (default 100000; --quick 10000)")
    parser.add_argument("--file-dbs", default="sqlite,postgresql",
                        help="databases for the file phase (default both)")
    parser.add_argument("--queries", type=int, default=200,
                        help="picker searches timed per database (default 200)")
    parser.add_argument("--preview-rounds", type=int, default=5,
                        help="rounds of the four preview submissions (default 5)")
    parser.add_argument("--large-dbs", default="sqlite,postgresql",
                        help="databases for the large-size phase (default both)")
    parser.add_argument("--picker-dbs", default="mariadb,postgresql,sqlite",
                        help="databases for the picker phase (default all three)")
    parser.add_argument("--picker-tables", default="own,koha",
                        help="tables for the picker phase: resetbot's own, Koha's (default both)")
    parser.add_argument("--floor-samples", type=int, default=60,
                        help="hashes timed for the floor before and after each task")
    parser.add_argument("--worker-command", default=None,
                        help="start workers with this command instead of `resetbot worker` "
                             "(to compare a patched worker side by side)")
    parser.add_argument("--no-app", action="store_true",
                        help="confirm through core instead of the Slack app over HTTP")
    args = parser.parse_args(argv)
    quick = args.quick
    args.sizes = _ints(args.sizes or ("2000,20000" if quick else "10000,100000"))
    args.workers = _ints(args.workers or "1,2")
    args.repeat = args.repeat or (1 if quick else 3)
    args.throughput_max = args.throughput_max or (5000 if quick else 10000)
    if args.bcrypt_users is None:
        args.bcrypt_users = 20 if quick else 100
    args.eta_users = args.eta_users or (2000 if quick else 10000)
    args.file_lines = args.file_lines or (10000 if quick else 100000)
    if args.koha_users is None:
        args.koha_users = 2000 if quick else 10000
    if args.koha_preview_users is None:
        args.koha_preview_users = 20000 if quick else 100000
    args.ldap_users = args.ldap_users or (2000 if quick else 10000)
    args.ad_users = args.ad_users or (500 if quick else 2000)
    args.ldap_picker_users = args.ldap_picker_users or (20000 if quick else 100000)
    args.phases = set(args.phases.split(","))
    args.modes = [mode for mode in args.modes.split(",") if mode]
    unknown = set(args.modes) - set(MODES)
    if unknown:
        parser.error(f"unknown mode(s): {', '.join(sorted(unknown))}")
    return args


def _ints(text: str) -> list[int]:
    return [int(part) for part in text.split(",") if part.strip()]


class Bench:
    def __init__(self, args: argparse.Namespace, stack: Stack, workdir: Path) -> None:
        self.args = args
        self.stack = stack
        self.workdir = workdir
        self.redis = stack.redis()
        self.command = (
            args.worker_command.split() if args.worker_command else worker_command()
        )
        self.base = replace(
            Settings.from_env({}, env_file=None),
            redis_url=stack.redis_url, reset_queue="resetbot-bench",
            reset_secret_key="4634b3fdd4094496a06f3c4b2fdf7c1c0dcc8153580ed52c41d321cded4b05c5",
        )
        self.report = Report(options={
            key: sorted(value) if isinstance(value, set) else value
            for key, value in vars(args).items()
        })
        self.report.notes.append(
            "workers: " + " ".join(self.command)
            + (" (= resetbot worker, with hash() timed)" if not args.worker_command else "")
        )
        self.use_app = app_available() and stack.slack is not None and not args.no_app
        self.report.notes.append(
            "tasks confirmed through the Slack app over signed HTTP" if self.use_app
            else "tasks confirmed through core (Slack app not available)"
        )
        if stack.slack is None:
            self.report.notes.append("Slack stand-in unavailable: no Slack calls counted")

    def log(self, message: str) -> None:
        print(f"[{time.strftime('%H:%M:%S')}] {message}", flush=True)

    @contextmanager
    def front(self, db: Database, hashing: HashConfig) -> Iterator[
        tuple[ConfirmsTasks, AppProcess | None]
    ]:
        """How tasks get confirmed for this database: the real app over HTTP, else core."""
        if not self.use_app:
            yield Confirmer(self.base, self.redis), None
            return
        env = self.stack.environment(db.url, hashing)
        with AppProcess(self.stack, env, self.workdir) as app:
            yield HttpConfirmer(app), app

    def empty_queue(self) -> None:
        from jobs.queueing import make_queue

        make_queue(self.base, self.redis).empty()  # type: ignore[no-untyped-call]

    # -- one timed configuration -------------------------------------------------------------

    def timed_task(
        self, db: Database, hashing: HashConfig, mode: str, workers: int, repeat: int,
        floor_samples: int, front: tuple[ConfirmsTasks, AppProcess | None],
        extra_env: dict[str, str] | None = None,
    ) -> dict[str, Any]:
        env = self.stack.environment(db.url, hashing, extra_env)
        before = measure_hash(env, floor_samples)
        confirmer, app = front
        with WorkerPool(workers, env, self.redis, self.workdir, self.command) as pool:
            roots = {"worker": pool.pids}
            if app is not None:
                roots["app"] = app.pids
            rss = PeakRss(roots)
            with rss:
                run = run_task(self.stack, db, confirmer, mode, pool,
                               timeout=db.size * before["median_s"] / workers * 4 + 180,
                               rss=rss)
            jobs = _jobs_per_worker(self.redis)
        self._check(run, db.size)
        after = measure_hash(env, floor_samples)
        # The floor: what one hash costs, measured in this run in the very processes that
        # did the work: the hashing thread's own CPU time per hash() call (bench.worker_main
        # times every call). Its wall time per call is kept too (it also holds the moments
        # the hashing thread waited for a core or for the GIL: overhead, not floor), and so is
        # a separate process timed before and after the task (a VM's drifting speed can put
        # that one off by 10-20 %).
        external = (before["median_s"] + after["median_s"]) / 2
        hash_median = run.hash_cpu_seconds / run.hashes if run.hashes else external
        in_worker = run.hash_wall_seconds / run.hashes if run.hashes else external
        floor = db.size * hash_median / workers
        row = {
            "size": db.size, "db": db.kind, "scheme": hashing.scheme, "rounds": hashing.rounds,
            "mode": mode, "workers": workers, "repeat": repeat,
            "hash_median_s": hash_median, "floor_s": floor,
            "hashes": run.hashes, "hash_wall_s": round(run.hash_wall_seconds, 3),
            "hash_cpu_s": round(run.hash_cpu_seconds, 3),
            "hash_external_s": external, "floor_external_s": db.size * external / workers,
            "ratio_external": run.wall_seconds / (db.size * external / workers),
            "hash_in_worker_wall_s": in_worker,
            "ratio_in_worker_wall": run.wall_seconds / (db.size * in_worker / workers),
            "cpu_by_role": run.cpu_by_role,
            "hash_before_s": before["median_s"], "hash_after_s": after["median_s"],
            "confirm_via": confirmer.name,
            "wall_s": run.wall_seconds, "db_final_s": run.db_seconds,
            "ratio": run.wall_seconds / floor,
            "users_per_s": db.size / run.wall_seconds,
            "confirm_s": run.confirm_seconds, "status": run.status, "counts": run.counts,
            "slack_calls": run.slack_calls, "slack_total": run.slack_total, "mails": run.mails,
            "worker_cpu_s": round(run.worker_cpu_seconds, 2),
            "jobs_per_worker": jobs, "peak_rss_mb": run.peak_rss_mb,
            "foreign_load": round(run.foreign_load, 3),
        }
        self.log(f"  {db.size:,} {hashing.label} {mode} {workers}w: wall {run.wall_seconds:.2f}s"
                 f" floor {floor:.2f}s ratio {row['ratio']:.3f} slack {run.slack_total}"
                 f" foreign {run.foreign_load:.0%} cpu {run.cpu_by_role}"
                 f" hashing {run.hash_cpu_seconds:.1f}")
        return row

    def _check(self, run: TaskRun, size: int) -> None:
        """A benchmark of a task that went wrong measures nothing: say so loudly."""
        done = sum(run.counts.values())
        if run.status != "completed" or done != size:
            raise RuntimeError(f"task {run.task_id} ended {run.status} with {run.counts}")

    # -- phases -------------------------------------------------------------------------------

    def throughput(self) -> None:
        args = self.args
        hashing = HashConfig("pbkdf2_sha256", args.rounds)
        for size in [s for s in args.sizes if s <= args.throughput_max]:
            with database(args.db, size, self.base) as db, self.front(db, hashing) as front:
                self.log(f"throughput: {size:,} users on {db.kind} "
                         f"(populated in {db.populate_seconds:.1f}s)")
                self.hash_scaling(db, hashing)
                for repeat in range(args.repeat):
                    for mode in args.modes:
                        for workers in args.workers:
                            row = self.timed_task(db, hashing, mode, workers, repeat,
                                                  args.floor_samples, front)
                            self.report.throughput.append(row)
                            if repeat == 0 and workers == args.workers[0]:
                                self._slack_row(size, mode, row["slack_calls"])

    def hash_scaling(self, db: Database, hashing: HashConfig) -> None:
        """Hashing alone in 1 and in N processes at once: the machine's own parallel speed-up."""
        env = self.stack.environment(db.url, hashing)
        rows = []
        for workers in self.args.workers:
            median = measure_parallel_hash(env, workers, 100)
            rows.append({
                "scheme": hashing.label, "processes": workers, "hash_ms": round(median * 1000, 3),
            })
        self.report.hash_scaling += rows
        self.log("  hashing alone: " + ", ".join(
            f"{r['processes']} at once {r['hash_ms']} ms" for r in rows))

    def schemes(self) -> None:
        """One hash's cost per scheme at passlib's default cost, for sizing (users/s per core)."""
        self.log("schemes: one hash each, passlib's default cost")
        with database(self.args.db, 10, self.base) as db:
            for scheme, samples in SCHEMES:
                env = self.stack.environment(db.url, HashConfig(scheme, None))
                measured = measure_hash(env, samples)
                self.report.schemes.append({
                    "scheme": scheme, "hash_ms": round(measured["median_s"] * 1000, 2),
                    "users_per_s_per_core": round(1 / measured["median_s"], 1),
                    "samples": samples,
                })
                self.log(f"  {scheme}: {measured['median_s'] * 1000:.1f} ms")

    def _slack_row(self, size: int, mode: str, methods: dict[str, int],
                   memory_run: bool = False) -> None:
        if self.stack.slack is None:
            return
        self.report.slack_calls.append({
            "size": size, "mode": mode, "methods": methods, "total": sum(methods.values()),
            "memory_run": memory_run,
        })

    def slack(self) -> None:
        size = self.args.slack_size
        if not size or self.stack.slack is None:
            return
        if any(r["size"] == size for r in self.report.slack_calls):
            return
        hashing = HashConfig("pbkdf2_sha256", self.args.memory_rounds)
        with database(self.args.db, size, self.base) as db, self.front(db, hashing) as front:
            self.log(f"slack calls: {size:,} users (cheap hashing: calls do not depend on it)")
            for mode in MODES:
                row = self.timed_task(db, hashing, mode, 1, 0, 20, front)
                self._slack_row(size, mode, row["slack_calls"])

    def bcrypt(self) -> None:
        size = self.args.bcrypt_users
        if not size:
            return
        hashing = HashConfig("bcrypt", None)
        # 100 users are one chunk at the default RESET_CHUNK_SIZE (100): one job, so a second
        # worker has nothing to do. Chunks of 10 give every worker a share.
        chunks = {"RESET_CHUNK_SIZE": str(self.args.bcrypt_chunk_size)}
        self.report.notes.append(
            f"bcrypt run with RESET_CHUNK_SIZE={self.args.bcrypt_chunk_size}"
        )
        with database(self.args.db, size, self.base) as db, self.front(db, hashing) as front:
            self.log(f"bcrypt: {size:,} users")
            for workers in self.args.workers:
                row = self.timed_task(db, hashing, "default", workers, 0, 8, front, chunks)
                self.report.throughput.append(row)

    def small(self) -> None:
        """One-user e-mailed resets, one after another, each with the worker idle before it."""
        hashing = HashConfig("pbkdf2_sha256", self.args.rounds)
        with database(self.args.db, 100, self.base) as db, self.front(db, hashing) as front:
            env = self.stack.environment(db.url, hashing)
            one_hash = measure_hash(env, 20)["median_s"]
            user = first_user_with_email(db)
            confirmer, _app = front
            self.log(f"small: one-user e-mailed reset x{self.args.small_repeat} "
                     f"(one hash {one_hash * 1000:.1f} ms)")
            with WorkerPool(1, env, self.redis, self.workdir, self.command):
                one_user_reset(self.stack, db, confirmer, user)  # warm: first job, first mail
                for _ in range(self.args.small_repeat):
                    row = one_user_reset(self.stack, db, confirmer, user)
                    row["hash_s"] = one_hash
                    self.report.small.append(row)
            times = sorted(r["seconds"] for r in self.report.small)
            self.log(f"  confirm to mail: median {times[len(times) // 2] * 1000:.0f} ms "
                     f"(min {times[0] * 1000:.0f}, max {times[-1] * 1000:.0f})")

    def eta(self) -> None:
        """How right the time left is once 10 % is done: shown against what really followed."""
        hashing = HashConfig("pbkdf2_sha256", self.args.rounds)
        size = self.args.eta_users
        with database(self.args.db, size, self.base) as db, self.front(db, hashing) as front:
            env = self.stack.environment(db.url, hashing)
            confirmer, _app = front
            for mode in self.args.modes:
                with WorkerPool(1, env, self.redis, self.workdir, self.command):
                    row = eta_run(self.stack, db, confirmer, mode, 0.10,
                                  timeout=size * 0.1 + 300)
                row["mode"] = mode
                self.report.eta.append(row)
                self.log(f"  eta {size:,} {mode}: shown {row.get('eta_s')} s "
                         f"({row.get('shown')}), real {row.get('real_s')} s, "
                         f"error {row.get('error')}")

    def large(self) -> None:
        hashing = HashConfig("pbkdf2_sha256", self.args.memory_rounds)
        for size in [s for s in self.args.sizes if s > self.args.throughput_max]:
            for kind in self.args.large_dbs.split(","):
                with database(kind, size, self.base) as db, self.front(db, hashing) as front:
                    self.log(f"large: {size:,} users on {kind} "
                             f"(populated in {db.populate_seconds:.1f}s)")
                    self._latency(db, front)
                    if kind == "postgresql" and not self.args.no_large_task:
                        self._memory_task(db, hashing, front)
                    else:
                        self._confirm_only(db, front)

    def picker(self) -> None:
        from bench.picker import picker

        for size in [s for s in self.args.sizes if s > self.args.throughput_max]:
            result = picker(size, self.args.picker_dbs.split(","), self.args.queries, self.base,
                            self.log, self.report.notes,
                            frozenset(self.args.picker_tables.split(",")))
            self.report.picker.extend(result.latency)
            self.report.search_copy.extend(result.copies)

    def file(self) -> None:
        """A file of users given in Slack: download, parse, match and preview, each timed."""
        from bench.filelist import file_phase

        if self.stack.slack is None:
            self.report.notes.append("file phase skipped: Slack stand-in unavailable")
            return
        self.report.file.extend(file_phase(self.args.file_lines,
                                           self.args.file_dbs.split(","), self.base,
                                           self.stack.slack, self.log))

    def koha(self) -> None:
        """Whole tasks on Koha's `borrowers` (MariaDB) with the state on PostgreSQL, timed
        against the floor measured in the same workers, as the throughput phase does."""
        from bench.kohatask import KOHA_ROUNDS

        args = self.args
        hashing = HashConfig("bcrypt", KOHA_ROUNDS)
        # Tasks are confirmed through core: the app's confirm is the same create + consume.
        front: tuple[ConfirmsTasks, AppProcess | None] = (Confirmer(self.base, self.redis), None)
        self.report.notes.append("koha phase: tasks confirmed through core (create + consume)")
        if args.koha_users:
            self._koha_tasks(hashing, front)
        size = args.koha_preview_users
        if size:
            self._koha_preview(size)

    def ldap(self) -> None:
        """Whole tasks on OpenLDAP and Samba AD against the ldap3 floor beside them."""
        from bench.ldapbench import FLOOR_WRITES, ldap_phase

        args = self.args
        writes = [w for w in args.ldap_floor_writes.split(",") if w in FLOOR_WRITES]
        self.report.notes.append("ldap phase: tasks confirmed through core (create + consume); "
                                 "every run and floor on a fresh copy of the loaded server")
        self.report.ldap.extend(ldap_phase(
            self.stack, self.base, self.workdir, self.command,
            servers=args.ldap_servers.split(","),
            sizes={"openldap": args.ldap_users, "ad": args.ad_users}, modes=args.modes,
            workers=args.workers, repeat=args.ldap_repeat, floor_writes=writes, log=self.log,
            windows=_ints(args.ldap_window) if args.ldap_window
            else [self.base.directory_ldap_window],
        ))

    def ldappicker(self) -> None:
        from bench.ldapbench import ldap_picker_phase

        self.report.ldap_picker.append(ldap_picker_phase(
            self.args.ldap_picker_users, self.args.queries, self.base, self.log))

    def _koha_tasks(self, hashing: HashConfig,
                    front: tuple[ConfirmsTasks, AppProcess | None]) -> None:
        from bench.kohatask import koha_database

        args = self.args
        with koha_database(args.koha_users, self.base) as db:
            self.log(f"koha: {db.size:,} borrowers on MariaDB, state on PostgreSQL "
                     f"(populated in {db.populate_seconds:.1f}s)")
            # The machine's own parallel hashing speed with Koha's hash, beside its ratios.
            self.hash_scaling(db, hashing)
            for repeat in range(args.repeat):
                for mode in args.modes:
                    for workers in args.workers:
                        row = self.timed_task(db, hashing, mode, workers, repeat,
                                              args.floor_samples, front, db.directory_env())
                        row["directory"] = "koha/mariadb"
                        self.report.koha.append(row)

    def _koha_preview(self, size: int) -> None:
        """The preview as the app makes it: counted in its search copy (AppDeps.counts:
        core.directory.picker.CopyCounts), the selection's ids checked in the table; and, for
        scale, the same counted by the table (as the CLI and an app whose copy is old do).
        Koha's password rules tables are there, as in a real Koha: the preview reads the
        scope's categories for them."""
        from bench.kohatask import koha_database
        from core.directory.picker import CopyCounts, attach_search_copy
        from tests.support.koha import create_password_rules

        rounds = self.args.preview_rounds
        with koha_database(size, self.base) as db:
            self.log(f"koha preview: {size:,} borrowers on MariaDB "
                     f"(populated in {db.populate_seconds:.1f}s)")
            create_password_rules(db.directory.engine, {"S": (12, 1), "PT": (None, None)},
                                  {"minPasswordLength": "8", "RequireStrongPassword": "1"})
            settings = replace(self.base, database_url=db.url, directory_url=db.directory_url,
                               directory_profile="koha")
            directory = db.directory
            table_cpu = Latencies()
            table = preview_latency_core(db.sessions, settings, directory, 1, cpu=table_cpu)
            copy = attach_search_copy(settings, directory)
            assert copy is not None
            started, cpu_started = time.perf_counter(), time.process_time()
            assert copy.reload()
            built, built_cpu = time.perf_counter() - started, time.process_time() - cpu_started
            snapshot = copy.current()
            assert snapshot is not None and snapshot.facts is not None
            counts = CopyCounts(copy, directory)
            preview_latency_core(db.sessions, settings, directory, 1, counts)  # warm
            app_cpu = Latencies()
            preview = preview_latency_core(db.sessions, settings, directory, rounds, counts,
                                           app_cpu)
            for via, measured, cpu in (("core, counted by the table", table, table_cpu),
                                       ("core, as the app (search copy)", preview, app_cpu)):
                self.report.koha_preview.append({
                    "size": size, "db": "koha/mariadb", "via": via,
                    "preview": measured.summary(), "app_cpu": cpu.summary(),
                })
                self.log(f"  preview at {size:,} Koha users, {via}: "
                         f"p50 {measured.summary()['p50_ms']} max "
                         f"{measured.summary()['max_ms']} ms; {measured.summary()}; "
                         f"app CPU {cpu.summary()}")
            self.log(f"  (the app's search copy built in {built:.2f} s, {built_cpu:.2f} s of "
                     f"CPU, {snapshot.nbytes / 1e6:.0f} MB, of which the preview's facts "
                     f"{snapshot.facts.nbytes / 1e6:.0f} MB)")

    def _latency(self, db: Database, front: tuple[ConfirmsTasks, AppProcess | None]) -> None:
        settings = replace(self.base, database_url=db.url)
        terms = search_terms(db.size, total=self.args.queries)
        search_latency_core(db.sessions, db.directory, terms[:20])  # warm the cache
        measured = [("core", search_latency_core(db.sessions, db.directory, terms),
                     preview_latency_core(db.sessions, settings, db.directory,
                                          self.args.preview_rounds))]
        confirmer, app = front
        if app is not None and isinstance(confirmer, HttpConfirmer):
            search_latency_http(app, terms[:20])
            measured.append(("http", search_latency_http(app, terms),
                             preview_latency_http(confirmer, preview_requests(),
                                                  self.args.preview_rounds)))
        for via, search, preview in measured:
            self.report.latency.append({
                "size": db.size, "db": db.kind, "via": via,
                "search": search.summary(), "preview": preview.summary(),
            })
            self.log(f"  {via}: search p50 {search.summary()['p50_ms']} "
                     f"p99 {search.summary()['p99_ms']} ms; "
                     f"preview max {preview.summary()['max_ms']} ms")

    def _confirm_only(self, db: Database, front: tuple[ConfirmsTasks, AppProcess | None]) -> None:
        """The confirm's latency with no worker running: the task is dropped with the database."""
        confirmer, _app = front
        _task, _wall, seconds = confirmer.confirm(db, bench_request("generated"))
        self.empty_queue()
        self.report.confirm.append({
            "size": db.size, "db": db.kind, "via": confirmer.name,
            "confirm_ms": round(seconds * 1000, 1),
        })

    def _memory_task(self, db: Database, hashing: HashConfig,
                     front: tuple[ConfirmsTasks, AppProcess | None]) -> None:
        workers = max(self.args.workers)
        env = self.stack.environment(db.url, hashing)
        confirmer, app = front
        with WorkerPool(workers, env, self.redis, self.workdir, self.command) as pool:
            roots = {"worker": pool.pids}
            if app is not None:
                roots["app"] = app.pids
            rss = PeakRss(roots)
            with rss:
                run = run_task(self.stack, db, confirmer, self.args.memory_mode, pool,
                               timeout=max(3600, db.size * 0.02), rss=rss)
        self._check(run, db.size)
        self.report.memory.append({
            "size": db.size, "db": db.kind, "mode": self.args.memory_mode, "workers": workers,
            "ms_per_user": round(run.wall_seconds / db.size * 1000, 4),
            "scheme": hashing.scheme, "rounds": hashing.rounds, "wall_s": run.wall_seconds,
            "peak_rss_mb": run.peak_rss_mb, "rss_samples": rss.samples,
            "slack_calls": run.slack_calls, "mails": run.mails,
            "foreign_load": round(run.foreign_load, 3), "cpu_by_role": run.cpu_by_role,
        })
        self.report.confirm.append({
            "size": db.size, "db": db.kind, "via": confirmer.name,
            "confirm_ms": round(run.confirm_seconds * 1000, 1),
        })
        self._slack_row(db.size, self.args.memory_mode, run.slack_calls, memory_run=True)
        self.log(f"  memory: {run.peak_rss_mb} MB, wall {run.wall_seconds:.1f}s "
                 f"({run.wall_seconds / db.size * 1000:.3f} ms a user), "
                 f"slack {run.slack_total}, foreign {run.foreign_load:.0%}")


def _jobs_per_worker(redis: Any) -> list[int]:
    from rq import Worker

    return sorted(int(w.successful_job_count) for w in Worker.all(connection=redis))


def _exit_on_sigterm(signum: int, _frame: object) -> None:
    # As SystemExit, so that every `with` closes: services stopped, databases dropped.
    raise SystemExit(128 + signum)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    signal.signal(signal.SIGTERM, _exit_on_sigterm)
    workdir = Path(tempfile.mkdtemp(prefix="resetbot-bench-"))
    started = time.monotonic()
    try:
        with Stack(workdir) as stack:
            bench = Bench(args, stack, workdir)
            bench.log(f"bench: sizes {args.sizes}, workers {args.workers}, repeat {args.repeat};"
                      f" logs in {workdir}")
            for phase in ("schemes", "throughput", "koha", "ldap", "ldappicker", "slack",
                          "bcrypt", "large", "picker", "small", "eta", "file"):
                if phase in args.phases:
                    getattr(bench, phase)()
            bench.report.seconds = time.monotonic() - started
            out = Path(args.out)
            bench.report.write(out)
            print()
            print(bench.report.table())
            print(f"\nwritten: {out} ({bench.report.seconds / 60:.1f} min)")
    except BaseException:
        print(f"bench: failed; worker logs kept in {workdir}", file=sys.stderr)
        raise
    shutil.rmtree(workdir, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
