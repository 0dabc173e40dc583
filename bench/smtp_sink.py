"""The benchmark's SMTP sink as its own process: `python -m bench.smtp_sink PORT COUNTER_FILE`.

An SMTP server on 127.0.0.1:PORT that accepts every message, keeps none (they hold passwords)
and counts them in a 16-byte memory-mapped file the benchmark reads: how many, and when (epoch
seconds) the last one was accepted. In its own process, its CPU shows apart from the
benchmark's in the per-process figures: on a real deployment the mail server is another machine.

It shares the benchmark's cores, so it costs what a real mail server's front end would and no
more: a bare asyncio protocol (aiosmtpd took about 0.5 ms of CPU a message, as much as a tenth
of a hash) that reads commands, skips the message to its end-of-data line without parsing it,
and answers everything that arrived at once in one write. It offers PIPELINING (RFC 2920), as
real servers do, and follows the protocol's order (MAIL, then RCPT, then DATA; 503 otherwise).
"""

from __future__ import annotations

import asyncio
import mmap
import signal
import struct
import sys
import time
from pathlib import Path

COUNTER = struct.Struct("q")
#: The whole file: the count, then the time the last message was accepted.
RECORD = struct.Struct("qd")
#: A command line longer than this is refused and the connection closed (RFC 5321: 512).
MAX_LINE = 4096
EHLO_REPLY = b"250-sink\r\n250-PIPELINING\r\n250-8BITMIME\r\n250 SIZE 10485760\r\n"
END_OF_DATA = b"\r\n.\r\n"


class SinkProtocol(asyncio.Protocol):
    """One SMTP connection: commands in, replies out, messages counted."""

    def __init__(self, counter: mmap.mmap) -> None:
        self.counter = counter
        self.transport: asyncio.Transport | None = None
        self.buffer = bytearray()
        self.in_data = False
        #: How many bytes of the message being received were searched for its end already.
        self.scanned = 0
        self.has_sender = False
        self.recipients = 0

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self.transport = transport
        transport.write(b"220 sink ESMTP\r\n")

    def data_received(self, data: bytes) -> None:
        assert self.transport is not None
        buffer = self.buffer
        buffer += data
        replies: list[bytes] = []
        start = 0
        closing = False
        while start < len(buffer):
            if self.in_data:
                # The message is buffer[start:]; `scanned` of its bytes were searched before.
                if self.scanned == 0 and len(buffer) - start < 3:
                    break  # too little to tell whether the message is empty
                if self.scanned == 0 and buffer.startswith(b".\r\n", start):
                    after = start + 3  # an empty message: its end is its first line
                else:
                    end = buffer.find(END_OF_DATA, start + max(0, self.scanned - 4))
                    if end < 0:
                        self.scanned = len(buffer) - start
                        break
                    after = end + len(END_OF_DATA)
                self._accepted()
                replies.append(b"250 OK queued\r\n")
                start = after
                continue
            end = buffer.find(b"\r\n", start)
            if end < 0:
                if len(buffer) - start > MAX_LINE:
                    replies.append(b"500 Line too long\r\n")
                    closing = True
                break
            reply = self._command(bytes(buffer[start:end]))
            start = end + 2
            replies.append(reply)
            if reply.startswith(b"221"):
                closing = True
                break
        del buffer[:start]
        if replies:
            self.transport.write(b"".join(replies))
        if closing:
            self.transport.close()

    def _command(self, line: bytes) -> bytes:
        verb = line[:4].upper()
        if verb == b"EHLO":
            self._reset()
            return EHLO_REPLY
        if verb == b"HELO":
            self._reset()
            return b"250 sink\r\n"
        if verb == b"MAIL":
            if self.has_sender:
                return b"503 Nested MAIL command\r\n"
            self.has_sender = True
            return b"250 OK\r\n"
        if verb == b"RCPT":
            if not self.has_sender:
                return b"503 MAIL first\r\n"
            self.recipients += 1
            return b"250 OK\r\n"
        if verb == b"DATA":
            if not self.recipients:
                return b"503 No valid recipients\r\n" if self.has_sender else b"503 MAIL first\r\n"
            self._reset()
            self.in_data = True
            self.scanned = 0
            return b"354 End data with <CR><LF>.<CR><LF>\r\n"
        if verb == b"RSET":
            self._reset()
            return b"250 OK\r\n"
        if verb == b"NOOP":
            return b"250 OK\r\n"
        if verb == b"QUIT":
            return b"221 Bye\r\n"
        return b"502 Command not implemented\r\n"

    def _reset(self) -> None:
        self.has_sender = False
        self.recipients = 0

    def _accepted(self) -> None:
        self.in_data = False
        self.scanned = 0
        (count,) = COUNTER.unpack_from(self.counter, 0)
        RECORD.pack_into(self.counter, 0, count + 1, time.time())


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


async def serve(port: int, counter: mmap.mmap) -> None:
    """Serve on 127.0.0.1:`port` until SIGTERM or SIGINT; says `ready` once listening."""
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stop.set)
    server = await loop.create_server(lambda: SinkProtocol(counter), "127.0.0.1", port)
    print("ready", flush=True)
    async with server:
        await stop.wait()


def main(argv: list[str]) -> int:
    port, path = int(argv[0]), Path(argv[1])
    path.write_bytes(bytes(RECORD.size))
    with path.open("r+b") as file, mmap.mmap(file.fileno(), RECORD.size) as counter:
        asyncio.run(serve(port, counter))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
