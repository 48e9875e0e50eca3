"""The Arrow archive (SPEC section 5): hive-partitioned Arrow IPC files per dataset, listed by
a hash-chained manifest, written by one writer per dataset, crash-safe, compactable.

One module per job (this package re-exports the public names):

* :mod:`.layout`: where a dataset's files live and how they are named, the lock;
* :mod:`.manifest_lines`: a manifest line's text, hash chain and HMAC;
* :mod:`.recovery`: what a writer or compaction does first (a torn line, an
  interrupted rename or compaction, the older layout);
* :mod:`.writer` and :mod:`.high_water`: :class:`ArchiveWriter`, and the rows it
  drops because they are archived already;
* :mod:`.reading` and :mod:`.verify`: the committed files, read and checked;
* :mod:`.compaction`: one file per hour partition;
* :mod:`.sink`: :class:`ArchiveSink`, the Bytewax sink with a writer thread per dataset;
* :mod:`.repair`, :mod:`.anchor` and :mod:`.witness_chain`: a lost manifest
  rebuilt, chains anchored outside the archive, the witness log checked as a log.

The schemas of the datasets are :mod:`schemas.datasets`.

>>> import tempfile
>>> import pyarrow as pa
>>> from schemas.datasets import TIMESTAMP
>>> rows = pa.table({
...     "sensor": ["s1", "s1"],
...     "cell": pa.nulls(2, pa.string()),
...     "t": pa.array([1764115200000000, 1764115201000000]).cast(TIMESTAMP),
...     "phase": [[0.1], [0.2]],
... })
>>> with tempfile.TemporaryDirectory() as root:
...     with ArchiveWriter(root, "input") as writer:
...         print(writer.write(rows), writer.write(rows))   # the repeat is already archived
...     print(writer.rows_written, verify_archive(root))
2 0
2 {'input': []}
"""

from connectors.archive.compaction import COMPACTION_STEPS, CompactionResult, compact_archive, compact_dataset
from connectors.archive.high_water import ROW_KEYS
from connectors.archive.layout import JOURNAL, LOCK, MANIFEST, META, ArchiveError, meta_dir
from connectors.archive.manifest_lines import GENESIS
from connectors.archive.reading import (
    ListedFile,
    last_witness_record,
    listed_entries,
    listed_files,
    manifest_files,
    open_dataset,
    read_archive_file,
)
from connectors.archive.sink import ArchiveSink, PendingRows
from connectors.archive.verify import verify_archive, verify_dataset
from connectors.archive.writer import ArchiveWriter

__all__ = [
    "COMPACTION_STEPS",
    "GENESIS",
    "ListedFile",
    "JOURNAL",
    "LOCK",
    "MANIFEST",
    "META",
    "ROW_KEYS",
    "ArchiveError",
    "ArchiveSink",
    "ArchiveWriter",
    "CompactionResult",
    "PendingRows",
    "compact_archive",
    "compact_dataset",
    "last_witness_record",
    "listed_entries",
    "listed_files",
    "manifest_files",
    "meta_dir",
    "open_dataset",
    "read_archive_file",
    "verify_archive",
    "verify_dataset",
]
