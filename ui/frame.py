"""The shared frame of every clinical page: header, sync banner, patient bar, screen lock, receipts.

```python
with frame("Insertion", treatment=summary):   # summary: store.treatments.treatment_summary(...)
    ...the page...
```

- The header shows the page title, the site, who is signed in, and the sync banner (ui/banner.py).
- With `treatment`, a bar under the header always shows the patient (name and id) and the treatment's
  site: the wrong-patient hazard (domain.md) is controlled by never letting them scroll out of view.
- After 15 idle minutes the screen locks (ui/lock.py); the page underneath stays as it was.
- `receipt_badge(table, record_id)` shows where a record stands: saved here, sent, confirmed by the cloud.
"""

from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from typing import Any

from nicegui import ui

from ui import banner, lock, receipts
from ui.session import current_session, touch

# Gloves and a scanner in one hand: every control is at least 48 px high, text is large.
BUTTON = "text-lg min-h-[48px] px-5"

receipt_badge = receipts.receipt_badge

# Any key or touch on the page tells the station someone is there (throttled: at most every 5 s).
_ACTIVITY_JS = """
<script>
(() => {
  let last = 0;
  const seen = () => {
    const now = Date.now();
    if (now - last > 5000) { last = now; emitEvent('dart_activity'); }
  };
  document.addEventListener('keydown', seen, true);
  document.addEventListener('pointerdown', seen, true);
})();
</script>
"""


@contextmanager
def frame(title: str, *, treatment: Mapping[str, Any] | None = None) -> Iterator[None]:
    """Draw the header (and the patient bar for a treatment), then the page's content below it."""
    ui.page_title(f"{title} · DaRT station")
    session = current_session()
    touch()
    signed_in = session is not None and session.actor is not None
    cover = lock.lock_screen(session) if session is not None and signed_in else None
    header = ui.header(elevated=True).classes("flex-col gap-0 p-0 bg-slate-800 text-white")
    # One line that never wraps, down to a 1280 px OR laptop: a wrapped header would push the patient
    # bar down; the banner in the middle gives up width first (ui/banner.py).
    keep = "whitespace-nowrap shrink-0"
    with header, ui.row().classes("w-full items-center gap-3 px-4 py-2 flex-nowrap"):
        ui.link("Today", "/today").classes(f"text-white text-lg no-underline font-bold {keep}").props(
            "data-testid=nav-today"
        )
        ui.label(title).classes(f"text-2xl font-semibold {keep}").props("data-testid=page-title")
        site = (treatment or {}).get("site") or (session.site if session else None)
        if site:
            ui.label(f"Site {site}").classes(f"text-lg {keep}").props("data-testid=header-site")
        banner.sync_banner()
        if session is not None and session.actor is not None:
            ui.label(session.actor.name).classes(f"text-lg {keep}").props("data-testid=header-user")
            if session.mode is not None and session.mode.value == "emergency":
                ui.badge("Emergency access", color="red").classes("text-base")
            assert cover is not None
            lock.header_controls(session, cover, in_procedure=treatment is not None)
    if treatment is not None:
        with header:
            _patient_bar(treatment)
    ui.add_body_html(_ACTIVITY_JS)
    ui.on("dart_activity", lambda: touch())
    with ui.column().classes("w-full max-w-screen-xl mx-auto p-4 gap-4"):
        yield


def _patient_bar(treatment: Mapping[str, Any]) -> None:
    """Patient name, patient id and site of the treatment, pinned under the header."""
    name = treatment.get("patient_label") or "Name not recorded"
    subject = treatment.get("subject_id") or "?"
    kind = str(treatment.get("type") or "treatment")
    with (
        ui.row()
        .classes(
            "w-full items-center gap-6 bg-amber-100 text-slate-900 px-4 py-2 border-b-4 border-amber-500"
        )
        .props("data-testid=patient-bar")
    ):
        ui.icon("person", size="md")
        ui.label(f"Patient: {name}").classes("text-xl font-bold").props("data-testid=patient-name")
        ui.label(f"ID {subject}").classes("text-xl").props("data-testid=patient-id")
        ui.label(f"Site {treatment.get('site', '?')}").classes("text-xl").props("data-testid=patient-site")
        ui.label(f"{kind.capitalize()} · {treatment.get('date', '')}").classes("text-lg")
