"""The items the mesh passes between steps (SPEC section 7).

The resonate step hands the mesh step each key group's grid phasors
(:class:`MeshPhasors`) and, after them, how far each source partition's input
has been integrated (:class:`MeshProgress`); the decode step hands every key
group that progress first.  Carried in-band, in order with the samples, so
the mesh step decides a grid point by event time, never by arrival order.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

__all__ = ["MESH_KEY", "MeshPhasors", "MeshProgress"]

#: The mesh step's one key: every cell of a flow in one state, so its sums and R2 are decided together.
MESH_KEY = "mesh"


@dataclass(frozen=True)
class MeshProgress:
    """Input of source partition ``partition`` up to event time ``newest_us`` has passed key group
    ``group`` (the decode step's report has ``group`` empty)."""

    group: str
    partition: str
    newest_us: int


@dataclass
class MeshPhasors:
    """Grid phasors of several sensors: row i is sensor ``sensors[code[i]]`` (in cell
    ``cells[code[i]]``, weight ``weights[code[i]]``) at grid point ``g[i]`` (us) with phasor ``u[i]``."""

    sensors: list[str]
    cells: list[str]
    weights: np.ndarray      # float64 per sensor
    code: np.ndarray         # int64 per row
    g: np.ndarray            # int64 per row
    u: np.ndarray            # complex128 per row

    def __len__(self) -> int:
        return int(self.g.shape[0])
