"""A TCP proxy on loopback between a station and the cloud that misbehaves on purpose, per HTTP request.

It reads each request whole (head and body, by Content-Length), then, chosen at random from a
seeded generator, either forwards it and its answer untouched or does one of these faults:

| fault | what the station sees | did the cloud do the work? |
|---|---|---|
| `drop` | the connection closes (FIN) with no answer | no: the request was never forwarded |
| `delay` | request and answer each held back 50 to 400 ms | yes |
| `reset` | the connection is reset (RST: SO_LINGER 0), before or after the cloud answered | no / yes |
| `truncate_request` | part of the request reaches the cloud, then both connections close | no |
| `truncate_response` | the answer stops part way, then the connection closes | yes |

`heal()` stops the faults; `counts` says how many of each really happened. For tests that must act
while a push is inside the cloud, `wait_for_push()` returns once a push request has been forwarded
and is not answered yet, and `push_in_flight` says whether that is still so.

The proxy runs an asyncio loop in its own thread. Answers are read whole before they are passed
on (by Content-Length, or chunk by chunk), which is all the cloud's HTTP/1.1 answers need.
"""

import asyncio
import contextlib
import random
import socket
import struct
import threading
import time
from collections import Counter
from types import TracebackType

FAULTS = ("drop", "delay", "reset", "truncate_request", "truncate_response")
DELAY_S = (0.05, 0.4)
PUSH_PATH = b"/api/v1/sync/push"
START_TIMEOUT_S = 10


class FaultProxy:
    def __init__(self, upstream_port: int, *, seed: int, fault_rate: float = 0.35) -> None:
        self.upstream_port = upstream_port
        self.fault_rate = fault_rate
        self.counts: Counter[str] = Counter()  # each fault done, and "passed"
        self.push_latencies: list[float] = []
        self._rng = random.Random(seed)
        self._pushes = threading.Condition()
        self._in_flight = 0
        self._loop = asyncio.new_event_loop()
        self._ready = threading.Event()
        self._server: asyncio.Server | None = None
        self._thread = threading.Thread(target=self._run, name="fault-proxy", daemon=True)
        self.port = 0

    # --- the test's side ----------------------------------------------------------------------
    def __enter__(self) -> "FaultProxy":
        self._thread.start()
        if not self._ready.wait(START_TIMEOUT_S):
            raise RuntimeError("the fault proxy did not start")
        return self

    def __exit__(
        self, kind: type[BaseException] | None, error: BaseException | None, trace: TracebackType | None
    ) -> None:
        asyncio.run_coroutine_threadsafe(self._shutdown(), self._loop).result(START_TIMEOUT_S)
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(START_TIMEOUT_S)
        self._loop.close()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def heal(self) -> None:
        self.fault_rate = 0.0

    @property
    def push_in_flight(self) -> bool:
        with self._pushes:
            return self._in_flight > 0

    def wait_for_push(self, timeout: float) -> bool:
        """Whether a push is forwarded and unanswered now, waiting up to `timeout` for one."""
        with self._pushes:
            return self._pushes.wait_for(lambda: self._in_flight > 0, timeout)

    # --- the proxy's loop ---------------------------------------------------------------------
    def _run(self) -> None:
        asyncio.set_event_loop(self._loop)
        self._server = self._loop.run_until_complete(asyncio.start_server(self._serve, "127.0.0.1", 0))
        self.port = self._server.sockets[0].getsockname()[1]
        self._ready.set()
        self._loop.run_forever()

    async def _shutdown(self) -> None:
        assert self._server is not None
        self._server.close()
        tasks = [t for t in asyncio.all_tasks() if t is not asyncio.current_task()]
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)

    def _choose(self) -> str:
        # Both draws every time, so the sequence of choices depends on the seed alone.
        faulty, fault = self._rng.random() < self.fault_rate, self._rng.choice(FAULTS)
        return fault if faulty else "passed"

    async def _serve(self, client_reader: asyncio.StreamReader, client: asyncio.StreamWriter) -> None:
        upstream_reader: asyncio.StreamReader | None = None
        upstream: asyncio.StreamWriter | None = None
        try:
            while True:
                request = await _message(client_reader, request=True)
                if request is None:
                    return  # the station closed its keep-alive connection
                fault = self._choose()
                if fault == "drop":
                    self.counts[fault] += 1
                    return
                if fault == "reset" and self._rng.random() < 0.5:
                    _reset(client)
                    self.counts["reset"] += 1
                    return
                if upstream is None or upstream_reader is None:
                    upstream_reader, upstream = await asyncio.open_connection("127.0.0.1", self.upstream_port)
                if fault == "truncate_request":
                    upstream.write(request[: self._rng.randrange(1, len(request))])
                    await upstream.drain()
                    self.counts[fault] += 1
                    return
                if fault == "delay":
                    await asyncio.sleep(self._rng.uniform(*DELAY_S))
                answer = await self._exchange(request, upstream, upstream_reader)
                if answer is None:
                    return  # the cloud went away without answering
                if fault == "reset":
                    _reset(client)
                    self.counts["reset"] += 1
                    return
                if fault == "truncate_response":
                    client.write(answer[: self._rng.randrange(1, len(answer))])
                    await client.drain()
                    self.counts[fault] += 1
                    return
                if fault == "delay":
                    await asyncio.sleep(self._rng.uniform(*DELAY_S))
                client.write(answer)
                await client.drain()
                self.counts[fault] += 1
        except (ConnectionError, asyncio.IncompleteReadError, OSError):
            return  # either side went away: the other side is closed below
        finally:
            for writer in (client, upstream):
                if writer is not None and not writer.transport.is_closing():
                    writer.close()

    async def _exchange(
        self, request: bytes, upstream: asyncio.StreamWriter, upstream_reader: asyncio.StreamReader
    ) -> bytes | None:
        is_push = request.split(b" ", 2)[1] == PUSH_PATH
        with self._pushes:
            self._in_flight += is_push
            self._pushes.notify_all()
        started = time.monotonic()
        try:
            upstream.write(request)
            await upstream.drain()
            answer = await _message(upstream_reader, request=False)
        finally:
            with self._pushes:
                self._in_flight -= is_push
        if is_push and answer is not None:
            self.push_latencies.append(time.monotonic() - started)
        return answer


async def _message(reader: asyncio.StreamReader, *, request: bool) -> bytes | None:
    """One whole HTTP/1.1 message, or None when the peer closed before sending any byte of it."""
    try:
        head = await reader.readuntil(b"\r\n\r\n")
    except asyncio.IncompleteReadError as exc:
        if not exc.partial:
            return None
        raise
    headers = {}
    for line in head.split(b"\r\n")[1:]:
        name, _, value = line.partition(b":")
        headers[name.strip().lower()] = value.strip().lower()
    if b"content-length" in headers:
        return head + await reader.readexactly(int(headers[b"content-length"]))
    if headers.get(b"transfer-encoding") == b"chunked":
        body = b""
        while True:
            size_line = await reader.readuntil(b"\r\n")
            chunk = await reader.readexactly(int(size_line.split(b";")[0], 16) + 2)
            body += size_line + chunk
            if size_line.startswith(b"0"):
                return head + body
    return head if request else head + await reader.read()


def _reset(writer: asyncio.StreamWriter) -> None:
    """Close with RST instead of FIN: SO_LINGER on with a zero timeout, then close at once."""
    sock = writer.get_extra_info("socket")
    with contextlib.suppress(OSError):
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    writer.transport.abort()
