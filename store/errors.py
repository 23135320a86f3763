"""Typed refusals. Each message is written for the clinician who caused it, and a refused
command has written nothing (the transaction rolls back)."""


class StoreError(Exception):
    """A command refused its input; `message` is shown to the user as it is."""

    code = "refused"

    def __init__(self, message: str, *, field: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.field = field  # the form field the message belongs beside, where there is one


class InvalidInput(StoreError):
    code = "invalid_input"


class NotFound(StoreError):
    code = "not_found"


class NotPermitted(StoreError):
    code = "not_permitted"


class TreatmentLocked(StoreError):
    code = "treatment_locked"


class TransitionNotAllowed(StoreError):
    code = "transition_not_allowed"


class ConfirmationRequired(StoreError):
    """The action is allowed but permanent or unusual; repeat it with the confirmation given."""

    code = "confirmation_required"
