"""Real HTTP servers on loopback for tests: uvicorn in a thread, ready when it listens, always stopped."""

import socket
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import uvicorn


class _Server(uvicorn.Server):
    def __init__(self, config: uvicorn.Config) -> None:
        super().__init__(config)
        self.listening = threading.Event()

    async def startup(self, sockets: list[socket.socket] | None = None) -> None:
        await super().startup(sockets)
        self.listening.set()  # after the socket is bound: requests from now on are answered

    def install_signal_handlers(self) -> None:  # a thread cannot own signal handlers
        pass


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@contextmanager
def serve(app: Any, *, port: int | None = None, timeout_s: float = 30) -> Iterator[str]:
    """Serve an ASGI app on 127.0.0.1 and yield its base URL."""
    port = port or free_port()
    server = _Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning", lifespan="on"))
    thread = threading.Thread(target=server.run, name=f"uvicorn-{port}", daemon=True)
    thread.start()
    try:
        if not server.listening.wait(timeout_s):
            raise RuntimeError(f"the test server on port {port} did not start within {timeout_s} s")
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        thread.join(timeout_s)
