"""The per-record receipt: saved here, sent, confirmed by the cloud, or waiting for a person.

`receipt_badge(table, record_id)` draws a small badge where a record is shown. The badges of a page are
read together, in one worker-thread call and one read of the store (`sync.status.read_receipts`: a few
indexed queries, whatever the number of badges): once just after they are drawn (all the badges a page
drew at once in one read), then each time the sync banner refreshes (every few seconds). A badge whose
receipt did not change is not touched, so nothing goes to the browser for it.
"""

import weakref

from nicegui import background_tasks, ui

from sync.status import read_receipts
from ui.offloop import off_loop
from ui.session import current_station

RECEIPT_TEXT = {
    "saved_here": ("Saved here", "blue-grey-6", "save"),
    "sent": ("Sent", "blue-7", "cloud_upload"),
    "confirmed": ("Confirmed by the cloud", "green-7", "cloud_done"),
    "needs_person": ("Needs a person", "red-7", "report"),
}

# client id -> its badges (weak: a badge removed with its row is forgotten)
_badges: dict[str, "weakref.WeakSet[ReceiptBadge]"] = {}
# client id -> badges drawn since the last first read (one read for all of them)
_new: dict[str, list["ReceiptBadge"]] = {}


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
        client.on_delete(lambda: (_badges.pop(client.id, None), _new.pop(client.id, None)))
    _badges[client.id].add(badge)
    waiting = _new.setdefault(client.id, [])
    if not waiting:
        # Not a ui.timer per badge: a timer is an element, and adding one (and removing it when it has
        # run) changes its parent, which the browser re-renders; nor one read per badge.
        background_tasks.create(_first_read(client.id), name="first read of new receipts")
    waiting.append(badge)
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
    station = current_station()
    found = await off_loop(read_receipts, station, [(b.table, b.record_id) for b in live])
    for badge in live:
        receipt = found.get((badge.table, badge.record_id))
        if receipt is not None and not badge.is_deleted:  # None: not on this station (yet): leave it
            badge.show(str(receipt))


async def _first_read(client_id: str) -> None:
    # Runs when the page's handler next awaits: by then it has drawn all its badges of this pass.
    badges = _new.pop(client_id, [])
    if badges:
        await refresh_badges(badges)
