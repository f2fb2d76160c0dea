"""A small TCP proxy on loopback that can cut a connection at a chosen moment.

Clients connect to :attr:`TcpProxy.port`; every connection is piped to the upstream server by
two threads. :meth:`TcpProxy.drop_next_request` makes the proxy swallow the next chunk a client
sends and close that connection (the server never sees the request);
:meth:`TcpProxy.drop_next_reply` lets the next request through but swallows the server's answer
and closes the connection (the server acted, the client never hears of it).
"""

from __future__ import annotations

import contextlib
import socket
import threading


class TcpProxy:
    """Forward ``127.0.0.1:<port>`` to ``(host, port)`` until :meth:`close`."""

    def __init__(self, host: str, port: int) -> None:
        self.upstream = (host, port)
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.port = self.listener.getsockname()[1]
        self.accepted = 0
        self.cuts = 0
        self._lock = threading.Lock()
        self._drop_request = False
        self._drop_reply = False
        self._sockets: list[socket.socket] = []
        self._closed = False
        threading.Thread(target=self._accept, daemon=True).start()

    def drop_next_request(self) -> None:
        """Swallow the next chunk any client sends, then close its connection."""
        with self._lock:
            self._drop_request = True

    def drop_next_reply(self) -> None:
        """Swallow the next chunk the server sends, then close that connection."""
        with self._lock:
            self._drop_reply = True

    def _take(self, to_server: bool) -> bool:
        with self._lock:
            if to_server and self._drop_request:
                self._drop_request = False
            elif not to_server and self._drop_reply:
                self._drop_reply = False
            else:
                return False
            self.cuts += 1
            return True

    def _accept(self) -> None:
        while not self._closed:
            try:
                client, _ = self.listener.accept()
            except OSError:
                return
            server = socket.create_connection(self.upstream)
            with self._lock:
                self.accepted += 1
                self._sockets += [client, server]
            threading.Thread(target=self._pipe, args=(client, server, True), daemon=True).start()
            threading.Thread(target=self._pipe, args=(server, client, False), daemon=True).start()

    def _pipe(self, source: socket.socket, target: socket.socket, to_server: bool) -> None:
        try:
            while True:
                data = source.recv(65536)
                if not data:
                    break
                if self._take(to_server):
                    break
                target.sendall(data)
        except OSError:
            pass
        for sock in (source, target):
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)
            sock.close()

    def close(self) -> None:
        """Stop accepting and close every connection."""
        self._closed = True
        self.listener.close()
        with self._lock:
            sockets, self._sockets = self._sockets, []
        for sock in sockets:
            with contextlib.suppress(OSError):
                sock.close()
