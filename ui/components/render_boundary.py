"""A component boundary: a part of the page whose changes the browser re-renders alone.

In the browser NiceGUI renders the page as one Vue tree. When an element's children change (a row added,
a timer that comes and goes), NiceGUI replaces that element's entry and Vue re-renders the nearest
*component* above it, and, because NiceGUI hands every element its children as fresh slot functions,
every component below that one too. A plain `ui.column` or `ui.row` is not a component (it is a <div>),
so a row added to a list that sits in plain columns re-renders the whole page: with 200 applicator rows
that cost 150-300 ms of script per scan in Chromium (benchmarks/scan_latency.py, docs/performance.md).

`RenderBoundary` is a component that only draws a <div> around its children. Put the element whose
children change inside one, and the browser re-renders only what is inside that boundary.
"""

from nicegui import ui


class RenderBoundary(ui.element, component="render_boundary.js"):
    """A <div> that is a Vue component of its own (see the module's docstring)."""
