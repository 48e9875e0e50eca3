"""T_global from the cells heard on the mesh topic (SPEC section 7, across nodes).

Each cell's node publishes its partial sums per grid point, in grid order.
A node that aggregates adds up, per grid point, the sums of every cell it
expects, and decides the point once each of them has reported it or a later
one (a cell with no contributing sensor at g publishes nothing for g).  The
expected cells are ``sync.mesh.cells``, or, when that is empty, every cell
heard within ``sync.mesh.cell_timeout`` of wall-clock time.  A cell's sums
are integers (fixed point), so the global sums equal the exact combination
of the cells whatever the order they were heard in; a repeat of a cell's
grid point (Kafka delivers at least once; two routes to one cluster) is
dropped.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from operators.mesh_cells import (CellSums, MeshFinal, MeshSettings, _append_global, _Rings, combine_sums,
                                  empty_rows, in_grid_order)

__all__ = ["HeardCells", "MeshGlobal"]

_NONE = np.iinfo(np.int64).min


@dataclass
class HeardCells:
    """State: the sums heard and not yet decided, and what each cell has reported."""

    sums: dict[int, dict[str, tuple[int, int, int, int]]] = field(default_factory=dict)   # g -> cell -> sums
    newest: dict[str, int] = field(default_factory=dict)      # cell -> newest grid point reported
    heard_at: dict[str, float] = field(default_factory=dict)  # cell -> wall-clock time last heard
    decided: int = _NONE
    rings: _Rings | None = None


class MeshGlobal:
    """The global mesh of the cells heard (state: :class:`HeardCells`)."""

    def __init__(self, settings: MeshSettings, cells: tuple[str, ...], timeout_s: float,
                 state: HeardCells | None = None) -> None:
        self.s, self.cells, self.timeout_s = settings, cells, timeout_s
        self.state = state if state is not None else HeardCells()
        if self.state.rings is None:
            self.state.rings = _Rings.empty(settings.window_us // settings.interval_us)
            self.state.rings.reserve(1)

    def hear(self, sums: CellSums, now: float) -> int:
        """Keep heard sums; returns how many came for a grid point decided already (mesh-late)."""
        st, late = self.state, 0
        for k, cell in enumerate(sums.cell):
            g = int(sums.t[k])
            st.heard_at[cell] = now
            st.newest[cell] = max(st.newest.get(cell, _NONE), g)
            if g <= st.decided:
                late += 1
                continue
            st.sums.setdefault(g, {})[cell] = (int(sums.z_re[k]), int(sums.z_im[k]), int(sums.weight[k]),
                                               int(sums.n[k]))
        return late

    def decide(self, now: float, everything: bool = False) -> MeshFinal | None:
        """Decide the grid points every expected cell has reported (``everything``: all heard)."""
        st = self.state
        if not st.sums:
            return None
        expected = self.cells or tuple(c for c, at in st.heard_at.items() if now - at <= self.timeout_s)
        if everything:
            upto = max(st.sums)
        elif any(c not in st.newest for c in expected) or not expected:
            return None
        else:
            upto = min(st.newest[c] for c in expected)
        due = sorted(g for g in st.sums if g <= upto)
        if not due:
            return None
        cells, t, re, im, w, n = [], [], [], [], [], []
        for g in due:
            for cell, (a, b, c, d) in sorted(st.sums.pop(g).items()):
                cells.append(cell)
                t.append(g)
                re.append(a)
                im.append(b)
                w.append(c)
                n.append(d)
        st.decided = due[-1]
        heard = CellSums(cells, *(np.array(x, np.int64) for x in (t, re, im, w, n)))
        final = MeshFinal(heard, empty_rows(), {}, [])
        _append_global(final, combine_sums(heard), st.rings, self.s)
        return in_grid_order(final)

