"""Wire formats (SPEC section 4): input samples, output events, witness records, dead letters.

Input
    A JSON sample ``{"sensor": "pmu-7", "t": 1764115200.125, "phase": 1.23}``
    (``"phase"`` may be a list of channels; ``"cell"`` is optional; ``"t"`` is
    epoch seconds or an ISO-8601 string with a zone) becomes a
    :class:`PhaseSample` with exact integer microseconds ``t_us``.  A sample
    that cannot be one raises :class:`InvalidSample` carrying its
    :class:`DeadLetterReason`.  Unknown extra fields are ignored, so producers
    may add fields without breaking the flow.

    The input side is a frozen dataclass and a hand-written parser rather
    than a pydantic model: it runs once per sample (thousands per second per
    sensor), and a plain ``json.loads`` plus type checks costs a fraction of a
    model validation while giving the exact dead-letter reason, which pydantic's
    error list would have to be mapped back to.

Output
    :class:`CollapseEvent` (collapse topic), :class:`WitnessRecord` (witness
    topic), :class:`SyncRecord` (sync topic) and :class:`DeadLetter` (dead-letter
    topic) are pydantic models: they are produced at grid or event rate, not
    sample rate, and validation guards the contract.  :func:`to_json_bytes`
    gives their compact JSON.  Times on the wire are ISO-8601 UTC strings with
    microseconds (``2025-11-26T00:00:00.125000Z``); complex values are
    ``[re, im]`` pairs.
"""

from __future__ import annotations

import base64
import binascii
import datetime as _dt
import enum
import functools
import hashlib
import json
import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Annotated, Any, Literal, TypeVar

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
from pydantic import AfterValidator, BaseModel, ConfigDict, Field, model_validator

from schemas.float_text import float_texts
from schemas.timebase import (
    MAX_ABS_SECONDS,
    MAX_ABS_WHOLE_SECONDS,
    MICROS_PER_SECOND,
    RANGE_TEXT,
    number_to_micros,
    to_micros,
)

__all__ = [
    "ARROW_STREAM_CONTENT_TYPE",
    "CONTENT_TYPE_HEADER",
    "JSON_CONTENT_TYPE",
    "WITNESS_LOG_GENESIS",
    "CollapseEvent",
    "DeadLetter",
    "DeadLetterLimits",
    "DeadLetterReason",
    "InvalidSample",
    "MacroWitness",
    "ManifestHead",
    "MesoWitness",
    "MetaWitness",
    "MicroWitness",
    "PhaseSample",
    "SyncRecord",
    "WitnessRecord",
    "classify_sample",
    "collapse_event_id",
    "format_utc",
    "from_json_bytes",
    "json_text",
    "meso_records_json",
    "parse_sample",
    "per_row",
    "parse_utc",
    "sample_from_object",
    "state_texts",
    "sync_records_json",
    "to_json_bytes",
    "witness_log_digest",
    "witness_record_json",
    "without_original",
]

_EPOCH = _dt.datetime(1970, 1, 1, tzinfo=_dt.timezone.utc)
_NAIVE_EPOCH = _dt.datetime(1970, 1, 1)
# |t| limit of the microsecond time base (int64 us is about +-2.9e5 years).
#: Kafka header naming a message value's encoding (SPEC section 4); no header means JSON.
CONTENT_TYPE_HEADER = "content-type"
JSON_CONTENT_TYPE = "application/json"
ARROW_STREAM_CONTENT_TYPE = "application/vnd.apache.arrow.stream"


# --------------------------------------------------------------------------
# Time on the wire.


def format_utc(t_us: int) -> str:
    """Microseconds since the epoch as ISO-8601 UTC with 6 decimals and ``Z``.

    >>> format_utc(1764115200125000)
    '2025-11-26T00:00:00.125000Z'
    """
    text = _UTC_TEXT.get(t_us)
    if text is None:
        # Output records share their grid times across sensors: each is formatted once.
        if len(_UTC_TEXT) >= 65_536:
            _UTC_TEXT.clear()
        seconds, micros = divmod(int(t_us), MICROS_PER_SECOND)
        text = _UTC_TEXT[int(t_us)] = f"{_utc_second(seconds)}.{micros:06d}Z"
    return text


_UTC_TEXT: dict[int, str] = {}


@functools.lru_cache(maxsize=65_536)
def _utc_second(seconds: int) -> str:
    # Output records of one batch share few distinct seconds: format each once.
    # timedelta holds whole seconds exactly: no float on the way.
    return (_NAIVE_EPOCH + _dt.timedelta(seconds=seconds)).isoformat(timespec="seconds")


def parse_utc(text: str) -> int:
    """ISO-8601 text with a zone to microseconds since the epoch (exact)."""
    return int(to_micros(text))


def _canonical_utc(text: str) -> str:
    return format_utc(parse_utc(text))


#: An event time on the wire: ISO-8601 with a zone in, canonical UTC ``...Z`` out.
UtcTime = Annotated[str, AfterValidator(_canonical_utc)]
FiniteFloat = Annotated[float, Field(allow_inf_nan=False)]
#: A complex value as ``[re, im]``.
ComplexPair = tuple[FiniteFloat, FiniteFloat]
NonNegativeInt = Annotated[int, Field(ge=0)]


def _pair(z: complex) -> tuple[float, float]:
    return (float(z.real), float(z.imag))


# --------------------------------------------------------------------------
# Input samples and dead-letter reasons.


class DeadLetterReason(enum.StrEnum):
    """Why a sample went to the dead-letter topic (SPEC section 4)."""

    MALFORMED = "malformed"
    """Not JSON (or not an Arrow batch), or not a JSON object."""
    SCHEMA = "schema"
    """A field is missing or has the wrong type (also: unreadable time)."""
    NAN = "nan"
    """The phase or the time is NaN or infinite."""
    DUPLICATE = "duplicate"
    """Same sensor and event time as an accepted sample (decided by the event-time operator)."""
    LATE = "late"
    """Event time at or below the sensor's watermark (decided by the event-time operator)."""
    FUTURE = "future"
    """More than sync.max_future ahead of the wall clock (decided at the source)."""
    TOO_LARGE = "too_large"
    """Message value larger than the source's max_message_bytes."""
    CHANNELS = "channels"
    """Empty phase list, or a channel count that differs from the sensor's
    earlier samples (the latter decided by the stateful operator)."""
    CAPACITY = "capacity"
    """A new sensor beyond ``becomingone.max_sensors`` live sensors in the process."""


class InvalidSample(ValueError):
    """A sample that cannot enter the flow.

    Attributes:
        reason: the dead-letter reason.
        detail: what was wrong, for the dead letter's ``error`` field.
    """

    def __init__(self, reason: DeadLetterReason, detail: str) -> None:
        super().__init__(f"{reason.value}: {detail}")
        self.reason = reason
        self.detail = detail


@dataclass(frozen=True, slots=True)
class PhaseSample:
    """One accepted input sample.

    Attributes:
        sensor: sensor id (also the Kafka key).
        t_us: event time, int microseconds since the Unix epoch.
        phase: phase angles in radians, one per channel (any wrapping).
        cell: optional cell label.
    """

    sensor: str
    t_us: int
    phase: tuple[float, ...]
    cell: str | None = None

    @property
    def channels(self) -> int:
        """Number of phase channels C."""
        return len(self.phase)

    def to_json_bytes(self) -> bytes:
        """The sample in the input wire format (``t`` as epoch seconds).

        ``t_us / 1e6`` is within 0.25 us of the true value for any epoch time
        of this era, so :func:`parse_sample` recovers ``t_us`` exactly.
        """
        obj: dict[str, Any] = {
            "sensor": self.sensor,
            "t": self.t_us / MICROS_PER_SECOND,
            "phase": self.phase[0] if len(self.phase) == 1 else list(self.phase),
        }
        if self.cell is not None:
            obj["cell"] = self.cell
        return json.dumps(obj, separators=(",", ":"), ensure_ascii=False, allow_nan=False).encode("utf-8")


def _is_number(x: Any) -> bool:
    # JSON true/false arrive as bool, a subclass of int: never a number here.
    return isinstance(x, (int, float)) and not isinstance(x, bool)


def sample_from_object(obj: Any) -> PhaseSample:
    """A decoded JSON value (or a file row as a dict) to a :class:`PhaseSample`.

    When several things are wrong, the first reason in this order wins:
    ``malformed`` (not an object), ``schema`` (a missing or wrong-typed field,
    an unreadable or out-of-range time), ``nan``, ``channels``.

    Raises:
        InvalidSample: with the dead-letter reason.
    """
    if not isinstance(obj, Mapping):
        raise InvalidSample(DeadLetterReason.MALFORMED, f"not a JSON object but {type(obj).__name__}")
    missing = [key for key in ("sensor", "t", "phase") if key not in obj]
    if missing:
        raise InvalidSample(DeadLetterReason.SCHEMA, "missing field(s) " + ", ".join(repr(k) for k in missing))
    sensor, t, phase, cell = obj["sensor"], obj["t"], obj["phase"], obj.get("cell")
    if not isinstance(sensor, str) or not sensor:
        raise InvalidSample(DeadLetterReason.SCHEMA, "field 'sensor' must be a non-empty string")
    if cell is not None and not isinstance(cell, str):
        raise InvalidSample(DeadLetterReason.SCHEMA, "field 'cell' must be a string or null")
    if not (_is_number(phase) or (isinstance(phase, list) and all(_is_number(x) for x in phase))):
        raise InvalidSample(DeadLetterReason.SCHEMA, "field 'phase' must be a number or a list of numbers")

    t_us: int | None = None
    if isinstance(t, str):
        try:
            t_us = parse_utc(t)
        except ValueError as exc:
            raise InvalidSample(DeadLetterReason.SCHEMA, f"field 't': {exc}") from None
    elif not _is_number(t):
        raise InvalidSample(DeadLetterReason.SCHEMA, "field 't' must be epoch seconds or an ISO-8601 string")
    elif isinstance(t, float) and not math.isfinite(t):
        raise InvalidSample(DeadLetterReason.NAN, f"field 't' is {t!r}")
    elif abs(t) > (MAX_ABS_WHOLE_SECONDS if isinstance(t, int) else MAX_ABS_SECONDS):
        raise InvalidSample(DeadLetterReason.SCHEMA, f"field 't' ({t!r}) is out of range: {RANGE_TEXT}")

    try:
        values = tuple(float(x) for x in (phase if isinstance(phase, list) else [phase]))
    except OverflowError:  # an integer literal beyond float64
        values = (math.inf,)
    if not all(math.isfinite(x) for x in values):
        raise InvalidSample(DeadLetterReason.NAN, "field 'phase' holds NaN or infinity")
    if not values:
        raise InvalidSample(DeadLetterReason.CHANNELS, "field 'phase' is an empty list")
    if t_us is None:
        t_us = number_to_micros(t)  # finite and in range: checked above
    return PhaseSample(sensor=sensor, t_us=t_us, phase=values, cell=cell)


def parse_sample(value: bytes | bytearray | memoryview | str, *, max_bytes: int | None = None) -> PhaseSample:
    """Parse one JSON input message.

    Args:
        value: the message value (UTF-8 JSON).
        max_bytes: values longer than this are ``too_large`` (None: no limit).

    Raises:
        InvalidSample: with the dead-letter reason.
    """
    if isinstance(value, memoryview):
        value = value.tobytes()
    size = len(value.encode("utf-8")) if isinstance(value, str) else len(value)
    if max_bytes is not None and size > max_bytes:
        raise InvalidSample(DeadLetterReason.TOO_LARGE, f"{size} bytes, limit {max_bytes}")
    try:
        obj = json.loads(value)
    except (ValueError, RecursionError) as exc:  # JSONDecodeError and UnicodeDecodeError are ValueErrors
        raise InvalidSample(DeadLetterReason.MALFORMED, f"not JSON: {exc}") from None
    return sample_from_object(obj)


def classify_sample(
    value: bytes | bytearray | memoryview | str, *, max_bytes: int | None = None
) -> DeadLetterReason | None:
    """The dead-letter reason of a message value, or None when it is a good sample.

    Only the reasons visible in the message itself (malformed, schema, nan,
    channels, too_large); duplicate, late and future need the stream's state.
    """
    try:
        parse_sample(value, max_bytes=max_bytes)
    except InvalidSample as exc:
        return exc.reason
    return None


# --------------------------------------------------------------------------
# Output messages.


class _Wire(BaseModel):
    """Base of the output messages: exact fields, immutable."""

    model_config = ConfigDict(extra="forbid", frozen=True)


M = TypeVar("M", bound=BaseModel)
L = TypeVar("L")  # a label of rows


# --------------------------------------------------------------------------
# Encoders for the high-volume output messages.
#
# Sync records and meso / witness records are written once per sensor and
# publish interval: with thousands of sensors that is hundreds of thousands of
# messages per second of event time.  Building them through pydantic costs
# ~10 us each, so these write the same JSON objects (same fields, same order)
# directly from values that are already of their wire types.  The models
# above stay the schema: tests hold the encoders to them, and readers parse
# with them.


@functools.lru_cache(maxsize=65_536)
def json_text(value: str | None) -> str:
    """A JSON string literal, or ``null`` for None (non-ASCII kept as UTF-8).

    Cached: the same few sensor ids, cells and node names recur in every message.
    """
    return "null" if value is None else json.dumps(value, ensure_ascii=False)


def _check_finite(what: str, arrays: tuple[np.ndarray, ...], values: tuple[list, ...]) -> None:
    """ValueError unless every number is finite: ``values`` are ``arrays`` as lists."""
    if arrays[0].shape[0] > 8:  # one NumPy pass per column pays off past a few values
        ok = all(bool(np.isfinite(a).all()) for a in arrays)
    else:  # most calls carry one grid point: look at the Python numbers
        ok = all(math.isfinite(x.real) and math.isfinite(x.imag) for column in values for x in column)
    if not ok:
        raise ValueError(f"{what}: a value with no JSON form (NaN or infinite)")


def per_row(labels: Sequence[L], counts: Sequence[int]) -> list[L]:
    """``labels[i]`` repeated ``counts[i]`` times, in order: a label of each row of runs.

    >>> per_row(["a", "b", "c"], [2, 0, 1])
    ['a', 'a', 'c']
    """
    if len(labels) == 1:
        return [labels[0]] * int(counts[0])
    return [label for label, n in zip(labels, counts) for _ in range(n)]


def meso_records_json(sensors: Sequence[str], cells: Sequence[str | None], transducers: Sequence[str],
                      counts: Sequence[int], t_us: np.ndarray, t_re: np.ndarray, t_im: np.ndarray,
                      n_products: np.ndarray) -> list[bytes]:
    """``meso`` :class:`WitnessRecord` messages of grid points as JSON bytes: each
    :class:`MesoWitness` payload (coherence = t_re^2 + t_im^2) in its record at ``t_us``.

    The rows come in runs: the ``counts[i]`` rows after the earlier runs are of
    ``sensors[i]`` (cell ``cells[i]``) and transducer ``transducers[i]``, so one
    call encodes the values of many sensors.  ValueError for a NaN or infinite value.

    >>> record, = meso_records_json(["s"], [None], ["master"], [1], np.array([0]), np.array([0.5]),
    ...                             np.array([0.0]), np.array([7]))
    >>> record[:61]
    b'{"layer":"meso","t":"1970-01-01T00:00:00.000000Z","payload":{'
    >>> json.loads(record)["payload"]
    {'sensor': 's', 'cell': None, 'transducer': 'master', 't_re': 0.5, 't_im': 0.0, 'coherence': 0.25, 'n_products': 7}
    """
    heads = [f'{{"sensor":{json_text(sensor)},"cell":{json_text(cell)},"transducer":"{transducer}","t_re":'
             for sensor, cell, transducer in zip(sensors, cells, transducers)]
    coherence = t_re * t_re + t_im * t_im  # the same two products and sum as in Python floats
    n_products = np.asarray(n_products, np.int64)
    if t_re.shape[0] >= _COLUMNAR_ROWS:
        _check_finite("meso payload", (t_re, t_im), ())
        head, run = pa.array(heads, pa.string()), _run_of_rows(counts)
        return _joined(t_re.shape[0], lambda r: (
            '{"layer":"meso","t":"', utc_texts(t_us[r]), '","payload":', head.take(run[r]), float_texts(t_re[r]),
            ',"t_im":', float_texts(t_im[r]), ',"coherence":', float_texts(coherence[r]), ',"n_products":',
            pa.array(n_products[r]).cast(pa.string()), "}}"))
    res, ims = t_re.tolist(), t_im.tolist()
    _check_finite("meso payload", (t_re, t_im), (res, ims))
    return [witness_record_json("meso", t, f'{head}{re!r},"t_im":{im!r},"coherence":{c!r},"n_products":{n}}}'
                                .encode("utf-8"))
            for head, t, re, im, c, n in zip(per_row(heads, counts), np.asarray(t_us, np.int64).tolist(), res, ims,
                                             coherence.tolist(), n_products.tolist())]


def sync_records_json(node: str, sensors: Sequence[str], cells: Sequence[str | None], counts: Sequence[int],
                      t_us: np.ndarray, t_sync: np.ndarray, coherence_sync: np.ndarray, t_master: np.ndarray,
                      t_emissary: np.ndarray, delta_phase: np.ndarray, collapsed: np.ndarray,
                      mature: np.ndarray) -> list[bytes]:
    """:class:`SyncRecord` messages of grid points as JSON bytes, field for field.

    The rows come in runs: the ``counts[i]`` rows after the earlier runs are of
    ``sensors[i]`` (cell ``cells[i]``).  ValueError for a NaN or infinite value.
    """
    numbers = (t_sync, coherence_sync, t_master, t_emissary, delta_phase)
    heads = [f'{{"node":{json_text(node)},"sensor":{json_text(sensor)},"cell":{json_text(cell)},"t":"'
             for sensor, cell in zip(sensors, cells)]
    if t_us.shape[0] >= _COLUMNAR_ROWS:
        _check_finite("sync record", numbers, ())
        head, run = pa.array(heads, pa.string()), _run_of_rows(counts)
        collapsed, mature = np.asarray(collapsed, bool), np.asarray(mature, bool)
        return _joined(t_us.shape[0], lambda r: (
            head.take(run[r]), utc_texts(t_us[r]), '","t_sync":[', float_texts(t_sync.real[r]), ",",
            float_texts(t_sync.imag[r]), '],"coherence_sync":', float_texts(coherence_sync[r]), ',"t_master":[',
            float_texts(t_master.real[r]), ",", float_texts(t_master.imag[r]), '],"t_emissary":[',
            float_texts(t_emissary.real[r]), ",", float_texts(t_emissary.imag[r]), '],"delta_phase":',
            float_texts(delta_phase[r]), ',"state":"', state_texts(collapsed[r]),
            '","mature":', pc.if_else(pa.array(mature[r]), "true", "false"), "}"))
    lists = tuple(a.tolist() for a in numbers)
    _check_finite("sync record", numbers, lists)
    return [
        (f'{head}{format_utc(t)}","t_sync":[{ts.real!r},{ts.imag!r}],"coherence_sync":{c!r},'
         f'"t_master":[{tm.real!r},{tm.imag!r}],"t_emissary":[{te.real!r},{te.imag!r}],'
         f'"delta_phase":{d!r},"state":"{"collapsed" if k else "dissipated"}",'
         f'"mature":{"true" if m else "false"}}}').encode("utf-8")
        for head, t, ts, c, tm, te, d, k, m in zip(per_row(heads, counts), t_us.tolist(), *lists,
                                                   collapsed.tolist(), mature.tolist())]


# From this many rows on, the encoders above build their texts column by column in
# Arrow: each compute call costs a few microseconds, each row in Python about one.
_COLUMNAR_ROWS = 64


def utc_texts(t_us: np.ndarray) -> pa.StringArray:
    """:func:`format_utc` of every time, as one Arrow array; each distinct time is formatted once."""
    distinct, index = np.unique(np.asarray(t_us, np.int64), return_inverse=True)
    return pa.array([format_utc(t) for t in distinct.tolist()], pa.string()).take(pa.array(index))


def state_texts(collapsed: np.ndarray) -> pa.StringArray:
    """The sync state of each row as text (``collapsed`` or ``dissipated``), as one Arrow array.

    >>> state_texts(np.array([True, False])).to_pylist()
    ['collapsed', 'dissipated']
    """
    return pc.if_else(pa.array(np.asarray(collapsed, bool)), "collapsed", "dissipated")


def _run_of_rows(counts: Sequence[int]) -> np.ndarray:
    """The run index of each row of runs of ``counts[i]`` rows."""
    return np.repeat(np.arange(len(counts)), np.asarray(counts, np.int64))


#: Rows encoded at a time: the texts of one join stay far below the 2 GiB that
#: Arrow's 32-bit string offsets allow (a sync message is about 400 bytes).
_JOIN_ROWS = 1 << 20


def _joined(n: int, parts: Callable[[slice], tuple[pa.Array | str, ...]]) -> list[bytes]:
    """Messages of ``n`` rows as UTF-8 bytes: ``parts(rows)`` gives the columns of a range of
    rows (arrays, or text common to every row), concatenated row by row."""
    out: list[bytes] = []
    for start in range(0, n, _JOIN_ROWS):
        rows = slice(start, min(n, start + _JOIN_ROWS))
        out.extend(pc.binary_join_element_wise(*parts(rows), "").cast(pa.binary()).to_pylist())
    return out


def witness_record_json(layer: str, t_us: int, payload: bytes) -> bytes:
    """A :class:`WitnessRecord` as JSON bytes around an already encoded payload."""
    return b'{"layer":"%s","t":"%s","payload":%s}' % (layer.encode("ascii"), format_utc(t_us).encode("ascii"),
                                                        payload)


def to_json_bytes(message: BaseModel) -> bytes:
    """Compact UTF-8 JSON of an output message (the Kafka value)."""
    return message.model_dump_json().encode("utf-8")


def from_json_bytes(model: type[M], data: bytes | str) -> M:
    """Parse and validate one output message (e.g. read back from a topic)."""
    return model.model_validate_json(data)


def collapse_event_id(sensor: str, t_us: int, event: str) -> str:
    """Deterministic id of a transition: SHA-256 hex of ``[sensor, t_us, event]``.

    The three values are hashed as a compact JSON array, so no choice of
    sensor name can make two different triples encode alike.
    """
    text = json.dumps([sensor, int(t_us), event], separators=(",", ":"), ensure_ascii=False)
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


Sha256Hex = Annotated[str, Field(pattern=r"^[0-9a-f]{64}$")]
SyncState = Literal["collapsed", "dissipated"]


class CollapseEvent(_Wire):
    """A transition of a sensor's sync state (topic ``becomingone.collapse``).

    ``collapse``: DISSIPATED -> COLLAPSED (reason null); ``dissipate``:
    COLLAPSED -> DISSIPATED because ``coherence`` fell below I_c - hysteresis
    or ``phase`` (delta_phase reached sync.phase_threshold).
    """

    event_id: Sha256Hex
    event: Literal["collapse", "dissipate"]
    reason: Literal["coherence", "phase"] | None = None
    sensor: str = Field(min_length=1)
    cell: str | None = None
    t: UtcTime
    """Emissary grid time of the transition."""
    coherence_sync: Annotated[float, Field(ge=0.0, allow_inf_nan=False)]
    """|T_sync|^2 (dimensionless)."""
    t_sync: ComplexPair
    """T_sync = (T_master + T_emissary) / 2 as [re, im]."""
    t_master: ComplexPair
    t_emissary: ComplexPair
    delta_phase: Annotated[float, Field(ge=0.0, allow_inf_nan=False)]
    """||T_master| - |T_emissary||."""

    @model_validator(mode="after")
    def _reason_fits_event(self) -> CollapseEvent:
        if self.event == "collapse" and self.reason is not None:
            raise ValueError("a collapse has no reason (reason must be null)")
        if self.event == "dissipate" and self.reason is None:
            raise ValueError("a dissipate needs reason 'coherence' or 'phase'")
        return self

    @classmethod
    def create(
        cls,
        *,
        event: Literal["collapse", "dissipate"],
        sensor: str,
        t_us: int,
        t_master: complex,
        t_emissary: complex,
        reason: Literal["coherence", "phase"] | None = None,
        cell: str | None = None,
    ) -> CollapseEvent:
        """Build the event from the two transducer values; T_sync, |T_sync|^2,
        delta_phase and event_id are derived as SPEC section 3 defines them."""
        t_sync = (complex(t_master) + complex(t_emissary)) / 2
        return cls(
            event_id=collapse_event_id(sensor, t_us, event),
            event=event,
            reason=reason,
            sensor=sensor,
            cell=cell,
            t=format_utc(t_us),
            coherence_sync=abs(t_sync) ** 2,
            t_sync=_pair(t_sync),
            t_master=_pair(t_master),
            t_emissary=_pair(t_emissary),
            delta_phase=abs(abs(t_master) - abs(t_emissary)),
        )

    @property
    def t_us(self) -> int:
        """t in microseconds since the epoch."""
        return parse_utc(self.t)


class SyncRecord(_Wire):
    """A sensor's T_sync every sync.publish_interval (topic ``becomingone.sync``, mesh feed)."""

    node: str = Field(min_length=1)
    """becomingone.name of the publishing node."""
    sensor: str = Field(min_length=1)
    cell: str | None = None
    t: UtcTime
    t_sync: ComplexPair
    coherence_sync: Annotated[float, Field(ge=0.0, allow_inf_nan=False)]
    t_master: ComplexPair
    t_emissary: ComplexPair
    delta_phase: Annotated[float, Field(ge=0.0, allow_inf_nan=False)]
    state: SyncState
    mature: bool
    """The Master has reached master.min_span."""

    @property
    def t_us(self) -> int:
        """t in microseconds since the epoch."""
        return parse_utc(self.t)


# --------------------------------------------------------------------------
# Witness records.

WitnessLayer = Literal["micro", "meso", "macro", "meta"]
#: The running digest before the first witness record.
WITNESS_LOG_GENESIS = "0" * 64


def witness_log_digest(previous: str, record: bytes) -> str:
    """Running SHA-256 of the witness log: sha256(previous digest bytes + record JSON)."""
    return hashlib.sha256(bytes.fromhex(previous) + record).hexdigest()


class MicroWitness(_Wire):
    """``micro``: one operator batch."""

    operator: str = Field(min_length=1)
    worker: NonNegativeInt
    items_in: NonNegativeInt
    items_out: NonNegativeInt
    drops: NonNegativeInt
    """Items sent to the dead-letter topic."""
    seconds: Annotated[float, Field(ge=0.0, allow_inf_nan=False)]
    """Wall-clock time spent on the batch, seconds."""


class MesoWitness(_Wire):
    """``meso``: one (sampled) transducer emission; the record's t is the grid time."""

    sensor: str = Field(min_length=1)
    cell: str | None = None
    transducer: Literal["emissary", "master"]
    t_re: FiniteFloat
    t_im: FiniteFloat
    coherence: Annotated[float, Field(ge=0.0, allow_inf_nan=False)]
    n_products: NonNegativeInt


class MacroWitness(_Wire):
    """``macro``: the full sync snapshot at a collapse or dissipate event."""

    event: CollapseEvent
    coherence_master: Annotated[float, Field(ge=0.0, allow_inf_nan=False)]
    coherence_emissary: Annotated[float, Field(ge=0.0, allow_inf_nan=False)]
    master_span: Annotated[float, Field(ge=0.0, allow_inf_nan=False)]
    """Newest minus oldest product time in the Master's window, seconds."""


class ManifestHead(_Wire):
    """An archive dataset's manifest as last committed: the anchor of its hash chain."""

    lines: NonNegativeInt
    """Lines (files) in ``_meta/<dataset>/MANIFEST.jsonl``."""
    sha256: Sha256Hex
    """SHA-256 of the last line's text (the next line's ``prev``); 64 zeros for no line."""


class MetaWitness(_Wire):
    """``meta``: the witness observing itself."""

    records: dict[WitnessLayer, NonNegativeInt]
    """Records emitted so far per layer."""
    log_sha256: Sha256Hex
    """Running digest (:func:`witness_log_digest`) of every record before this one."""
    heads: dict[str, ManifestHead] = Field(default_factory=dict)
    """Every archived dataset's manifest head when the record was built (empty without an archive)."""


_PAYLOADS: dict[str, type[_Wire]] = {
    "micro": MicroWitness,
    "meso": MesoWitness,
    "macro": MacroWitness,
    "meta": MetaWitness,
}


class WitnessRecord(_Wire):
    """One witness record (topic ``becomingone.witness``).

    ``t`` is the event time the record belongs to: the grid time (meso), the
    event time (macro), or the newest event time the operator had seen
    (micro, meta).  ``payload`` is the model of ``layer``.
    """

    layer: WitnessLayer
    t: UtcTime
    payload: MicroWitness | MesoWitness | MacroWitness | MetaWitness

    @model_validator(mode="before")
    @classmethod
    def _payload_of_layer(cls, data: Any) -> Any:
        # Parse the payload with its layer's model, not by trying each in turn.
        if isinstance(data, Mapping):
            model = _PAYLOADS.get(data.get("layer"))  # type: ignore[arg-type]
            payload = data.get("payload")
            if model is not None and isinstance(payload, Mapping):
                data = {**data, "payload": model.model_validate(payload)}
        return data

    @model_validator(mode="after")
    def _layer_matches(self) -> WitnessRecord:
        if not isinstance(self.payload, _PAYLOADS[self.layer]):
            raise ValueError(f"payload of layer {self.layer!r} must be a {_PAYLOADS[self.layer].__name__}")
        return self


# --------------------------------------------------------------------------
# Dead letters.


def _base64(text: str) -> str:
    try:
        base64.b64decode(text, validate=True)
    except (binascii.Error, ValueError):
        raise ValueError("must be standard base64") from None
    return text


Base64Text = Annotated[str, AfterValidator(_base64)]


#: Defaults of ``sink.dlq_max_original_bytes`` and ``source.max_dead_letters_per_message``.
DLQ_MAX_ORIGINAL_BYTES = 65_536
MAX_DEAD_LETTERS_PER_MESSAGE = 100


@dataclass(frozen=True, slots=True)
class DeadLetterLimits:
    """Bounds on dead letters, so that no input turns into a flood (SPEC section 4).

    Attributes:
        max_original_bytes: at most this many bytes of the original value (and
            of the key) go into a record (``sink.dlq_max_original_bytes``).
        max_per_message: per-row records of one input message; its remaining
            bad rows are summed up in one record (``source.max_dead_letters_per_message``).
    """

    max_original_bytes: int = DLQ_MAX_ORIGINAL_BYTES
    max_per_message: int = MAX_DEAD_LETTERS_PER_MESSAGE


#: Longest ``error`` text of a dead letter: details may quote the input (a time text, a sensor id).
MAX_ERROR_CHARS = 1_000


class DeadLetter(_Wire):
    """Bad input with its reason (topic ``becomingone.dlq``).

    For a file source ``topic`` is the file path and ``offset`` the row (or
    line) index; for the synthetic source both are null.  ``(topic, partition,
    offset, row)`` identifies the bad row, so a consumer can drop repeats.

    ``original`` holds at most :attr:`DeadLetterLimits.max_original_bytes` of
    the value; ``original_size`` and ``original_sha256`` describe the whole
    value, and ``truncated`` says whether it was cut.  A summary record
    (``omitted`` set) stands for the bad rows of one message beyond
    :attr:`DeadLetterLimits.max_per_message`: counts per reason, with the
    message's position and (cut) value.
    """

    reason: DeadLetterReason
    error: str
    """Human-readable detail."""
    topic: str | None = None
    partition: Annotated[int, Field(ge=0)] | None = None
    offset: Annotated[int, Field(ge=0)] | None = None
    row: Annotated[int, Field(ge=0)] | None = None
    """Row of the message (Arrow messages hold many); null for a whole message."""
    key: Base64Text | None = None
    """The original message key, base64 (cut like the value)."""
    original: Base64Text
    """The original message value, base64: at most max_original_bytes of it."""
    original_size: NonNegativeInt = 0
    """Length of the whole original value, bytes."""
    original_sha256: str = ""
    """SHA-256 (hex) of the whole original value."""
    truncated: bool = False
    """True when ``original`` holds only the first bytes of the value (or none of them)."""
    omitted: dict[DeadLetterReason, NonNegativeInt] | None = None
    """Summary record: bad rows of this message not written one by one, per reason."""

    @classmethod
    def create(
        cls,
        *,
        original: bytes,
        reason: DeadLetterReason | str,
        error: str,
        topic: str | None = None,
        partition: int | None = None,
        offset: int | None = None,
        row: int | None = None,
        key: bytes | None = None,
        omitted: Mapping[DeadLetterReason, int] | None = None,
        max_original_bytes: int = DLQ_MAX_ORIGINAL_BYTES,
    ) -> DeadLetter:
        """Build a dead letter from raw bytes (cut to ``max_original_bytes``, encoded to base64 here)."""
        value = bytes(original)
        kept = value[:max_original_bytes]
        if len(error) > MAX_ERROR_CHARS:
            error = error[:MAX_ERROR_CHARS] + f"... ({len(error):,} characters)"
        return cls(
            reason=DeadLetterReason(reason),
            error=error,
            topic=topic,
            partition=partition,
            offset=offset,
            row=row,
            key=None if key is None else base64.b64encode(bytes(key)[:max_original_bytes]).decode("ascii"),
            original=base64.b64encode(kept).decode("ascii"),
            original_size=len(value),
            original_sha256=hashlib.sha256(value).hexdigest(),
            truncated=len(kept) < len(value),
            omitted=None if omitted is None else dict(omitted),
        )

    @property
    def original_bytes(self) -> bytes:
        """The original message value."""
        return base64.b64decode(self.original)

    @property
    def key_bytes(self) -> bytes | None:
        """The original message key, if any."""
        return None if self.key is None else base64.b64decode(self.key)


def without_original(record: bytes) -> bytes | None:
    """A dead-letter record (JSON) with neither original bytes nor key, for a topic that
    refused the record; None when it has none left to drop."""
    letter = from_json_bytes(DeadLetter, record)
    if not letter.original and letter.key is None:
        return None
    return to_json_bytes(letter.model_copy(update={"original": "", "key": None, "truncated": True}))
