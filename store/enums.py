"""The clinical vocabulary: enumerations and the applicator state machine, as data.

The allowed status moves live here as one table per indication so that the store, the cloud's
re-checks and the pages all read the same rules (domain.md, "Applicator lifecycle").
"""

from enum import StrEnum


class TreatmentType(StrEnum):
    INSERTION = "insertion"
    REMOVAL = "removal"


class Indication(StrEnum):
    PANCREAS = "pancreas"
    PROSTATE = "prostate"
    SKIN = "skin"
    UNKNOWN = "unknown"


class ApplicatorStatus(StrEnum):
    SEALED = "SEALED"
    OPENED = "OPENED"
    LOADED = "LOADED"
    INSERTED = "INSERTED"
    FAULTY = "FAULTY"
    DISPOSED = "DISPOSED"
    DISCHARGED = "DISCHARGED"
    DEPLOYMENT_FAILURE = "DEPLOYMENT_FAILURE"

    @property
    def is_terminal(self) -> bool:
        return self in TERMINAL_STATUSES

    @property
    def needs_comment(self) -> bool:
        return self in COMMENT_REQUIRED

    @property
    def usage(self) -> "Usage":
        return USAGE_BY_STATUS.get(self, Usage.NONE)

    @property
    def label(self) -> str:
        return STATUS_LABELS[self]


class Usage(StrEnum):
    NONE = "none"
    FULL = "full"
    FAULTY = "faulty"


class Role(StrEnum):
    HOSPITAL = "hospital"
    ALPHATAU = "alphatau"
    ADMIN = "admin"


class RowSyncStatus(StrEnum):
    """Where a clinical row stands with the cloud (the per-record receipt)."""

    PENDING = "pending"
    SYNCED = "synced"
    CONFLICT = "conflict"


class QueueStatus(StrEnum):
    PENDING = "pending"
    IN_FLIGHT = "in_flight"
    DONE = "done"
    QUARANTINED = "quarantined"
    NEEDS_PERSON = "needs_person"


class OperationKind(StrEnum):
    INSERT = "insert"
    UPDATE = "update"
    DELETE = "delete"


class ConflictStatus(StrEnum):
    OPEN = "open"
    RESOLVED = "resolved"
    AUTO_RESOLVED = "auto_resolved"


class ConflictResolution(StrEnum):
    KEEP_LOCAL = "keep_local"
    KEEP_SERVER = "keep_server"
    MERGED = "merged"


class CacheType(StrEnum):
    USER = "user"
    SCHEDULE = "schedule"
    INVENTORY = "inventory"
    BUNDLE = "bundle"


class SeedRemovalReason(StrEnum):
    APPLICATOR_RUPTURE = "applicator_rupture"
    PATIENT_FROM_HOME = "patient_from_home"
    OTHER = "other"


class SignatureMode(StrEnum):
    SELF = "self"  # a hospital user signs for themselves, online
    CODE = "code"  # an Alpha Tau user chose a signer who entered an emailed/SMS code
    OFFLINE_PIN = "offline_pin"  # a hospital user re-entered their PIN with no network


class SignatureStatus(StrEnum):
    CONFIRMED = "confirmed"
    AWAITING_CLOUD = "awaiting_cloud"


class Priority:
    """Push order on the station (architecture.md, "Order on the station")."""

    CRITICAL_TREATMENT = 1
    COMPLETED_TREATMENT = 2
    APPLICATOR_REMOVAL = 3
    NEW_APPLICATOR = 4
    ROUTINE = 5


TERMINAL_STATUSES = frozenset(
    {
        ApplicatorStatus.INSERTED,
        ApplicatorStatus.FAULTY,
        ApplicatorStatus.DISPOSED,
        ApplicatorStatus.DISCHARGED,
        ApplicatorStatus.DEPLOYMENT_FAILURE,
    }
)
COMMENT_REQUIRED = frozenset(
    {
        ApplicatorStatus.FAULTY,
        ApplicatorStatus.DISPOSED,
        ApplicatorStatus.DISCHARGED,
        ApplicatorStatus.DEPLOYMENT_FAILURE,
    }
)
USAGE_BY_STATUS = {ApplicatorStatus.INSERTED: Usage.FULL, ApplicatorStatus.FAULTY: Usage.FAULTY}
STATUS_LABELS = {
    ApplicatorStatus.SEALED: "Sealed",
    ApplicatorStatus.OPENED: "Opened",
    ApplicatorStatus.LOADED: "Loaded",
    ApplicatorStatus.INSERTED: "Inserted",
    ApplicatorStatus.FAULTY: "Faulty",
    ApplicatorStatus.DISPOSED: "Disposed",
    ApplicatorStatus.DISCHARGED: "Discharged",
    ApplicatorStatus.DEPLOYMENT_FAILURE: "Deployment failure",
}

_S = ApplicatorStatus
_LOADED_WORKFLOW: dict[ApplicatorStatus, frozenset[ApplicatorStatus]] = {
    _S.SEALED: frozenset({_S.OPENED}),
    _S.OPENED: frozenset({_S.LOADED, _S.FAULTY, _S.DISPOSED}),
    _S.LOADED: frozenset({_S.INSERTED, _S.DISCHARGED, _S.DEPLOYMENT_FAILURE}),
}
_SKIN_WORKFLOW: dict[ApplicatorStatus, frozenset[ApplicatorStatus]] = {
    _S.SEALED: frozenset({_S.INSERTED, _S.FAULTY}),
}


def _union(*maps: dict[ApplicatorStatus, frozenset[ApplicatorStatus]]) -> dict:
    merged: dict[ApplicatorStatus, frozenset[ApplicatorStatus]] = {}
    for transitions in maps:
        for source, targets in transitions.items():
            merged[source] = merged.get(source, frozenset()) | targets
    return merged


# Decision (domain.md): an unknown indication allows the union of both workflows; nothing ever
# leaves a terminal status (a terminal key is simply absent).
TRANSITIONS: dict[Indication, dict[ApplicatorStatus, frozenset[ApplicatorStatus]]] = {
    Indication.PANCREAS: _LOADED_WORKFLOW,
    Indication.PROSTATE: _LOADED_WORKFLOW,
    Indication.SKIN: _SKIN_WORKFLOW,
    Indication.UNKNOWN: _union(_LOADED_WORKFLOW, _SKIN_WORKFLOW),
}


def allowed_moves(indication: Indication, status: ApplicatorStatus) -> frozenset[ApplicatorStatus]:
    """The statuses an applicator may move to next; empty for a terminal status."""
    return TRANSITIONS[Indication(indication)].get(ApplicatorStatus(status), frozenset())


def sql_in(values: type[StrEnum] | frozenset | list) -> str:
    """The quoted list for a CHECK (... IN (...)) constraint."""
    # Sorted, so that the constraint's text is the same in every process (frozensets are unordered).
    texts = sorted(v.value if isinstance(v, StrEnum) else str(v) for v in values)
    return ", ".join(f"'{text}'" for text in texts)
