"""The dialog of a status move that needs more than a click: a comment, deployed seeds, "permanent".

The dialog asks only what the target status itself says it needs (`needs_comment`, FAULTY's deployed
seeds); every rule is the store's. The first save is made without the permanent confirmation, so
the store either refuses (its message is shown beside the form) or answers that the status is
permanent, in its own words, and the person confirms that in a second step.
"""

from collections.abc import Awaitable, Callable
from typing import Any

from nicegui import ui

from store.enums import ApplicatorStatus
from store.errors import ConfirmationRequired, StoreError
from ui.frame import BUTTON

# (comment, deployed seeds, confirm_permanent) -> the store's answer
Save = Callable[[str | None, int | None, bool], Awaitable[Any]]


async def status_dialog(applicator: dict[str, Any], target: ApplicatorStatus, save: Save) -> Any | None:
    """Collect what the move needs and save it; the saved change, or None when cancelled."""
    serial = applicator["serial_number"]
    capacity = applicator["seed_quantity"]
    with ui.dialog().props("persistent") as dialog, ui.card().classes("w-[40rem] max-w-full gap-4 p-6"):
        dialog.props("data-testid=status-dialog")
        ui.label(f"Applicator {serial}: {target.label}").classes("text-2xl font-bold")
        comment = None
        seeds = None
        if target is ApplicatorStatus.FAULTY:
            seeds = ui.number(
                f"Seeds deployed from this applicator (0 to {capacity})", min=0, max=capacity, precision=0
            ).props("outlined data-testid=status-deployed input-class=text-xl")
        if target.needs_comment:
            comment = ui.textarea(f"Why is the applicator {target.label.lower()}? (required)").props(
                "outlined autogrow data-testid=status-comment"
            )
        problem = ui.label().classes("text-lg text-red-800").props("data-testid=status-problem")
        permanent = (
            ui.label().classes("text-lg font-bold text-red-900 hidden").props("data-testid=status-permanent")
        )
        state = {"confirming": False}

        async def submit() -> None:
            problem.text = ""
            deployed = None if seeds is None or seeds.value is None else int(seeds.value)
            text = None if comment is None else comment.value
            try:
                change = await save(text, deployed, state["confirming"])
            except ConfirmationRequired as question:
                state["confirming"] = True
                permanent.text = question.message
                permanent.classes(remove="hidden")
                ok.text = f"Confirm: {target.label} (permanent)"
                return
            except StoreError as refusal:
                problem.text = refusal.message
                return
            dialog.submit(change)

        with ui.row().classes("w-full justify-end gap-4"):
            ui.button("Cancel", on_click=lambda: dialog.submit(None)).classes(BUTTON).props(
                "flat data-testid=status-cancel"
            )
            ok = (
                ui.button("Save", on_click=submit)
                .classes(BUTTON)
                .props(f"color={'negative' if target.is_terminal else 'primary'} data-testid=status-save")
            )
    dialog.open()
    change = await dialog
    dialog.delete()
    return change
