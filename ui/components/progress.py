"""Live progress of an insertion: seeds deployed of planned, per status, per capacity, total activity."""

from nicegui import ui

from store.enums import ApplicatorStatus
from store.lookups import Progress


def seeds_text(progress: Progress) -> str:
    if not progress.planned_seeds:
        return f"Seeds deployed: {progress.deployed_seeds} (no planned total)"
    percent = progress.percent or 0.0
    return f"Seeds deployed: {progress.deployed_seeds} of {progress.planned_seeds} planned ({percent:.0f}%)"


def activity_text(progress: Progress) -> str:
    if progress.total_activity is None:
        return "Total activity: unknown (no activity per seed)"
    return f"Total activity: {progress.total_activity:g} µCi"


def status_text(progress: Progress) -> str:
    # In workflow order (the enum's order), only the statuses that occur.
    parts = [
        f"{s.label} {progress.by_status[s.value]}" for s in ApplicatorStatus if progress.by_status.get(s)
    ]
    return f"Applicators: {progress.applicators}" + (f" — {', '.join(parts)}" if parts else "")


def capacity_text(progress: Progress) -> str:
    if not progress.by_capacity:
        return "By capacity: none yet"
    groups = ", ".join(f"{n} × {capacity} seeds" for capacity, n in sorted(progress.by_capacity.items()))
    return f"By capacity: {groups}"


class ProgressPanel:
    """Four lines redrawn in place after every change (never the applicator list)."""

    def __init__(self, progress: Progress) -> None:
        with ui.card().classes("w-full gap-1 p-4").props("data-testid=progress"):
            self.bar = ui.linear_progress(show_value=False, size="14px").props("rounded color=green")
            self.seeds = ui.label().classes("text-2xl font-bold").props("data-testid=progress-seeds")
            self.activity = ui.label().classes("text-lg").props("data-testid=progress-activity")
            self.statuses = ui.label().classes("text-lg").props("data-testid=progress-status")
            self.capacities = ui.label().classes("text-lg").props("data-testid=progress-capacity")
        self.show(progress)

    def show(self, progress: Progress) -> None:
        self.progress = progress
        self.bar.value = min((progress.percent or 0.0) / 100, 1.0)
        self.seeds.text = seeds_text(progress)
        self.activity.text = activity_text(progress)
        self.statuses.text = status_text(progress)
        self.capacities.text = capacity_text(progress)
