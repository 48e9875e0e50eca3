"""Phase samples from files: CSV, Parquet, Arrow IPC (file or stream) and JSON lines.

Every format is read with pyarrow's own readers and turned into
:class:`PhaseColumns` chunks: whole columns, never per-row Python objects
(except for the few cases pyarrow cannot type, noted where they happen).

Columns (JSON lines: fields)

``sensor``
    sensor id; text (integers are accepted and read as text).
``t``
    event time: epoch seconds (float or int), ISO-8601 text with a zone
    (``2025-01-01T00:00:00.125Z``, ``...+02:00``), or an Arrow timestamp with
    or without a zone (Parquet/Arrow: read as UTC, like the Kafka decoder).
    Times become exact int64 microseconds (SPEC section 2).  ISO text
    without a zone (CSV, JSON lines) is refused rather than guessed.
``phase``
    radians: a number (one channel) or a list of numbers.  In CSV a list is
    written as text, ``"[1.23, -0.4]"`` (brackets optional, ``,`` or ``;``
    between values).
``cell``
    optional cell label; empty or missing means none.

Any other columns are ignored.  A problem with the file (missing file,
missing column, a column of the wrong type, a null where a value is needed)
raises :class:`PhaseFileError`, which names the file and the column.

>>> from connectors.phase_files import read_phase_file
>>> for chunk in read_phase_file("samples.csv"):          # doctest: +SKIP
...     print(chunk.sensor[0], chunk.t_us[:3], chunk.channels())
"""

from connectors.phase_files.columns import PHASE_COLUMNS, PhaseColumns, PhaseFileError
from connectors.phase_files.readers import (
    check_phase_file,
    count_file_rows,
    file_format,
    phase_columns,
    phase_record_batches,
    read_phase_file,
)

__all__ = [
    "PHASE_COLUMNS",
    "PhaseColumns",
    "PhaseFileError",
    "check_phase_file",
    "count_file_rows",
    "file_format",
    "phase_columns",
    "phase_record_batches",
    "read_phase_file",
]
