"""Widgets shared by the clinical pages (insertion, removal, finalise).

Elements that tests or the browser look for carry a `data-testid` prop (NiceGUI markers do not reach
the DOM); the `User`-fixture tests find them by the same prop (tests/ui/helpers_pages.py).
"""
