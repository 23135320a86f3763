"""One sync round of a station: clock, pull, push, bundle (docs/sync-protocol.md).

The order is the architecture's ("Order on the station"):

1. measure the offset to the cloud's clock (GET /api/v1/time) and keep it in device_state, so every
   change made from then on carries it (invariant 8);
2. pull: the cloud's changes page by page; each page is committed with its cursor in one
   transaction (invariant 4), merged with local changes not sent yet by the shared rules;
3. push: open queue entries by priority and age, never before an entry they depend on, in
   batches; each answer recorded (done, retried later with backoff, quarantined, or needing a
   person after too many attempts). A quarantined entry holds back only what depends on it
   (invariant 6);
4. the validation bundle, when the cached one is older than the interval (checksum verified; a
   damaged one leaves the previous one installed).

The engine is synchronous: the scheduler runs `run_round` in a worker thread, never on the UI's
event loop. Being offline is normal in an operating room: it ends the round with outcome
`offline` (logged at WARNING), and the next round starts again from what was committed.
"""

import heapq
import logging
import random
import threading
import time
from collections.abc import Iterator, Mapping, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from enum import StrEnum
from typing import Any

import httpx
from pydantic import ValidationError

from store import incidents, remote
from store.enums import QueueStatus
from store.station import Station
from store.validation_cache import BundleRejected, install_bundle
from sync.audit_upload import AuditOutcome, upload_audit
from sync.client import CloudFailed, Offline, ProtocolMismatch, Refused, SyncClient, SyncError, Unauthorised
from sync.protocol import (
    PULL_DEFAULT_LIMIT,
    PULL_MAX_LIMIT,
    RETRYABLE_CODES,
    Code,
    Operation,
    OpResult,
    PullChange,
    PushReply,
)
from sync.wire import operation

log = logging.getLogger(__name__)

SENDABLE = (QueueStatus.PENDING.value, QueueStatus.IN_FLIGHT.value)
DEPENDENCY_CODES = frozenset({Code.DEPENDENCY_MISSING, Code.DEPENDENCY_REJECTED})


class Outcome(StrEnum):
    OK = "ok"
    OFFLINE = "offline"  # no answer from the cloud: nothing lost, the next round goes on
    UNAUTHORISED = "unauthorised"  # the credential was refused: enrol the station again
    OUTDATED = "outdated"  # the cloud does not speak this station's protocol: update the station
    REFUSED = "refused"  # the cloud refused a request as a whole
    NOT_LINKED = "not_linked"  # no cloud or credential configured (or another device's)
    BUSY = "busy"  # a round of this engine is already running
    FAILED = "failed"  # an unexpected error, logged with its traceback


@dataclass(frozen=True)
class SyncSettings:
    batch_size: int = 50
    page_size: int = PULL_DEFAULT_LIMIT
    max_window: int = PULL_MAX_LIMIT  # changes held together while rows point at a later page
    max_attempts: int = 8  # retryable rejections before an entry needs a person
    backoff_base: timedelta = timedelta(seconds=30)
    backoff_ceiling: timedelta = timedelta(hours=1)
    bundle_interval: timedelta = timedelta(hours=1)
    timeout_s: float = 30.0


@dataclass
class RoundReport:
    started_at: datetime
    outcome: Outcome = Outcome.OK
    error: str | None = None
    clock_offset_ms: int | None = None
    pages: int = 0
    pulled: int = 0  # changes received
    written: int = 0  # local records inserted or changed by them
    merged: int = 0  # records whose local changes not sent yet met the cloud's
    refused: int = 0  # cloud records this station's constraints refused (held for a person)
    cursor: int | None = None
    sent: int = 0
    push_exchange_s: float = 0.0  # the pushes' exchanges with the cloud, request out to answer in
    results: dict[str, int] = field(default_factory=dict)  # queue status after the answer -> entries
    waiting: int = 0  # open entries not sent: backing off, or behind an entry they depend on
    conflicts: int = 0  # conflict rows recorded or updated
    bundle: str | None = None  # the version installed, or why the previous one was kept; None: not due
    audit: AuditOutcome | None = None  # the audit upload after the push (its error never ends the round)
    finished_at: datetime | None = None

    def count(self, status: str, n: int = 1) -> None:
        self.results[status] = self.results.get(status, 0) + n


class SyncEngine:
    """Runs sync rounds for one station; `client` and `transport` are for tests and proxies."""

    def __init__(
        self,
        station: Station,
        *,
        settings: SyncSettings | None = None,
        client: SyncClient | None = None,
        transport: httpx.BaseTransport | None = None,
        rng: random.Random | None = None,
    ) -> None:
        self.station = station
        self.settings = settings or SyncSettings()
        self._client = client
        self._transport = transport
        self._rng = rng or random.Random()
        self._running = threading.Lock()

    def run_round(self) -> RoundReport:
        """One round; never raises: the report says how it ended (and sync_state remembers it)."""
        if not self._running.acquire(blocking=False):
            return RoundReport(started_at=self.station.now(), outcome=Outcome.BUSY)
        try:
            return self._round()
        except Exception as exc:
            # The station's own sync state could not be read or written: the next round tries again.
            log.exception("sync round failed before it could be recorded")
            error = f"{type(exc).__name__}: {exc}"
            return RoundReport(started_at=self.station.now(), outcome=Outcome.FAILED, error=error)
        finally:
            self._running.release()

    def _round(self) -> RoundReport:
        report = RoundReport(started_at=self.station.now())
        state = remote.load_state(self.station)
        problem = self._link_problem(state)
        if problem is not None:
            report.outcome, report.error = Outcome.NOT_LINKED, problem
        else:
            self._exchange(state, report)
        report.finished_at = self.station.now()
        remote.record_round(self.station, at=report.started_at, error=report.error)
        return report

    def _exchange(self, state: remote.SyncStatus, report: RoundReport) -> None:
        try:
            with self._connect(state) as client:
                self._measure_clock(client, report)
                self._pull(client, report)
                self._push(client, report)
                report.audit = upload_audit(self.station, client)
                self._refresh_bundle(client, report)
        except Offline as exc:
            _ended(report, Outcome.OFFLINE, exc)
        except Unauthorised as exc:
            _ended(report, Outcome.UNAUTHORISED, exc)
        except ProtocolMismatch as exc:
            _ended(report, Outcome.OUTDATED, exc)
        except Refused as exc:
            _ended(report, Outcome.REFUSED, exc)
        except SyncError as exc:
            _ended(report, Outcome.FAILED, exc)
        except Exception as exc:
            # A bug or a broken database: loud, but the next round still runs.
            log.exception("sync round failed")
            report.outcome, report.error = Outcome.FAILED, f"{type(exc).__name__}: {exc}"

    def _link_problem(self, state: remote.SyncStatus) -> str | None:
        if self._client is None and not state.linked:
            return "This station is not linked to a cloud yet (no address or device credential)."
        if state.cloud_device_id not in (None, self.station.device_id):
            return (
                f"The stored credential belongs to device {state.cloud_device_id}, but this station is "
                f"{self.station.device_id}; enrol this station again."
            )
        return None

    @contextmanager
    def _connect(self, state: remote.SyncStatus) -> Iterator[SyncClient]:
        if self._client is not None:
            yield self._client
            return
        assert state.cloud_url is not None and state.credential is not None
        with SyncClient(
            state.cloud_url, state.credential, timeout_s=self.settings.timeout_s, transport=self._transport
        ) as client:
            yield client

    # --- 1. the clock ------------------------------------------------------------------------------
    def _measure_clock(self, client: SyncClient, report: RoundReport) -> None:
        before = self.station.now()
        server = client.server_time()
        after = self.station.now()
        # The server read its clock about halfway through the exchange.
        offset = server - (before + (after - before) / 2)
        report.clock_offset_ms = round(offset.total_seconds() * 1000)
        remote.save_clock_offset(self.station, report.clock_offset_ms)

    # --- 2. pull -----------------------------------------------------------------------------------
    def _pull(self, client: SyncClient, report: RoundReport) -> None:
        cursor = remote.load_state(self.station).pull_cursor
        window: list[PullChange] = []
        fetch_from = cursor
        while True:
            reply = client.pull(fetch_from, self.settings.page_size)
            report.pages += 1
            window += reply.changes
            if window or reply.next_cursor != cursor:
                try:
                    page = remote.apply_pulled(
                        self.station, window, cursor=cursor, next_cursor=reply.next_cursor
                    )
                except remote.ParentsMissing:
                    # Rows here point at records a later page brings: commit them together.
                    if not reply.has_more or len(window) >= self.settings.max_window:
                        raise
                    fetch_from = reply.next_cursor
                    continue
                _add_page(report, page, len(window))
            cursor = fetch_from = reply.next_cursor
            window = []
            if not reply.has_more:
                break
        report.cursor = cursor

    # --- 3. push -----------------------------------------------------------------------------------
    def _push(self, client: SyncClient, report: RoundReport) -> None:
        """The open entries in batches, one push at a time, pipelined (docs/performance.md,
        sync_catchup): while the cloud works on batch k, this thread loads batch k+1 and, in one
        transaction, writes batch k-1's answers and marks batch k+1 sent; when k's answers come,
        batch k+1 leaves at once. So every batch is durably marked sent before it leaves, the
        cloud applies it after the one before, and an entry behind one that did not take effect
        (known from every earlier batch's answers) is held back, and marked back if it was marked."""
        # A stuck applicator that became INSERTED or FAULTY since: its incident goes out this round.
        incidents.raise_pending(self.station)
        # Scheduled on the entries' scheduling fields; each batch is loaded whole only when it is next.
        order, report.waiting = push_order(remote.open_schedule(self.station), self.station.now())
        size = self.settings.batch_size
        batches = [order[start : start + size] for start in range(0, len(order), size)]
        not_done: set[str] = set()  # entries of this round that did not take effect
        answered: list[remote.Verdict] = []  # the answers of the batch before, not written yet
        with _Courier(client) as courier:
            marked = self._next(batches, 0, not_done, report)
            if marked:
                remote.mark_sent(self.station, [e["op_id"] for e, _ in marked], at=self.station.now())
            for index in range(len(batches)):
                going, held = _unheld(marked, not_done, report)
                entries = [entry for entry, _ in going]
                if going:
                    courier.send(
                        [op for _, op in going], device_seq_high=max(e["device_seq"] for e in entries)
                    )
                following = self._next(batches, index + 1, not_done, report)
                self._record(answered, report, sending=following, not_sent=held)
                answered, marked = [], following
                if going:
                    answers = self._answers(courier, entries, [e for e, _ in following], report)
                    answered = self._verdicts(entries, answers, not_done)
            self._record(answered, report)

    def _next(
        self, batches: Sequence[Sequence[dict[str, Any]]], index: int, not_done: set[str], report: RoundReport
    ) -> list[tuple[dict[str, Any], dict[str, Any]]]:
        """Batch `index` loaded whole, each entry with its operation: those that cannot be put on the
        wire are quarantined, those behind an entry that did not take effect wait (empty past the end)."""
        if index >= len(batches):
            return []
        entries = remote.load_entries(self.station, [e["op_id"] for e in batches[index]])
        going, _ = _unheld(self._on_the_wire(entries, not_done, report), not_done, report)
        return going

    def _on_the_wire(
        self, entries: Sequence[dict[str, Any]], not_done: set[str], report: RoundReport
    ) -> list[tuple[dict[str, Any], dict[str, Any]]]:
        """The entries with their operations; one that cannot be put on the wire is quarantined here."""
        loaded = []
        for entry in entries:
            try:
                if entry["site"] is None:
                    raise ValueError("the record's treatment is not on this station, so its site is unknown")
                op = Operation.model_validate(operation(self.station.cipher, entry, entry["site"]))
            except (ValidationError, ValueError) as exc:
                remote.quarantine_unsendable(self.station, entry, f"not sent: {exc}", at=self.station.now())
                not_done.add(entry["op_id"])
                report.count(QueueStatus.QUARANTINED.value)
                continue
            loaded.append((entry, op.model_dump(mode="json")))
        return loaded

    def _answers(
        self,
        courier: "_Courier",
        entries: list[dict[str, Any]],
        marked: list[dict[str, Any]],
        report: RoundReport,
    ) -> list[OpResult]:
        """The cloud's answers to the batch at the cloud, in its order. Without an answer the round
        ends with the error: the batch's entries wait as they were (still marked sent: they may have
        reached the cloud), the next batch (`marked`) never left and is marked back."""
        op_ids = [e["op_id"] for e in entries]
        try:
            return _in_order(op_ids, courier.answer().results)
        except Exception:
            remote.release(self.station, op_ids, not_sent=marked)
            raise
        finally:
            report.push_exchange_s = courier.exchange_s

    def _verdicts(
        self, entries: list[dict[str, Any]], answers: Sequence[OpResult], not_done: set[str]
    ) -> list[remote.Verdict]:
        """What becomes of each sent entry; those that did not take effect hold back their dependents."""
        now = self.station.now()
        verdicts = []
        for entry, answer in zip(entries, answers, strict=True):
            verdict = self.verdict(entry, answer, now, behind=not_done)
            verdicts.append(verdict)
            if verdict.status is not QueueStatus.DONE:
                not_done.add(entry["op_id"])
        return verdicts

    def _record(
        self,
        verdicts: list[remote.Verdict],
        report: RoundReport,
        *,
        sending: Sequence[tuple[dict[str, Any], dict[str, Any]]] = (),
        not_sent: Sequence[dict[str, Any]] = (),
    ) -> None:
        """One transaction: a batch's answers, the next batch marked sent, held entries marked back."""
        if not (verdicts or sending or not_sent):
            return
        counts = remote.record_results(
            self.station,
            verdicts,
            at=self.station.now(),
            sending=[entry["op_id"] for entry, _ in sending],
            not_sent=not_sent,
        )
        report.sent += len(verdicts)
        report.conflicts += counts.conflicts
        report.refused += counts.refused
        for status, n in counts.by_status.items():
            report.count(status, n)

    def verdict(
        self, entry: Mapping[str, Any], answer: OpResult, now: datetime, *, behind: set[str] | None = None
    ) -> remote.Verdict:
        """What becomes of an entry after the cloud's answer (docs/sync-protocol.md, "Result").

        `behind`: entries of this round that did not take effect. An entry refused only because it
        came in one batch after one of them is not the entry's own failure: it waits, uncounted,
        and the next round holds it back until its dependency takes effect.
        """
        stored = answer.model_dump(mode="json", exclude_none=True)
        result = answer.original if answer.status == "duplicate" and answer.original else answer
        if result.status != "rejected":
            return remote.Verdict(entry, QueueStatus.DONE, result, stored, entry["attempts"])
        if result.code in DEPENDENCY_CODES and (behind or set()).intersection(entry["depends_on"]):
            return remote.Verdict(entry, QueueStatus.PENDING, result, stored, entry["attempts"])
        attempts = entry["attempts"] + 1
        # A duplicate's rejection was final when it was first given (retryable ones are not kept).
        if answer.status == "duplicate" or result.code not in RETRYABLE_CODES:
            return remote.Verdict(entry, QueueStatus.QUARANTINED, result, stored, attempts)
        if attempts >= self.settings.max_attempts:
            return remote.Verdict(entry, QueueStatus.NEEDS_PERSON, result, stored, attempts)
        retry_at = now + self.backoff(attempts)
        return remote.Verdict(entry, QueueStatus.PENDING, result, stored, attempts, retry_at)

    def backoff(self, attempts: int) -> timedelta:
        """Exponential with a ceiling, and jitter so that laptops back online together spread out."""
        ceiling = self.settings.backoff_ceiling.total_seconds()
        delay = min(ceiling, self.settings.backoff_base.total_seconds() * 2 ** (attempts - 1))
        return timedelta(seconds=delay * (0.5 + self._rng.random() / 2))

    # --- 4. the validation bundle ------------------------------------------------------------------
    def _refresh_bundle(self, client: SyncClient, report: RoundReport) -> None:
        now = self.station.now()
        fetched = remote.bundle_fetched_at(self.station)
        if fetched is not None and now - fetched < self.settings.bundle_interval:
            return
        body = client.bundle()
        try:
            report.bundle = install_bundle(self.station, body)
        except (BundleRejected, KeyError, ValueError) as exc:
            # The previous bundle stays installed: scans keep being checked against it.
            log.warning("validation bundle not installed: %s", exc)
            report.bundle = f"kept the previous bundle: {exc}"
            return
        remote.record_bundle(self.station, at=now)


def push_order(entries: Sequence[dict[str, Any]], now: datetime) -> tuple[list[dict[str, Any]], int]:
    """The entries to send now, by priority and age but never before one they depend on, and how
    many open entries wait (backing off, quarantined, or behind such an entry)."""
    by_id = {e["op_id"]: e for e in entries}
    due = {
        op_id
        for op_id, e in by_id.items()
        if e["status"] in SENDABLE and (e["next_attempt_at"] is None or e["next_attempt_at"] <= now)
    }
    # A dependency no longer open is done; one open but not due holds its dependents back.
    blockers = {op_id: {d for d in by_id[op_id]["depends_on"] if d in by_id} for op_id in due}
    dependents: dict[str, list[str]] = {}
    for op_id, deps in blockers.items():
        for dep in deps:
            dependents.setdefault(dep, []).append(op_id)
    ready = [(_rank(by_id[op_id]), op_id) for op_id, deps in blockers.items() if not deps]
    heapq.heapify(ready)
    order: list[dict[str, Any]] = []
    while ready:
        _, op_id = heapq.heappop(ready)
        order.append(by_id[op_id])
        for child in dependents.get(op_id, []):
            blockers[child].discard(op_id)
            if not blockers[child]:
                heapq.heappush(ready, (_rank(by_id[child]), child))
    waiting = sum(1 for e in entries if e["status"] in SENDABLE) - len(order)
    return order, waiting


def _rank(entry: Mapping[str, Any]) -> tuple[int, datetime, int]:
    return entry["priority"], entry["created_at"], entry["device_seq"]


def _unheld(
    loaded: list[tuple[dict[str, Any], dict[str, Any]]], not_done: set[str], report: RoundReport
) -> tuple[list[tuple[dict[str, Any], dict[str, Any]]], list[dict[str, Any]]]:
    """The entries that may go now, and those behind an entry that did not take effect this round
    (they wait for the next round, as do their own dependents)."""
    going, held = [], []
    for entry, op in loaded:
        if not_done.intersection(entry["depends_on"]):
            report.waiting += 1
            not_done.add(entry["op_id"])
            held.append(entry)
        else:
            going.append((entry, op))
    return going, held


def _in_order(op_ids: Sequence[str], results: Sequence[OpResult]) -> list[OpResult]:
    answered = [r.op_id for r in results]
    if answered != list(op_ids):
        raise CloudFailed(f"the cloud answered other operations than were sent (first: {answered[:1]})")
    return list(results)


class _Courier:
    """Carries one push at a time to the cloud in a thread of its own, so that the round's thread can
    write the previous batch's answers meanwhile (the HTTP wait releases the GIL)."""

    def __init__(self, client: SyncClient) -> None:
        self._client = client
        self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="sync-push")
        self._reply: Future[PushReply] | None = None
        self.exchange_s = 0.0  # the pushes so far, request out to answer in (read after `answer`)

    def __enter__(self) -> "_Courier":
        return self

    def __exit__(self, *_: object) -> None:
        # A batch still on its way when the round stops (a failed write here) is left in flight:
        # the next round sends it again and the cloud's ledger answers with its first result.
        self._pool.shutdown(wait=True)

    def send(self, ops: list[dict[str, Any]], *, device_seq_high: int) -> None:
        assert self._reply is None, "one push at a time: the cloud applies a batch after the one before"
        self._reply = self._pool.submit(self._exchange, ops, device_seq_high)

    def _exchange(self, ops: list[dict[str, Any]], device_seq_high: int) -> PushReply:
        began = time.perf_counter()
        try:
            return self._client.push(ops, device_seq_high=device_seq_high)
        finally:
            self.exchange_s += time.perf_counter() - began

    def answer(self) -> PushReply:
        """The cloud's reply to the push on its way (its exception if it failed)."""
        assert self._reply is not None
        reply, self._reply = self._reply, None
        return reply.result()


def _add_page(report: RoundReport, page: remote.PageResult, received: int) -> None:
    report.pulled += received
    report.written += page.written
    report.merged += page.merged
    report.refused += page.refused
    report.conflicts += page.conflicts


def _ended(report: RoundReport, outcome: Outcome, exc: Exception) -> None:
    # Expected in an operating room (no network, a revoked laptop): a warning, not an error.
    log.warning("sync round ended %s: %s", outcome.value, exc)
    report.outcome, report.error = outcome, str(exc)
