"""Questions a clinician must answer before the station goes on: confirm-and-continue dialogs."""

from nicegui import ui

from ui.frame import BUTTON


async def confirm(
    title: str, message: str, *, confirm_label: str, cancel_label: str = "Cancel", danger: bool = True
) -> bool:
    """Ask, wait for the answer, and say whether the person confirmed (closing the dialog is a no)."""
    with ui.dialog().props("persistent") as dialog, ui.card().classes("max-w-2xl gap-4 p-6"):
        dialog.props("data-testid=confirm-dialog")
        ui.label(title).classes("text-2xl font-bold")
        ui.label(message).classes("text-lg").props("data-testid=confirm-message")
        with ui.row().classes("w-full justify-end gap-4"):
            ui.button(cancel_label, on_click=lambda: dialog.submit(False)).classes(BUTTON).props(
                "flat data-testid=confirm-cancel"
            )
            ui.button(confirm_label, on_click=lambda: dialog.submit(True)).classes(BUTTON).props(
                f"color={'negative' if danger else 'primary'} data-testid=confirm-ok"
            )
    dialog.open()
    answer = await dialog
    dialog.delete()
    return bool(answer)
