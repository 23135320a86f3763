"""A tiny TCP proxy on loopback that a test can cut and heal: a station's network partition.

While healed it forwards bytes both ways to the upstream address. While cut it resets every new
connection at once (RST), which is what a station sees when the hospital's network is down: the
request never reaches the cloud. Connections already open are not touched; the sync engine opens
one per round, so a partition always falls between rounds.
"""

import contextlib
import socket
import struct
import threading
from types import TracebackType

BUFFER = 65536


class PartitionProxy:
    def __init__(self, upstream_host: str, upstream_port: int) -> None:
        self._upstream = (upstream_host, upstream_port)
        self._listener = socket.create_server(("127.0.0.1", 0))
        self.port: int = self._listener.getsockname()[1]
        self.cut = False
        self._thread = threading.Thread(target=self._accept, name=f"proxy-{self.port}", daemon=True)
        self._thread.start()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def close(self) -> None:
        # shutdown() wakes the thread blocked in accept(); close() alone does not on Linux.
        with contextlib.suppress(OSError):
            self._listener.shutdown(socket.SHUT_RDWR)
        self._listener.close()
        self._thread.join(timeout=10)

    def __enter__(self) -> "PartitionProxy":
        return self

    def __exit__(
        self, kind: type[BaseException] | None, error: BaseException | None, trace: TracebackType | None
    ) -> None:
        self.close()

    def _accept(self) -> None:
        while True:
            try:
                client, _ = self._listener.accept()
            except OSError:
                return  # the listener was closed
            if self.cut:
                _reset(client)
                continue
            try:
                upstream = socket.create_connection(self._upstream, timeout=5)
            except OSError:
                _reset(client)
                continue
            upstream.settimeout(None)
            for sock in (client, upstream):
                # Forwarded as it comes: Nagle's wait for an ACK cost 40 ms per request.
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            _Link(client, upstream).start()


class _Link:
    """One proxied connection: two pumps; the second to finish closes both sockets."""

    def __init__(self, client: socket.socket, upstream: socket.socket) -> None:
        self._sockets = (client, upstream)
        self._lock = threading.Lock()
        self._running = 2

    def start(self) -> None:
        client, upstream = self._sockets
        for source, target in ((client, upstream), (upstream, client)):
            threading.Thread(target=self._pump, args=(source, target), daemon=True).start()

    def _pump(self, source: socket.socket, target: socket.socket) -> None:
        try:
            while data := source.recv(BUFFER):
                target.sendall(data)
        except OSError:
            pass  # the other side went away: the connection ends
        with contextlib.suppress(OSError):
            target.shutdown(socket.SHUT_WR)
        with self._lock:
            self._running -= 1
            last = self._running == 0
        if last:
            for sock in self._sockets:
                sock.close()


def _reset(sock: socket.socket) -> None:
    # SO_LINGER with a zero timeout makes close() send RST: the peer fails at once, never waits.
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    sock.close()
