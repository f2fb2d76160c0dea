"""A TCP proxy on loopback for tests that need a database connection to drop.

``Proxy(host, port)`` listens on a free loopback port and forwards every connection to the
server, one thread per direction. ``cut()`` closes every connection open now (the server and
the client both see it drop; new connections work as before), so a test can make a pooled
connection die between two statements. ``url(database_url)`` points a database URL at the proxy.
``drop_next_request()`` swallows the next chunk a client sends and closes that connection (the
server never sees the request); ``drop_next_reply()`` lets the next request through but swallows
the server's answer and closes the connection (the server acted, the client never hears of it).
``hold_next_reply()`` swallows the server's next answer and keeps the connection open: the
client waits for a reply that never comes, as behind a stalled network.

    with Proxy.for_url(POSTGRES_URL) as proxy:
        engine = sa.create_engine(proxy.url(POSTGRES_URL))
        ...
        proxy.cut()
"""

from __future__ import annotations

import contextlib
import socket
import threading
from types import TracebackType

import sqlalchemy as sa

__all__ = ["Proxy"]


class Proxy:
    """Forward loopback connections to ``host:port``; ``cut()`` drops the open ones."""

    def __init__(self, host: str, port: int) -> None:
        self.target = (host, port)
        self._listener = socket.create_server(("127.0.0.1", 0))
        self.port = self._listener.getsockname()[1]
        self._lock = threading.Lock()
        self._open: list[socket.socket] = []
        self.accepted = 0
        self.cuts = 0  # connections closed by drop_next_request/drop_next_reply
        self._drop = {True: False, False: False}  # direction (towards the server?) -> armed
        self._hold = False  # swallow the next reply, keep the connection
        self.held = 0
        self._closed = False
        threading.Thread(target=self._accept, name="test-proxy", daemon=True).start()

    @classmethod
    def for_url(cls, url: str) -> Proxy:
        """A proxy to the server a database URL names."""
        parsed = sa.make_url(url)
        default = 5432 if parsed.get_backend_name() == "postgresql" else 3306
        return cls(parsed.host or "127.0.0.1", parsed.port or default)

    def url(self, url: str) -> str:
        """``url`` with its host and port replaced by the proxy's."""
        parsed = sa.make_url(url).set(host="127.0.0.1", port=self.port)
        return parsed.render_as_string(hide_password=False)

    def _accept(self) -> None:
        while True:
            try:
                client, _ = self._listener.accept()
            except OSError:  # the listener was closed
                return
            try:
                server = socket.create_connection(self.target)
            except OSError:
                client.close()
                continue
            with self._lock:
                if self._closed:
                    client.close()
                    server.close()
                    return
                self._open += [client, server]
                self.accepted += 1
            for source, sink, to_server in ((client, server, True), (server, client, False)):
                threading.Thread(target=self._pump, args=(source, sink, to_server), daemon=True).start()

    def drop_next_request(self) -> None:
        """Swallow the next chunk any client sends, then close its connection."""
        with self._lock:
            self._drop[True] = True

    def drop_next_reply(self) -> None:
        """Swallow the next chunk the server sends, then close that connection."""
        with self._lock:
            self._drop[False] = True

    def hold_next_reply(self) -> None:
        """Swallow the next chunk the server sends and keep the connection open."""
        with self._lock:
            self._hold = True

    def _holding(self, to_server: bool) -> bool:
        with self._lock:
            if to_server or not self._hold:
                return False
            self._hold = False
            self.held += 1
            return True

    def _dropping(self, to_server: bool) -> bool:
        with self._lock:
            if not self._drop[to_server]:
                return False
            self._drop[to_server] = False
            self.cuts += 1
            return True

    def _pump(self, source: socket.socket, sink: socket.socket, to_server: bool) -> None:
        with contextlib.suppress(OSError):
            while data := source.recv(65536):
                if self._dropping(to_server):
                    break
                if not self._holding(to_server):
                    sink.sendall(data)
        for sock in (source, sink):
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)

    def cut(self) -> None:
        """Drop every connection open now."""
        with self._lock:
            dropping, self._open = self._open, []
        for sock in dropping:
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)
            sock.close()

    def close(self) -> None:
        """Stop listening and drop every connection."""
        with self._lock:
            self._closed = True
        self._listener.close()
        self.cut()

    def __enter__(self) -> Proxy:
        return self

    def __exit__(
        self, kind: type[BaseException] | None, value: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()
