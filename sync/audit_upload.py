"""Each sync round, after the push: the station's audit entries the cloud does not hold yet go up.

The architecture's audit log is append-only and hash-chained, and the cloud verifies each station's
chain on arrival (docs/sync-protocol.md, "Audit upload"). The station sends the entries above the
last one the cloud acknowledged, oldest first, in batches; the cloud answers with the last entry it
now holds, and only that answer moves the station's position (`store.audit_export`), in its own
transaction after the reply. A lost reply therefore re-sends the batch, which the cloud answers
again without storing anything twice.

Nothing here may hold up clinical sync: the upload runs after the push, and a refusal (a broken
chain), no network, or a bug ends the upload alone, reported in the round's `audit` outcome, while
the round goes on to the validation bundle.
"""

import logging
from dataclasses import dataclass
from typing import Any

import orjson

from store.audit_export import acknowledge, acknowledged_seq, entries_after
from store.station import Station
from sync.audit_protocol import MAX_AUDIT_BATCH
from sync.client import SyncClient, SyncError
from sync.protocol import PROTOCOL_VERSION

log = logging.getLogger(__name__)

MAX_BATCH_BYTES = 4 * 1024 * 1024  # well below the cloud's limit (sync.audit_protocol.MAX_AUDIT_BYTES)


@dataclass
class AuditOutcome:
    """What the round's audit upload did."""

    sent: int = 0  # entries sent (a batch re-sent after a lost reply counts again)
    acknowledged_seq: int = 0  # the last entry the cloud holds after this round
    error: str | None = None  # why the upload stopped before the newest entry; None: all are up


def upload_audit(
    station: Station,
    client: SyncClient,
    *,
    batch_size: int = MAX_AUDIT_BATCH,
    max_bytes: int = MAX_BATCH_BYTES,
) -> AuditOutcome:
    """Send every entry above the acknowledged one; never raises (the outcome says how it ended)."""
    outcome = AuditOutcome(acknowledged_seq=acknowledged_seq(station))
    try:
        _upload(station, client, outcome, batch_size, max_bytes)
    except SyncError as exc:
        # A refused chain (409), no network, an outdated station: clinical sync is not held up.
        log.warning("audit upload stopped: %s", exc)
        outcome.error = str(exc)
    except Exception as exc:
        log.exception("audit upload failed")
        outcome.error = f"{type(exc).__name__}: {exc}"
    return outcome


def _upload(
    station: Station, client: SyncClient, outcome: AuditOutcome, batch_size: int, max_bytes: int
) -> None:
    rewound = False
    while entries := entries_after(station, outcome.acknowledged_seq, batch_size):
        body, count = encode_batch(outcome.acknowledged_seq, entries, max_bytes)
        reply = client.upload_audit(body)
        outcome.sent += count
        held = reply.acknowledged_seq
        if held < outcome.acknowledged_seq and not rewound:
            # The cloud holds less than it once acknowledged (another cloud, a restored backup):
            # it stored nothing and said where it stands; send again from there (once a round).
            log.warning("the cloud holds this station's audit chain only up to %s; sending from there", held)
            rewound = True
        elif held <= outcome.acknowledged_seq:
            outcome.error = (
                f"the cloud answered that it holds the audit chain up to entry {held} after entries "
                f"{entries[0]['device_seq']}..{entries[count - 1]['device_seq']} were sent; stopped"
            )
            log.warning("audit upload stopped: %s", outcome.error)
            return
        acknowledge(station, held)
        outcome.acknowledged_seq = held


def encode_batch(acknowledged: int, entries: list[dict[str, Any]], max_bytes: int) -> tuple[bytes, int]:
    """The request body for the first entries that fit in `max_bytes` (at least one), and how many."""
    parts: list[bytes] = []
    size = 0
    for entry in entries:
        part = orjson.dumps(entry)  # every stored field as stored; datetimes in RFC 3339
        if parts and size + len(part) > max_bytes:
            break
        parts.append(part)
        size += len(part) + 1
    head = orjson.dumps({"protocol": PROTOCOL_VERSION, "acknowledged_seq": acknowledged})[:-1]
    return head + b',"entries":[' + b",".join(parts) + b"]}", len(parts)
