"""The mesh on the wire (SPEC sections 4 and 7): cell partial sums and mesh transitions.

A cell's node publishes, per mesh grid point, the cell's partial sums
(:class:`MeshCellSums`, topic ``becomingone.mesh``, key = cell); a node that
aggregates adds the sums of the cells it hears into T_global.  The sums are
sums of fixed-point values (:data:`MESH_FIXED_POINT`), so they add up to the
same number in any order, on any node: a float on the wire is an integer
times 2**-32, exact in a float64 below 2**21.

Mesh transitions (``mesh_collapse``, ``mesh_dissipate``) go to the collapse
topic as :class:`MeshEvent`, with ``sensor`` = the cell name (``*`` for the
global mesh).
"""

from __future__ import annotations

import hashlib
import json
from typing import Annotated, Literal

from pydantic import Field

from schemas.messages.wire import ComplexPair, Sha256Hex, UtcTime, _Wire, format_utc, parse_utc

__all__ = ["GLOBAL_CELL", "MESH_FIXED_POINT", "MeshCellSums", "MeshEvent", "mesh_event_id"]

#: Partial sums are integers in units of 2**-32 (SPEC section 7: partial sums combine exactly).
MESH_FIXED_POINT = float(2 ** 32)
#: The ``cell`` (and the event's ``sensor``) of the rows and events of the whole mesh.
GLOBAL_CELL = "*"


class MeshCellSums(_Wire):
    """One cell's partial sums at one mesh grid point (topic ``becomingone.mesh``, key = cell).

    ``z_sum`` = sum_P W_P u_P(t), ``weight`` = sum_P W_P, ``n`` = contributing sensors.

    >>> m = MeshCellSums(cell="north", node="pmu-hub", t="2025-11-26T00:00:00.1Z", z_sum=(1.5, -0.25),
    ...                  weight=2.0, n=2)
    >>> m.t, m.t_us
    ('2025-11-26T00:00:00.100000Z', 1764115200100000)
    """

    cell: str = Field(min_length=1)
    node: str = Field(min_length=1)
    t: UtcTime
    z_sum: ComplexPair
    weight: Annotated[float, Field(ge=0.0, allow_inf_nan=False)]
    n: Annotated[int, Field(ge=1)]

    @property
    def t_us(self) -> int:
        return parse_utc(self.t)


def mesh_event_id(scope: str, cell: str, t_us: int, event: str) -> str:
    """Deterministic id of a mesh transition: SHA-256 hex of ``["mesh", scope, cell, t_us, event]``."""
    text = json.dumps(["mesh", scope, cell, int(t_us), event], separators=(",", ":"), ensure_ascii=False)
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


class MeshEvent(_Wire):
    """A transition of a cell's (or the global mesh's) state (topic ``becomingone.collapse``)."""

    event_id: Sha256Hex
    event: Literal["mesh_collapse", "mesh_dissipate"]
    reason: Literal["coherence"] | None = None
    scope: Literal["cell", "global"]
    sensor: str = Field(min_length=1)
    """The cell name (``*`` for the global mesh), as the per-sensor events name their sensor."""
    cell: str = Field(min_length=1)
    t: UtcTime
    r2_window: Annotated[float, Field(ge=0.0, le=1.0 + 1e-9, allow_inf_nan=False)]
    """R2: mean of r^2 over the window ending at t."""
    r: Annotated[float, Field(ge=0.0, allow_inf_nan=False)]
    z: ComplexPair
    """The order parameter Z at t as [re, im]."""
    n_sensors: Annotated[int, Field(ge=0)]

    @classmethod
    def create(cls, *, event: Literal["mesh_collapse", "mesh_dissipate"], scope: Literal["cell", "global"],
               cell: str, t_us: int, r2_window: float, z: complex, n_sensors: int) -> MeshEvent:
        return cls(event_id=mesh_event_id(scope, cell, t_us, event), event=event,
                   reason=None if event == "mesh_collapse" else "coherence", scope=scope, sensor=cell, cell=cell,
                   t=format_utc(t_us), r2_window=min(max(r2_window, 0.0), 1.0), r=abs(z),
                   z=(float(z.real), float(z.imag)), n_sensors=n_sensors)

    @property
    def t_us(self) -> int:
        return parse_utc(self.t)
