"""The Slack app process for the benchmark: `python -m bench.app_main PORT`, settings from env.

The same thing `resetbot serve --port PORT` runs (bot.server.serve over HTTP, waitress); the
benchmark uses the CLI when it has `serve` and falls back to this.
"""

from __future__ import annotations

import logging
import sys

from core.settings import Settings


def main(argv: list[str]) -> int:
    from bot.server import serve

    logging.basicConfig(level=logging.WARNING, format="%(asctime)s %(name)s %(message)s")
    serve(Settings.from_env(env_file=None), port=int(argv[0]), host="127.0.0.1")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
