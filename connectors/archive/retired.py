"""Datasets of an older schema moved out of the way (SPEC section 5).

Archives written before the mesh existed kept each sensor's T_sync feed in
``mesh_sync/`` (columns ``node``, ``sensor``, ``t_sync_re`` ...); those rows
are in ``coherence_history/`` as well.  ``mesh_sync/`` now holds the mesh's
order parameter (SPEC section 7).  A dataset of the old schema is moved,
whole and unchanged (data files and ``_meta``, manifest chain included),
to ``<root>/_retired/<dataset>-<schema>/``, itself an archive root that
``becomingone memory verify --archive`` checks as before.  Nothing is
deleted.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path

import pyarrow as pa

__all__ = ["RETIRED_DIR", "retire_old_schema"]

log = logging.getLogger("becomingone.archive")

#: Where retired datasets go, under the archive root.
RETIRED_DIR = "_retired"

#: dataset -> (a column only the old schema has, the name the retired copy gets)
_OLD_SCHEMAS = {"mesh_sync": ("node", "tsync-feed")}


def retire_old_schema(root: str | os.PathLike[str], dataset: str) -> Path | None:
    """Move ``dataset`` of ``root`` aside when its files have the old schema; the new place, or None.

    >>> retire_old_schema("no-such-archive", "mesh_sync") is None
    True
    """
    old = _OLD_SCHEMAS.get(dataset)
    root = Path(root)
    data = root / dataset
    if old is None or not data.is_dir():
        return None
    column, name = old
    first = next(iter(sorted(data.rglob("*.arrow"))), None)
    if first is None or column not in _schema(first).names:
        return None
    target = root / RETIRED_DIR / f"{dataset}-{name}"
    n = 1
    while target.exists():
        n += 1
        target = root / RETIRED_DIR / f"{dataset}-{name}-{n}"
    (target / "_meta").mkdir(parents=True)
    os.replace(data, target / dataset)
    meta = root / "_meta" / dataset
    if meta.is_dir():
        os.replace(meta, target / "_meta" / dataset)
    log.warning("archive %s: %s/ held the per-sensor T_sync feed of an older version (its rows are in "
                "coherence_history/ too); moved unchanged to %s", root, dataset, target)
    return target


def _schema(path: Path) -> pa.Schema:
    with pa.memory_map(str(path)) as source:
        return pa.ipc.open_file(source).schema
