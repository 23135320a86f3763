"""One place on a page where the outcome of the last action is said in words, at once.

A scan at the operating table is answered here: green when it was recorded, amber when it was
recorded with something to check, red when it was stopped. The text stays until the next action,
so a clinician who looked away still reads it.
"""

from enum import StrEnum

from nicegui import ui


class Tone(StrEnum):
    DONE = "done"
    WARN = "warn"
    STOP = "stop"
    INFO = "info"


_STYLE = {
    Tone.DONE: ("check_circle", "bg-green-100 border-green-600 text-green-900"),
    Tone.WARN: ("warning", "bg-amber-100 border-amber-600 text-amber-900"),
    Tone.STOP: ("block", "bg-red-100 border-red-700 text-red-900"),
    Tone.INFO: ("info", "bg-sky-100 border-sky-600 text-sky-900"),
}


class Notice:
    """A titled message box that is replaced by each new outcome."""

    def __init__(self, testid: str = "notice") -> None:
        self.box = ui.row().classes("w-full items-start gap-3 p-3 border-l-8 rounded hidden")
        self.box.props(f"data-testid={testid} role=status aria-live=assertive")
        self.tone: Tone | None = None
        self.title = ""
        self.message = ""

    def show(self, tone: Tone, title: str, message: str = "") -> None:
        self.tone, self.title, self.message = tone, title, message
        icon, colours = _STYLE[tone]
        self.box.classes(replace=f"w-full items-start gap-3 p-3 border-l-8 rounded {colours}")
        self.box.clear()
        with self.box:
            ui.icon(icon, size="lg")
            with ui.column().classes("gap-1"):
                # Marked too: the User-fixture tests wait for a notice by marker and content.
                ui.label(title).classes("text-xl font-bold").props("data-testid=notice-title").mark(
                    "notice-title"
                )
                if message:
                    ui.label(message).classes("text-lg").props("data-testid=notice-message")

    def stop(self, title: str, message: str = "") -> None:
        self.show(Tone.STOP, title, message)

    def done(self, title: str, message: str = "") -> None:
        self.show(Tone.DONE, title, message)

    def clear(self) -> None:
        self.tone = None
        self.box.clear()
        self.box.classes(add="hidden")
