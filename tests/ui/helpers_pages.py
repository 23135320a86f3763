"""Finding the clinical pages' elements by `data-testid` in `User`-fixture tests.

The pages name their elements with the `data-testid` prop so that the browser tests and these tests
look for the same thing; NiceGUI's own `find(marker=...)` only sees `.mark()` markers.
"""

import pytest
from nicegui import background_tasks, ui
from nicegui.testing import User
from nicegui.testing.user_interaction import UserInteraction

from store.station import Station
from ui import session


def _elements(user: User, testid: str, within: str | None = None) -> set[ui.element]:
    assert user.client is not None
    found = set()
    for element in user.client.elements.values():
        if element.props.get("data-testid") != testid or not getattr(element, "visible", True):
            continue
        if within is not None and not any(a.props.get("data-testid") == within for a in element.ancestors()):
            continue
        found.add(element)
    return found


def by_testid(user: User, testid: str, *, within: str | None = None) -> UserInteraction:
    """The elements named `testid` (inside the element named `within`), to click, type into or read."""
    elements = _elements(user, testid, within)
    if not elements:
        raise AssertionError(
            f"no element with data-testid={testid!r}" + (f" in {within!r}" if within else "")
        )
    return UserInteraction(user, elements, None)


def has_testid(user: User, testid: str, *, within: str | None = None) -> bool:
    return bool(_elements(user, testid, within))


def text_of(user: User, testid: str, *, within: str | None = None) -> str:
    """The text of the one element named `testid` (a label's text, a button's label)."""
    elements = _elements(user, testid, within)
    assert len(elements) == 1, f"expected one {testid!r}, found {len(elements)}"
    element = elements.pop()
    text = getattr(element, "text", None)
    return str(text if text is not None else element.props.get("label", ""))


# --- fixtures of the clinical-page tests ------------------------------------------------------------
async def station_started() -> Station:
    """The running app's station, once its start-up task has opened it.

    The app opens the station in an asynchronous start-up handler, which NiceGUI runs as a background
    task named after the handler; awaiting that task is the event to wait for (no polling).
    """
    for task in list(background_tasks.running_tasks):
        if task.get_name() == "func start":
            await task
    return session.current_station()


@pytest.fixture(name="app_station")
async def app_station_fixture(user: User) -> Station:
    """The station the simulated app opened (clock: `ui_clock`), for setting records up with the store."""
    return await station_started()


@pytest.fixture(name="clinician")
async def clinician_fixture(user: User, app_station: Station) -> User:
    """The simulated browser signed in as the nurse (PIN), after the station has opened."""
    from tests.ui.conftest import sign_in_with_pin

    await sign_in_with_pin(user)
    await user.should_see("Dana Shapiro", retries=50)
    return user
