"""The benchmark's SMTP sink as its own process: `python -m bench.smtp_sink PORT COUNTER_FILE`.

An aiosmtpd server on 127.0.0.1:PORT that accepts every message, keeps none (they hold
passwords) and counts them in a 16-byte memory-mapped file the benchmark reads: how many, and
when (epoch seconds) the last one was accepted. In its own
process, its CPU shows apart from the benchmark's in the per-process figures: on a real
deployment the mail server is another machine.
"""

from __future__ import annotations

import mmap
import signal
import struct
import sys
import threading
import time
from pathlib import Path
from typing import Any

COUNTER = struct.Struct("q")
#: The whole file: the count, then the time the last message was accepted.
RECORD = struct.Struct("qd")


class CountingHandler:
    def __init__(self, counter: mmap.mmap) -> None:
        self.counter = counter

    async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:
        (count,) = COUNTER.unpack_from(self.counter, 0)
        RECORD.pack_into(self.counter, 0, count + 1, time.time())
        return "250 OK"


def read_count(path: Path) -> int:
    data = path.read_bytes()
    return int(COUNTER.unpack_from(data)[0]) if len(data) >= COUNTER.size else 0


def read_last_accepted(path: Path) -> float | None:
    """When the last message was accepted (epoch seconds); None before the first."""
    data = path.read_bytes()
    if len(data) < RECORD.size:
        return None
    count, at = RECORD.unpack_from(data)
    return float(at) if count else None


def reset_count(path: Path) -> None:
    """Start counting again from zero (the sink adds to what the file holds)."""
    with path.open("r+b") as file, mmap.mmap(file.fileno(), RECORD.size) as counter:
        RECORD.pack_into(counter, 0, 0, 0.0)


def main(argv: list[str]) -> int:
    from aiosmtpd.controller import Controller

    port, path = int(argv[0]), Path(argv[1])
    path.write_bytes(bytes(RECORD.size))
    with path.open("r+b") as file, mmap.mmap(file.fileno(), RECORD.size) as counter:
        handler = CountingHandler(counter)
        controller = Controller(handler, hostname="127.0.0.1", port=port)
        controller.start()
        stop = threading.Event()
        signal.signal(signal.SIGTERM, lambda *_: stop.set())
        print("ready", flush=True)
        try:
            stop.wait()
        except KeyboardInterrupt:
            pass
        finally:
            controller.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
