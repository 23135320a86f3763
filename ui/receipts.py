"""The per-record receipt: saved here, sent, confirmed by the cloud, or waiting for a person.

`receipt_badge(table, record_id)` draws a small badge where a record is shown. All badges of a page are
refreshed together, in one worker-thread call, each time the sync banner refreshes (every few
seconds), so a page with two hundred applicators costs one read, not two hundred timers.
"""

import weakref
from collections.abc import Callable

from nicegui import ui

from ui.offloop import off_loop
from ui.session import current_station, sync_service

RECEIPT_TEXT = {
    "saved_here": ("Saved here", "blue-grey-6", "save"),
    "sent": ("Sent", "blue-7", "cloud_upload"),
    "confirmed": ("Confirmed by the cloud", "green-7", "cloud_done"),
    "needs_person": ("Needs a person", "red-7", "report"),
}

# client id -> its badges (weak: a badge removed with its row is forgotten)
_badges: dict[str, "weakref.WeakSet[ReceiptBadge]"] = {}


class ReceiptBadge(ui.chip):
    """A receipt chip that knows its record."""

    def __init__(self, table: str, record_id: str) -> None:
        super().__init__("Saved here", icon="save", color="blue-grey-6")
        self.table = table
        self.record_id = record_id
        self.receipt: str | None = None
        self.props(f"dense text-color=white data-testid=receipt-{record_id}")

    def show(self, receipt: str) -> None:
        if receipt == self.receipt:
            return
        text, color, icon = RECEIPT_TEXT.get(receipt, (receipt, "grey-7", "help"))
        self.receipt = receipt
        self.text = text
        self.props(f"color={color} icon={icon}")


def receipt_badge(table: str, record_id: str) -> ReceiptBadge:
    """A badge showing where this record stands; kept current while the page is open."""
    badge = ReceiptBadge(table, record_id)
    client = ui.context.client
    if client.id not in _badges:
        _badges[client.id] = weakref.WeakSet()
        client.on_delete(lambda: _badges.pop(client.id, None))
    _badges[client.id].add(badge)
    ui.timer(0.1, lambda: refresh_badges([badge]), once=True)
    return badge


async def refresh_page_receipts() -> None:
    """Refresh every badge of the current page (called by the banner's timer)."""
    badges = _badges.get(ui.context.client.id)
    if badges:
        await refresh_badges(list(badges))


async def refresh_badges(badges: list[ReceiptBadge]) -> None:
    live = [b for b in badges if not b.is_deleted]
    if not live:
        return
    keys = [(b.table, b.record_id) for b in live]
    found = await off_loop(_read_receipts, keys)
    for badge, receipt in zip(live, found, strict=True):
        if receipt is not None and not badge.is_deleted:
            badge.show(receipt)


def _read_receipts(keys: list[tuple[str, str]]) -> list[str | None]:
    read = _reader()
    found: list[str | None] = []
    for table, record_id in keys:
        try:
            found.append(str(read(table, record_id)))
        except LookupError:
            found.append(None)  # not on this station (yet): leave the badge as it is
    return found


def _reader() -> Callable[[str, str], object]:
    service = sync_service()
    if service is not None:
        return service.receipt
    from sync.status import read_receipt

    station = current_station()
    return lambda table, record_id: read_receipt(station, table, record_id)
