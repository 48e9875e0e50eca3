"""The report's mesh panel: each cell's order parameter r over event time, collapsed stretches shaded
(SPEC section 7; ``mesh_sync/`` rows).

:func:`load_mesh` reads the ``mesh_sync`` rows in range (None when the archive has none: the mesh was
off); :func:`draw_mesh_panel` draws r per cell (the global mesh as a dashed black line), R2 thin, and
the stretches each cell was collapsed as bands of its colour.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pyarrow.compute as pc
from matplotlib import dates as mdates
from matplotlib.axes import Axes
from matplotlib.collections import PolyCollection

from connectors.memory import TemporalMemory
from schemas.messages.mesh_records import GLOBAL_CELL

__all__ = ["MeshHistory", "draw_mesh_panel", "load_mesh"]

#: Cells drawn at most (the busiest first); the rest are counted in the title.
MAX_CELLS = 10
_COLORS = ("#1f77b4", "#2ca02c", "#9467bd", "#8c564b", "#e377c2", "#17becf", "#bcbd22", "#ff7f0e", "#7f7f7f",
           "#d62728")


@dataclass(frozen=True)
class MeshHistory:
    """``mesh_sync`` rows of each cell (``*``: the global mesh), in time order."""

    cells: list[str]
    t_us: dict[str, np.ndarray]
    r: dict[str, np.ndarray]
    r2: dict[str, np.ndarray]
    collapsed: dict[str, np.ndarray]


def load_mesh(memory: TemporalMemory, start_us: int | None, end_us: int | None) -> MeshHistory | None:
    """The mesh rows in range, or None when the archive has no ``mesh_sync`` rows there."""
    if not (memory.root / "mesh_sync").is_dir():
        return None
    parts = list(memory.scan("mesh_sync", start_us, end_us, columns=["cell", "t", "r", "r2_window", "state"]))
    parts = [p for p in parts if p.num_rows]
    if not parts:
        return None
    import pyarrow as pa

    table = pa.concat_tables(parts).sort_by([("cell", "ascending"), ("t", "ascending")])
    cells_col = table["cell"].to_pylist()
    t = table["t"].cast(pa.int64()).to_numpy()
    r, r2 = table["r"].to_numpy(), table["r2_window"].to_numpy()
    on = pc.equal(table["state"], "collapsed").to_numpy(zero_copy_only=False)
    names = sorted(set(cells_col), key=lambda c: (c == GLOBAL_CELL, c))
    index = np.array([names.index(c) for c in cells_col]) if len(names) > 1 else np.zeros(len(cells_col), int)
    out: dict[str, dict[str, np.ndarray]] = {"t": {}, "r": {}, "r2": {}, "on": {}}
    for k, name in enumerate(names):
        mine = index == k
        out["t"][name], out["r"][name], out["r2"][name], out["on"][name] = t[mine], r[mine], r2[mine], on[mine]
    return MeshHistory(names, out["t"], out["r"], out["r2"], out["on"])


def draw_mesh_panel(ax: Axes, mesh: MeshHistory, threshold: float) -> None:
    """r per cell (the first :data:`MAX_CELLS` cells by name, then the global mesh), R2 thin, collapsed
    stretches shaded in the cell's colour, the collapse threshold on R2 as a line."""
    cells = [c for c in mesh.cells if c != GLOBAL_CELL][:MAX_CELLS]
    shown = cells + ([GLOBAL_CELL] if GLOBAL_CELL in mesh.cells else [])
    for k, cell in enumerate(shown):
        color = "black" if cell == GLOBAL_CELL else _COLORS[k % len(_COLORS)]
        t_num = mdates.date2num(mesh.t_us[cell].astype("datetime64[us]"))
        spans = _spans(t_num, mesh.collapsed[cell])
        if len(spans):
            verts = np.stack([np.column_stack((spans[:, 0], np.zeros(len(spans)))),
                              np.column_stack((spans[:, 0], np.ones(len(spans)))),
                              np.column_stack((spans[:, 1], np.ones(len(spans)))),
                              np.column_stack((spans[:, 1], np.zeros(len(spans))))], axis=1)
            ax.add_collection(PolyCollection(verts, transform=ax.get_xaxis_transform(), facecolor=color,
                                             alpha=0.12, edgecolor="none", zorder=0.5))
        label = "global (T_global)" if cell == GLOBAL_CELL else cell
        ax.plot(t_num, mesh.r[cell], color=color, lw=1.3, ls="--" if cell == GLOBAL_CELL else "-", label=label,
                zorder=3)
        ax.plot(t_num, mesh.r2[cell], color=color, lw=0.6, alpha=0.6, zorder=2)
    ax.axhline(threshold, color="#7a1c1c", lw=0.9, zorder=1)
    ax.set_ylim(-0.02, 1.04)
    ax.set_yticks([0.0, 0.25, 0.5, 0.75, 1.0])
    ax.set_ylabel("r")
    ax.grid(axis="y", color="#dddddd", lw=0.6)
    more = len([c for c in mesh.cells if c != GLOBAL_CELL]) - len(cells)
    ax.set_title("mesh: order parameter r per cell (thin: R2, the window's mean of r²; shaded: collapsed)"
                 + (f"; {more} more cells not drawn" if more > 0 else ""), loc="left", fontsize=10.5,
                 fontweight="bold", pad=4)
    ax.legend(loc="lower left", fontsize=8, ncol=min(6, len(shown)), frameon=False)


def _spans(t_num: np.ndarray, on: np.ndarray) -> np.ndarray:
    if not on.any():
        return np.empty((0, 2))
    edges = np.diff(np.concatenate(([False], on, [False])).astype(np.int8))
    first, after = np.flatnonzero(edges == 1), np.flatnonzero(edges == -1)
    return np.column_stack((t_num[first], t_num[np.minimum(after, len(t_num) - 1)]))
