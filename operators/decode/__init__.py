"""Decode and validate raw input messages into per-sensor sample batches (SPEC section 4).

This is the stateless first step of the dataflow.  It takes the raw Kafka
messages of one poll and returns one :class:`~schemas.samples.SampleBatch`
per sensor plus the dead letters of everything that cannot be a sample.
Nothing here depends on earlier messages, so it may run on any worker; the
checks that need a sensor's history (``duplicate``, ``late``, ``future``, a
channel count that differs from earlier batches) belong to the per-sensor
operators downstream.

Two encodings, chosen by the ``content-type`` header:

* JSON (no header, or ``application/json``): one sample per message, parsed
  by :func:`schemas.messages.parse_sample` so the dead-letter reasons are the
  same everywhere in the project.
* Arrow IPC stream (``application/vnd.apache.arrow.stream``): any number of
  rows of any number of sensors.  This is the fast path: columns become NumPy
  arrays without copying where the layout allows, validation and grouping by
  sensor are array operations, and no Python runs per row except for rows
  that are dead-lettered.

Reasons decided here: ``too_large`` (value longer than the limit, checked
before anything is parsed), ``malformed`` (not JSON / not an object / not
UTF-8 / not a readable IPC stream / unknown content type / no value),
``schema`` (missing or mistyped field or column, null sensor or time, time out
of range), ``nan`` (non-finite time or phase) and ``channels`` (empty phase
list, or a channel count that differs from the one most of the sensor's rows
in this call have).  When several apply to one row, the first in the order
schema, nan, channels wins, as in :func:`schemas.messages.sample_from_object`.

Original bytes of Arrow rows.  Serialising every row of a high-rate message
just in case it is rejected later would cost more than the decoding itself,
so a batch's :class:`~schemas.provenance.Provenance` keeps, for Arrow rows,
a reference to their messages and :func:`original_row_bytes` to cut a row
out again; a downstream operator that rejects such a row asks the provenance
for its bytes and never reads the wire format itself.  Rows rejected here get
their one-row IPC stream directly.

The package, by job: :mod:`~schemas.raw_messages` (the input message),
:mod:`~operators.decode.json_rows` and :mod:`~operators.decode.arrow` (the two
wire formats, each into :class:`~operators.decode.parts.Part` s),
:mod:`~operators.decode.grouping` (the call's rows by sensor),
:mod:`~operators.decode.output` (the result and its dead letters) and
:mod:`~operators.decode.decoder` (:func:`decode_messages`, one call).

>>> msg = RawMessage(key=b"pmu-7", value=b'{"sensor": "pmu-7", "t": 1764115200.125, "phase": 1.23}',
...                  topic="becomingone.phases", partition=0, offset=41)
>>> out = decode_messages([msg])
>>> out.batches[0].sensor, out.batches[0].t_us.tolist(), out.batches[0].phase.tolist()
('pmu-7', [1764115200125000], [[1.23]])
"""

from operators.decode.arrow import arrow_row_bytes, original_row_bytes
from operators.decode.decoder import decode_messages
from operators.decode.output import Decoded
from schemas.raw_messages import RawMessage, TableValue

__all__ = [
    "Decoded",
    "RawMessage",
    "TableValue",
    "arrow_row_bytes",
    "decode_messages",
    "original_row_bytes",
]
