"""The insertion's applicator list, newest first, that costs the browser the same at 200 rows as at 1.

Adding a row changes the children of the element that holds it, and the browser re-renders everything
inside the nearest component boundary around that element (ui/components/render_boundary.py). One
column of 200 rows would re-render all 200 on each scan. So the rows live in blocks of `BLOCK_ROWS`,
each block inside a boundary of its own: a scan re-renders one block, at most `BLOCK_ROWS` rows.

The blocks are made in advance, empty (an empty block draws nothing): adding a block changes the
list's own children, which re-renders every row once. The page starts with room for `SPARE_BLOCKS`
more blocks than its rows need, and adds another `SPARE_BLOCKS` only when those are full (after 250
scans into one treatment, far more than a treatment holds).
"""

from nicegui import ui

from ui.components.render_boundary import RenderBoundary

BLOCK_ROWS = 10
SPARE_BLOCKS = 25


class ApplicatorList:
    """Blocks of rows, newest block on top, newest row first in its block."""

    def __init__(self, *, existing: int, empty_text: str) -> None:
        with RenderBoundary().classes("w-full"):
            self.empty = ui.label(empty_text).classes("text-lg")
            self.empty.set_visibility(existing == 0)
            self.column = ui.column().classes("w-full gap-0").props("data-testid=applicator-list")
        self.blocks: list[ui.element] = []  # oldest first; shown newest first
        self.rows_in_last = 0  # rows in the block now being filled (the last one that has any)
        self.in_use = 0  # blocks holding rows
        self._add_blocks(-(-existing // BLOCK_ROWS) + SPARE_BLOCKS)

    def slot_for_next_row(self) -> ui.element:
        """The block the next row goes into; make the row inside it, then call `placed(row)`."""
        if self.in_use == 0 or self.rows_in_last == BLOCK_ROWS:
            if self.in_use == len(self.blocks):
                self._add_blocks(SPARE_BLOCKS)
            self.in_use += 1
            self.rows_in_last = 0
        return self.blocks[self.in_use - 1]

    def placed(self, row: ui.element) -> None:
        """Move the row just made in `slot_for_next_row()` to the top of its block."""
        block = self.blocks[self.in_use - 1]
        row.move(block, target_index=0)
        self.rows_in_last += 1
        self.empty.set_visibility(False)

    def _add_blocks(self, count: int) -> None:
        for _ in range(count):
            with self.column:
                boundary = RenderBoundary().classes("w-full")
                with boundary:
                    # Rows carry their own bottom margin: an empty block is zero high and adds no gap.
                    block = ui.element("div").classes("w-full flex flex-col")
            boundary.move(self.column, target_index=0)
            self.blocks.append(block)
