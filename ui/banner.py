"""The sync banner in every page's header: the truth about what has reached the cloud.

It shows online / offline / degraded (or not linked), the changes waiting by priority, the last
successful sync in the hospital's local time, whether the station's clock can be trusted, whether the
validation data is still fresh, and how many things wait for a person (a link to /review), with a
"Sync now" button. It is read through the sync service (`status()`, a few indexed counts) in a worker
thread every few seconds, never on the event loop.
"""

from datetime import datetime
from typing import TYPE_CHECKING

from nicegui import ui

from ui import receipts
from ui.offloop import off_loop
from ui.session import current_station, sync_service

if TYPE_CHECKING:
    from sync.status import BannerStatus

REFRESH_S = 3.0  # the banner's timer (timers are never faster than 1 s)

CONNECTIVITY_TEXT = {
    "online": ("Online", "green-7", "cloud_done"),
    "offline": ("Offline: working on this station", "orange-8", "cloud_off"),
    "degraded": ("Connection poor", "amber-8", "cloud_queue"),
    "not_linked": ("Not linked to a cloud", "grey-7", "link_off"),
    "unknown": ("Checking the connection…", "grey-7", "cloud_sync"),
}
PRIORITY_TEXT = {
    "critical_treatment": "treatments started",
    "completed_treatment": "finalised treatments",
    "applicator_removal": "removals",
    "new_applicator": "new applicators",
    "routine": "other changes",
}


def sync_banner() -> None:
    """Draw the banner and keep it current while the page is open.

    It fits one header line on a 1280 px OR laptop: the connection chip, then two lines of text (what
    waits and what needs a person; the clock, the validation data and the last sync, smaller), then
    "Sync now". The text lines never wrap; when a long warning does not fit, it is cut with an ellipsis
    and said in full in its tooltip, and the header keeps its height (the patient bar never moves).
    """
    with (
        ui.row()
        .classes("items-center gap-3 flex-nowrap min-w-0 flex-1")
        .props("data-testid=sync-banner") as row
    ):
        state = ui.chip("Checking the connection…", icon="cloud_sync", color="grey-7").props(
            "data-testid=banner-connectivity text-color=white"
        )
        state.classes("shrink-0")
        with ui.column().classes("gap-0 min-w-0 flex-1 leading-tight"):
            with ui.row().classes("items-baseline gap-3 flex-nowrap min-w-0 w-full"):
                waiting = (
                    ui.label("").classes("text-base truncate min-w-0").props("data-testid=banner-waiting")
                )
                review = (
                    ui.link("", "/review")
                    .classes("text-base font-bold text-yellow-300 whitespace-nowrap shrink-0")
                    .props("data-testid=banner-needs-person")
                )
            with ui.row().classes("items-baseline gap-3 flex-nowrap min-w-0 w-full text-sm"):
                clock = ui.label("").classes("whitespace-nowrap shrink-0").props("data-testid=banner-clock")
                cache = ui.label("").classes("truncate min-w-0").props("data-testid=banner-cache")
                last = (
                    ui.label("").classes("whitespace-nowrap shrink-0").props("data-testid=banner-last-sync")
                )
        sync_button = ui.button("Sync now", icon="sync").props(
            "data-testid=sync-now color=white text-color=black no-caps"
        )
        sync_button.classes("text-base min-h-[44px] shrink-0")

    async def refresh() -> None:
        status = await read_status()
        if status is None or row.is_deleted:
            return
        _show(status, state, waiting, last, clock, cache, review, sync_button)
        await receipts.refresh_page_receipts()

    async def sync_now() -> None:
        service = sync_service()
        if service is None:
            ui.notify("This station is not linked to a cloud: everything stays saved here.", type="warning")
            return
        sync_button.disable()
        sync_button.props("loading")
        try:
            report = await service.sync_now()
        finally:
            sync_button.props(remove="loading")
            sync_button.enable()
        outcome = str(getattr(report, "outcome", "ok"))
        if outcome == "ok":
            ui.notify(f"Synced: {report.sent} change(s) sent, {report.pulled} received.", type="positive")
        else:
            error = getattr(report, "error", None) or outcome
            ui.notify(f"The sync did not complete ({outcome}): {error}. Nothing is lost.", type="warning")
        await refresh()

    sync_button.on_click(sync_now)
    ui.timer(REFRESH_S, refresh)
    ui.timer(0.1, refresh, once=True)


async def read_status() -> "BannerStatus | None":
    """The banner's figures, read off the event loop."""
    service = sync_service()
    if service is not None:
        return await off_loop(service.status)
    from sync.monitor import Connectivity
    from sync.status import read_banner

    return await off_loop(read_banner, current_station(), Connectivity.UNKNOWN)


def _show(
    status: "BannerStatus",
    state: ui.chip,
    waiting: ui.label,
    last: ui.label,
    clock: ui.label,
    cache: ui.label,
    review: ui.link,
    sync_button: ui.button,
) -> None:
    text, color, icon = CONNECTIVITY_TEXT.get(str(status.connectivity), CONNECTIVITY_TEXT["unknown"])
    state.text = text
    state.props(f"color={color} icon={icon}")
    _set_text(waiting, _waiting_text(status), title=_waiting_detail(status))
    _set_text(last, f"Last sync: {_local(status.last_success_at)}")
    if status.clock_offset_ms is None:
        _set_text(clock, "Clock: not checked yet")
    elif status.clock_unreliable:
        _set_text(clock, f"Clock off by {abs(status.clock_offset_ms) / 1000:.0f} s: check the laptop's time")
    else:
        _set_text(clock, "Clock OK")
    cache_text = _cache_text(status)
    _set_text(cache, cache_text, title=cache_text)  # the tooltip says it in full when it is cut
    if status.needs_person:
        review.text = f"{status.needs_person} need a person"
        review.set_visibility(True)
    else:
        review.text = ""
        review.set_visibility(False)
    sync_button.set_visibility(str(status.connectivity) != "not_linked")


def _set_text(label: ui.label, text: str, *, title: str | None = None) -> None:
    """Change a label only when its text changes: every refresh (3 s) would otherwise send it again."""
    if label.text != text:
        label.text = text
    if title is not None and label.props.get("title") != title:
        label.props(f'title="{title}"')


def _waiting_text(status: "BannerStatus") -> str:
    if status.waiting_total == 0:
        return "Nothing waiting"
    parts = [f"{n} {PRIORITY_TEXT.get(label, label)}" for label, n in status.waiting_by_priority.items() if n]
    return f"{status.waiting_total} waiting ({', '.join(parts)})"


def _waiting_detail(status: "BannerStatus") -> str:
    return "; ".join(f"{PRIORITY_TEXT.get(k, k)}: {n}" for k, n in status.waiting_by_priority.items())


def _cache_text(status: "BannerStatus") -> str:
    kinds = status.cache.values()
    if all(c.bundle_version is None for c in kinds):
        return "No validation data yet"
    stale = [c.kind for c in kinds if not c.fresh]
    if stale:
        return f"Validation data out of date ({', '.join(stale)}): scans ask to confirm"
    soonest = min((c.valid_until for c in kinds if c.valid_until), default=None)
    return f"Validation data valid until {_local(soonest)}"


def _local(moment: datetime | None) -> str:
    """A stored UTC time in the hospital's zone (station settings)."""
    if moment is None:
        return "never"
    station = current_station()
    local = moment.astimezone(station.settings.zone)
    if local.date() == station.local_today():
        return f"{local:%H:%M}"
    return f"{local:%d %b %H:%M}"
