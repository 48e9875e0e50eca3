"""Arrow schemas of the archive datasets (SPEC section 5).

The archive root (``memory.storage.path``) holds one directory per dataset,
each hive-partitioned by the event time of its rows::

    <root>/<dataset>/date=YYYY-MM-DD/hour=HH/<file>.arrow

Conventions shared by every dataset:

* time columns are ``timestamp[us, tz=UTC]`` (the exact int64 microseconds of
  the pipeline, readable as times by any Arrow reader);
* a complex value X is stored as two float64 columns ``X_re`` / ``X_im``;
* ``sensor`` is never null, ``cell`` may be;
* each schema carries metadata ``becomingone.dataset`` and
  ``becomingone.schema_version`` so a file identifies itself.

The partition columns ``date`` and ``hour`` live in the directory names only,
not in the files.
"""

from __future__ import annotations

import datetime as _dt

import pyarrow as pa

__all__ = [
    "COHERENCE_HISTORY",
    "DATASETS",
    "EVENTS",
    "INPUT",
    "MESH_MEMBERS",
    "MESH_SYNC",
    "PARTITION_COLUMNS",
    "PARTITION_SCHEMA",
    "SCHEMA_VERSION",
    "TEMPORAL_SIGNATURES",
    "TIMESTAMP",
    "WITNESSING_LOGS",
    "dataset_schema",
    "partition_dir",
    "partition_values",
    "readable_as",
]

SCHEMA_VERSION = "1"

#: The type of every time column: exact microseconds, UTC.
TIMESTAMP = pa.timestamp("us", tz="UTC")

#: Hive partition columns, from the event time of each row.
PARTITION_COLUMNS: tuple[str, str] = ("date", "hour")
#: Types of the partition columns when a reader is told the partitioning
#: (strings, so ``hour=07`` reads back as written).
PARTITION_SCHEMA = pa.schema([pa.field("date", pa.string()), pa.field("hour", pa.string())])

_EPOCH = _dt.datetime(1970, 1, 1, tzinfo=_dt.timezone.utc)


def _schema(name: str, *fields: pa.Field) -> pa.Schema:
    return pa.schema(
        list(fields),
        metadata={"becomingone.dataset": name, "becomingone.schema_version": SCHEMA_VERSION},
    )


def _sensor() -> pa.Field:
    return pa.field("sensor", pa.string(), nullable=False)


def _cell() -> pa.Field:
    return pa.field("cell", pa.string(), nullable=True)


def _time(name: str = "t") -> pa.Field:
    return pa.field(name, TIMESTAMP, nullable=False)


def _f64(name: str, nullable: bool = False) -> pa.Field:
    return pa.field(name, pa.float64(), nullable=nullable)


def _complex(prefix: str) -> tuple[pa.Field, pa.Field]:
    return _f64(f"{prefix}_re"), _f64(f"{prefix}_im")


#: One row per sensor and transducer every memory.signature_interval of event
#: time, on that grid: the transducer's T over its window ending at t.
TEMPORAL_SIGNATURES = _schema(
    "temporal_signatures",
    _sensor(),
    _cell(),
    pa.field("transducer", pa.string(), nullable=False),  # "emissary" | "master"
    _time(),
    _f64("t_re"),
    _f64("t_im"),
    _f64("coherence"),  # |T|^2
    pa.field("n_products", pa.int64(), nullable=False),  # products in the window
)

#: One row per sensor on the signature grid: both coherences, the sync and its state.
COHERENCE_HISTORY = _schema(
    "coherence_history",
    _sensor(),
    _time(),
    _f64("coherence_master"),
    _f64("coherence_emissary"),
    _f64("coherence_sync"),
    _f64("delta_phase"),  # ||T_master| - |T_emissary||
    pa.field("state", pa.string(), nullable=False),  # "collapsed" | "dissipated"
)

#: Every witness record: its position in the log, layer, the event time it
#: belongs to, the record as JSON (the witness topic's message value, byte for
#: byte) and the running digest.  Rows are partitioned by event time like every
#: dataset, so the log's order is ``seq``, not file order.
WITNESSING_LOGS = _schema(
    "witnessing_logs",
    pa.field("seq", pa.int64(), nullable=False),  # 0, 1, 2, ... over the whole log
    pa.field("layer", pa.string(), nullable=False),  # micro | meso | macro | meta
    _time(),
    pa.field("sensor", pa.string(), nullable=True),  # meso and macro records
    pa.field("payload", pa.string(), nullable=False),  # JSON object
    pa.field("log_sha256", pa.string(), nullable=False),  # running digest including this record
)

#: Collapse and dissipate transitions (the collapse topic's messages).  Mesh transitions
#: (``mesh_collapse``, ``mesh_dissipate``, SPEC section 7) share it: ``sensor`` and ``cell`` are the
#: cell (``*``: the global mesh), ``coherence_sync`` is R2, ``t_sync`` the order parameter Z, and the
#: transducer columns are null.
EVENTS = _schema(
    "events",
    pa.field("event_id", pa.string(), nullable=False),
    pa.field("event", pa.string(), nullable=False),  # collapse | dissipate | mesh_collapse | mesh_dissipate
    pa.field("reason", pa.string(), nullable=True),  # coherence | phase | null
    _sensor(),
    _cell(),
    _time(),
    _f64("coherence_sync"),
    *_complex("t_sync"),
    _f64("t_master_re", nullable=True),
    _f64("t_master_im", nullable=True),
    _f64("t_emissary_re", nullable=True),
    _f64("t_emissary_im", nullable=True),
    _f64("delta_phase", nullable=True),
)

#: The mesh order parameter (SPEC section 7): one row per cell (scope ``cell``) and one for the
#: whole mesh (scope ``global``, cell ``*``) every sync.mesh.publish_interval of event time.
MESH_SYNC = _schema(
    "mesh_sync",
    pa.field("scope", pa.string(), nullable=False),  # "cell" | "global"
    pa.field("cell", pa.string(), nullable=False),
    _time(),
    pa.field("n_sensors", pa.int64(), nullable=False),
    _f64("weight"),
    _f64("z_re"),
    _f64("z_im"),
    _f64("r"),
    _f64("psi"),
    _f64("r2_window"),
    _f64("locked_fraction", nullable=True),  # null for the global rows
    pa.field("state", pa.string(), nullable=False),  # "collapsed" | "dissipated"
)

#: Each sensor's lock to its cell's mean field, on the mesh_sync cadence.
MESH_MEMBERS = _schema(
    "mesh_members",
    pa.field("cell", pa.string(), nullable=False),
    _sensor(),
    _time(),
    _f64("lock"),
    _f64("rel_phase"),  # arg(u_P conj(Z)) at t, radians
)

#: Accepted input samples (memory.archive_input): what `becomingone replay` reads.  A row holds a
#: phase sample (``phase``) or a raw sample (``value``, SPEC section 9), the other column null.
#: Files written before raw samples existed have no ``value`` and a non-null ``phase``.
INPUT = _schema(
    "input",
    _sensor(),
    _cell(),
    _time(),
    pa.field("phase", pa.list_(pa.float64()), nullable=True),  # radians, one per channel
    pa.field("value", pa.list_(pa.float64()), nullable=True),  # raw values, one per channel
)

#: Dataset directory name -> schema.
DATASETS: dict[str, pa.Schema] = {
    "temporal_signatures": TEMPORAL_SIGNATURES,
    "coherence_history": COHERENCE_HISTORY,
    "witnessing_logs": WITNESSING_LOGS,
    "events": EVENTS,
    "mesh_sync": MESH_SYNC,
    "mesh_members": MESH_MEMBERS,
    "input": INPUT,
}


def dataset_schema(name: str) -> pa.Schema:
    """The schema of dataset ``name``.

    Raises:
        KeyError: for an unknown dataset, naming the known ones.
    """
    try:
        return DATASETS[name]
    except KeyError:
        raise KeyError(f"unknown archive dataset {name!r}; known: {', '.join(DATASETS)}") from None


def readable_as(schema: pa.Schema, name: str) -> bool:
    """Whether a file of ``schema`` holds rows of dataset ``name`` as this version writes them, or as an
    earlier version did: the same columns and types, except columns a newer version added (nullable:
    read as null) and columns that were non-null before and may be null now.

    >>> old = pa.schema([f.with_nullable(f.name == "cell") for f in INPUT if f.name != "value"])  # phase non-null
    >>> readable_as(old, "input"), readable_as(INPUT, "input"), readable_as(EVENTS, "input")
    (True, True, False)
    """
    expected = DATASETS.get(name)
    if expected is None:
        return False
    names = set(schema.names)
    for field in expected:
        if field.name not in names:
            if not field.nullable:
                return False
            continue
        found = schema.field(field.name)
        if not found.type.equals(field.type) or (found.nullable and not field.nullable):
            return False
    return names <= set(expected.names)


def partition_values(t_us: int) -> tuple[str, str]:
    """(date, hour) partition values of an event time in microseconds (UTC).

    >>> partition_values(1764115200125000)
    ('2025-11-26', '00')
    """
    stamp = _EPOCH + _dt.timedelta(microseconds=int(t_us))
    # Not strftime("%Y"): it does not pad years below 1000 on every platform.
    return f"{stamp.year:04d}-{stamp.month:02d}-{stamp.day:02d}", f"{stamp.hour:02d}"


def partition_dir(t_us: int) -> str:
    """The hive partition directory of an event time: ``date=YYYY-MM-DD/hour=HH``."""
    date, hour = partition_values(t_us)
    return f"date={date}/hour={hour}"
