"""The benchmark's SMTP sink as its own process: `python -m bench.smtp_sink PORT COUNTER_FILE`.

An aiosmtpd server on 127.0.0.1:PORT that accepts every message, keeps none (they hold
passwords) and counts them in an 8-byte memory-mapped file the benchmark reads. In its own
process, its CPU shows apart from the benchmark's in the per-process figures: on a real
deployment the mail server is another machine.
"""

from __future__ import annotations

import mmap
import signal
import struct
import sys
import threading
from pathlib import Path
from typing import Any

COUNTER = struct.Struct("q")


class CountingHandler:
    def __init__(self, counter: mmap.mmap) -> None:
        self.counter = counter

    async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:
        (count,) = COUNTER.unpack_from(self.counter, 0)
        COUNTER.pack_into(self.counter, 0, count + 1)
        return "250 OK"


def read_count(path: Path) -> int:
    data = path.read_bytes()
    return int(COUNTER.unpack(data)[0]) if len(data) == COUNTER.size else 0


def reset_count(path: Path) -> None:
    """Start counting again from zero (the sink adds to what the file holds)."""
    with path.open("r+b") as file, mmap.mmap(file.fileno(), COUNTER.size) as counter:
        COUNTER.pack_into(counter, 0, 0)


def main(argv: list[str]) -> int:
    from aiosmtpd.controller import Controller

    port, path = int(argv[0]), Path(argv[1])
    path.write_bytes(bytes(COUNTER.size))
    with path.open("r+b") as file, mmap.mmap(file.fileno(), COUNTER.size) as counter:
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
