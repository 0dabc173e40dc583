"""Several requests in flight on one bound ldap3 connection: written on its TLS socket, their
answers read back by message id (RFC 4511 4.1.1.1: a client may send requests without waiting
for earlier answers, and the server may answer them in any order).

Used between ldap3's own operations only: `Pipeline` writes what it was given when it must
wait for an answer (one TLS record for all the requests queued since: fewer records and system
calls on both sides), reads whole LDAPMessages (wire.py) and hands them back one at a time.
Its caller reads every answer it asked for before ldap3 uses the connection again; whatever
goes wrong on the socket (an OSError, a timeout after the connection's receive timeout, bytes
that are no answer) is raised for the caller to drop the connection, never to read on after.
"""

from __future__ import annotations

from typing import Any

from ldap3 import Connection

from core.directory.ldap import wire

#: Bytes read from the socket at a time.
READ_SIZE = 1 << 16


class ServerClosed(ConnectionError):
    """The server ended the connection (end of stream, or its notice of disconnection)."""


class Pipeline:
    """Requests queued, sent, and answered on one ldap3 connection's socket."""

    def __init__(self, connection: Connection) -> None:
        socket: Any = connection.socket
        if socket is None:
            raise ServerClosed("the connection is closed")
        self._socket = socket
        self._next_id = connection.server.next_message_id
        self._queued: list[bytes] = []
        self._buffer = bytearray()
        #: Message ids sent (or queued) and not answered yet.
        self.waiting: set[int] = set()

    def queue(self, operation: bytes) -> int:
        """Queue one protocol operation (wire.py's encodings); its message id."""
        message_id = int(self._next_id())
        self._queued.append(wire.message(message_id, operation))
        self.waiting.add(message_id)
        return message_id

    def flush(self) -> None:
        if self._queued:
            data = b"".join(self._queued)
            self._queued.clear()  # requests hold passwords: not kept longer than needed
            self._socket.sendall(data)

    def answer(self) -> wire.Answer:
        """The next answer to one of the requests sent. Answers already read are handed out
        first; the requests queued meanwhile go out together just before the socket is read
        (one TLS record for the follow-ups of several answers that came at once)."""
        while True:
            size = wire.message_size(self._buffer)
            if size is not None and len(self._buffer) >= size:
                answer = wire.read_answer(self._buffer[:size])
                del self._buffer[:size]
                if answer.is_disconnection:
                    raise ServerClosed(f"the server is closing the connection "
                                       f"({answer.diagnostic[:200] or answer.code})")
                if answer.message_id not in self.waiting:
                    raise wire.WireError(f"an answer to no request of ours "
                                         f"(message {answer.message_id})")
                self.waiting.discard(answer.message_id)
                return answer
            self.flush()
            chunk = self._socket.recv(READ_SIZE)
            if not chunk:
                raise ServerClosed("the server closed the connection")
            self._buffer += chunk

    def finish(self) -> None:
        """Every request answered: nothing may be left unread for ldap3 to trip over."""
        if self.waiting or self._queued or self._buffer:
            raise wire.WireError("the pipeline ended with requests unanswered or bytes unread")
