"""`resetbot worker`: run a worker that carries out the resets (jobs/worker.py)."""

from __future__ import annotations

import argparse

from bot.commands.context import Cli, log_to_stderr, open_engine
from bot.commands.parsing import Subparsers, add_command
from bot.terminal import EXIT_OK


def add_parser(commands: Subparsers) -> None:
    worker = add_command(commands, "worker", "run a worker that carries out the resets",
                         description="Run a worker: it hashes the new passwords, writes them "
                                     "and sends the mails. Run one per CPU core.")
    worker.add_argument("--burst", action="store_true",
                        help="stop when there is no more work instead of waiting for more")
    worker.set_defaults(handler=cmd_worker)


def cmd_worker(cli: Cli, args: argparse.Namespace) -> int:
    from core.directory.factory import open_directory
    from jobs.worker import run_worker, tune_worker_process

    settings = cli.settings(with_secret_key=True)
    log_to_stderr()
    startup_stop = tune_worker_process()
    open_engine(settings).dispose()
    # A directory that refuses, or a profile that does not fit it: said now, in one line.
    open_directory(settings).dispose()
    with cli.redis(settings) as redis:
        run_worker(settings, redis, burst=args.burst, with_scheduler=True,
                   startup_stop=startup_stop)
    return EXIT_OK
