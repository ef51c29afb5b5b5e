"""A TCP proxy a test puts between fairlane and a real server, to make that server unreachable.

``cut()`` closes every proxied connection and refuses new ones (each is accepted and closed at
once, as a server that went away); ``restore()`` lets connections through again;
``lose_reply_to(marker)`` forwards the next request carrying ``marker``, waits for the server's
reply (so the server has done the work) and then drops the connection instead of passing the
reply on: the client cannot tell whether its write committed.
"""

from __future__ import annotations

import contextlib
import socket
import threading
from urllib.parse import urlsplit, urlunsplit


class TcpProxy:
    """Forwards 127.0.0.1:``port`` to a target address until told otherwise."""

    def __init__(self, target_host: str, target_port: int) -> None:
        self.target = (target_host, target_port)
        self._listener = socket.create_server(("127.0.0.1", 0))
        self.port = int(self._listener.getsockname()[1])
        self._lock = threading.Lock()
        self._refusing = False
        self._marker: bytes | None = None
        self._cut_after_lost_reply = False
        self._pairs: list[tuple[socket.socket, socket.socket]] = []
        self._closed = False
        threading.Thread(target=self._accept, daemon=True).start()

    def url_for(self, url: str) -> str:
        """``url`` with its host and port replaced by this proxy's."""
        parts = urlsplit(url)
        netloc = parts.netloc.rsplit("@", 1)
        address = f"127.0.0.1:{self.port}"
        return urlunsplit(parts._replace(netloc=f"{netloc[0]}@{address}" if len(netloc) == 2 else address))

    def cut(self) -> None:
        """Drop every proxied connection and refuse new ones."""
        with self._lock:
            self._refusing = True
            pairs, self._pairs = self._pairs, []
        for pair in pairs:
            _close(*pair)

    def restore(self) -> None:
        """Let new connections through again."""
        with self._lock:
            self._refusing = False

    def lose_reply_to(self, marker: bytes, *, then_cut: bool = False) -> None:
        """Swallow the reply to the next request containing ``marker`` and drop its connection;
        with ``then_cut``, also :meth:`cut` at that moment."""
        with self._lock:
            self._marker = marker
            self._cut_after_lost_reply = then_cut

    def close(self) -> None:
        """Stop listening and drop every connection."""
        self._closed = True
        self.cut()
        self._listener.close()

    def _accept(self) -> None:
        while not self._closed:
            try:
                client, _ = self._listener.accept()
            except OSError:
                return
            with self._lock:
                refusing = self._refusing
            if refusing:
                client.close()
                continue
            try:
                server = socket.create_connection(self.target)
            except OSError:
                client.close()
                continue
            with self._lock:
                self._pairs.append((client, server))
            lost = threading.Event()
            threading.Thread(target=self._upstream, args=(client, server, lost), daemon=True).start()
            threading.Thread(target=self._downstream, args=(client, server, lost), daemon=True).start()

    def _upstream(self, client: socket.socket, server: socket.socket, lost: threading.Event) -> None:
        while True:
            try:
                data = client.recv(65536)
            except OSError:
                data = b""
            if not data:
                _close(client, server)
                return
            with self._lock:
                if self._marker is not None and self._marker in data:
                    self._marker = None
                    lost.set()
            try:
                server.sendall(data)
            except OSError:
                _close(client, server)
                return

    def _downstream(self, client: socket.socket, server: socket.socket, lost: threading.Event) -> None:
        while True:
            try:
                data = server.recv(65536)
            except OSError:
                data = b""
            if not data:
                _close(client, server)
                return
            if lost.is_set():  # the server answered the marked request: the work is done; drop it
                with self._lock:
                    cut = self._cut_after_lost_reply
                if cut:
                    self.cut()
                _close(client, server)
                return
            try:
                client.sendall(data)
            except OSError:
                _close(client, server)
                return


def _close(*sockets: socket.socket) -> None:
    for sock in sockets:
        with contextlib.suppress(OSError):
            sock.shutdown(socket.SHUT_RDWR)
        sock.close()
