"""Stopping the tests' threaded HTTP servers (socketserver) at once.

`serve_forever` looks at its shutdown flag only between two `select()` calls, so `shutdown()`
waits up to the poll interval (50 ms here) for the loop to notice: on a test with the app and
the Slack stand-in that was about 50 ms of its teardown. A connection to the server ends the
`select()` as soon as the flag is set.
"""

from __future__ import annotations

import contextlib
import socket
import threading
from socketserver import TCPServer


def stop_serving(server: TCPServer, thread: threading.Thread | None) -> None:
    """Shut `server` down, close its socket and join its thread (5 s at most)."""
    stopper = threading.Thread(target=server.shutdown, name="server-stop", daemon=True)
    stopper.start()
    host, port = server.server_address[:2]
    # The empty connection is read as an empty request line: the handler ends without an answer.
    # Made before the flag is set, it only costs the poll interval as before.
    with contextlib.suppress(OSError):
        socket.create_connection((str(host), int(port)), timeout=1).close()
    stopper.join(timeout=5)
    server.server_close()
    if thread is not None:
        thread.join(timeout=5)
