"""Drawing `becomingone report`: one PNG of coherence and collapse events from the archive (SPEC section 6).

:func:`write_report` reads an archive root written by the dataflow
(:mod:`flows.report.summary` says which datasets and how the summary is
defined) and draws one figure: a panel per sensor on a shared UTC
event-time axis (at most ``max_panels`` of them), and under the panels a
summary table that lists every sensor.

>>> result = write_report("becomingone-data")               # doctest: +SKIP
>>> result.path, result.rows[0]["collapses"]                 # doctest: +SKIP
(PosixPath('becomingone-data/report.png'), 1)
"""

from __future__ import annotations

import datetime as _dt
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from matplotlib import dates as mdates
from matplotlib.axes import Axes
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.collections import PolyCollection
from matplotlib.figure import Figure
from matplotlib.lines import Line2D
from matplotlib.patches import Patch

from connectors.memory import TemporalMemory
from flows.report.mesh_panel import draw_mesh_panel, load_mesh
from flows.report.summary import Events, History, SummaryRow, load, utc_text
from schemas.printable import printable

__all__ = ["MAX_PANELS", "ReportResult", "write_report"]

#: Default cap on the number of sensor panels; the summary table lists every sensor.
MAX_PANELS = 12

_SECOND_US = 1_000_000

# Figure geometry, inches (the figure is saved at _DPI dots per inch).
_DPI = 100
_WIDTH = 12.5
_LEFT, _RIGHT = 0.8, 0.3
_PANEL_H, _PANEL_GAP = 1.55, 0.42
_MESH_PANEL_H = 2.2
_AXIS_LABELS_H = 0.68  # tick labels and the x label under the last panel
_TABLE_TITLE_H, _TABLE_ROW_H = 0.4, 0.25
_BOTTOM = 0.3

_SYNC_COLOR = "#1f5fa8"
_MASTER_COLOR = "#e8892b"
_EMISSARY_COLOR = "#3a9a4a"
_COLLAPSED_COLOR = "#d62728"
_THRESHOLD_COLOR = "#7a1c1c"
_DISSIPATE_COLOR = "#6a3d9a"
_MUTED = "#555555"


@dataclass(frozen=True)
class ReportResult:
    """What :func:`write_report` wrote.

    Attributes:
        path: the PNG file.
        sensors: every sensor in the summary table, in table order.
        plotted: the sensors that got a panel (the first ``max_panels`` of ``sensors``).
        rows: the summary, one :class:`SummaryRow` per sensor of ``sensors``.
        start_us, end_us: event time of the first and last coherence_history
            row reported, microseconds since the epoch (UTC).
    """

    path: Path
    sensors: tuple[str, ...]
    plotted: tuple[str, ...]
    rows: list[SummaryRow]
    start_us: int
    end_us: int
    cells: tuple[str, ...] = ()


def _plain(text: str) -> str:
    """An id or name as a plot shows it: control characters as visible escapes.

    Draw it with ``parse_math=False`` too, so that ``$`` is a dollar sign and
    not the start of mathtext (an id like ``$\\frac{1}{$`` would not parse)."""
    return printable(text)


def _duration_text(us: int) -> str:
    """A duration in microseconds as ``12.5 s``, ``3 min 20 s``, ``2 h 05 min`` or ``3 d 04 h``."""
    seconds = us / _SECOND_US
    if seconds < 60:
        return f"{seconds:.3g} s"
    s = int(round(seconds))
    if s < 3600:
        return f"{s // 60} min {s % 60:02d} s"
    if s < 86_400:
        return f"{s // 3600} h {s % 3600 // 60:02d} min"
    return f"{s // 86_400} d {s % 86_400 // 3600:02d} h"


def _collapsed_spans(t_num: np.ndarray, collapsed: np.ndarray) -> np.ndarray:
    """(start, end) date numbers of each run of collapsed grid points.

    The state of a row holds *after* its grid point, so a run lasts until the
    next row (the first one no longer collapsed), or ends at the last row."""
    if not collapsed.any():
        return np.empty((0, 2))
    edges = np.diff(np.concatenate(([False], collapsed, [False])).astype(np.int8))
    first = np.flatnonzero(edges == 1)
    after_last = np.flatnonzero(edges == -1)  # index of the row after each run
    end = t_num[np.minimum(after_last, len(t_num) - 1)]
    return np.column_stack((t_num[first], end))


def _draw_panel(
    ax: Axes, sensor: str, row: SummaryRow, t_num: np.ndarray, history: History, block: slice,
    events: Events | None, rank: int, threshold: float, hysteresis: float,
) -> None:
    spans = _collapsed_spans(t_num, history.collapsed[block])
    if len(spans):
        # One collection for all spans (a flapping sensor may have thousands),
        # spanning the full height whatever the y limits.
        verts = np.stack(
            [np.column_stack((spans[:, 0], np.zeros(len(spans)))), np.column_stack((spans[:, 0], np.ones(len(spans)))),
             np.column_stack((spans[:, 1], np.ones(len(spans)))), np.column_stack((spans[:, 1], np.zeros(len(spans))))],
            axis=1,
        )
        ax.add_collection(
            PolyCollection(verts, transform=ax.get_xaxis_transform(), facecolor=_COLLAPSED_COLOR, alpha=0.13,
                           edgecolor="none", zorder=0.5)
        )
    ax.axhline(threshold, color=_THRESHOLD_COLOR, lw=0.9, zorder=1)
    ax.axhline(threshold - hysteresis, color=_THRESHOLD_COLOR, lw=0.9, ls=(0, (4, 3)), zorder=1)
    ax.plot(t_num, history.master[block], color=_MASTER_COLOR, lw=0.7, alpha=0.75, zorder=2)
    ax.plot(t_num, history.emissary[block], color=_EMISSARY_COLOR, lw=0.7, alpha=0.75, zorder=2)
    ax.plot(t_num, history.sync[block], color=_SYNC_COLOR, lw=1.5, zorder=3)
    if events is not None:
        mine = events.rank == rank
        for is_collapse, marker, color in ((True, "^", _COLLAPSED_COLOR), (False, "v", _DISSIPATE_COLOR)):
            pick = mine & (events.is_collapse == is_collapse)
            if pick.any():
                ax.scatter(mdates.date2num(events.t_us[pick].astype("datetime64[us]")), events.sync[pick],
                           marker=marker, s=42, color=color, edgecolor="black", linewidth=0.6, zorder=4,
                           clip_on=False)
    ax.set_ylim(-0.02, 1.04)
    ax.set_yticks([0.0, 0.25, 0.5, 0.75, 1.0])
    ax.set_ylabel("|T|²")
    ax.grid(axis="y", color="#dddddd", lw=0.6)
    ax.grid(axis="x", color="#eeeeee", lw=0.6)
    ax.set_title(_plain(sensor), loc="left", fontsize=10.5, fontweight="bold", pad=4, parse_math=False)
    counts = (
        "" if row["collapses"] is None
        else f"{row['collapses']} collapse{'s' * (row['collapses'] != 1)}, "
        f"{row['dissipations']} dissipation{'s' * (row['dissipations'] != 1)}  ·  "
    )
    ax.set_title(
        f"{counts}{row['collapsed_pct']:.1f} % collapsed  ·  last |T_sync|² {row['last_coherence_sync']:.3f}",
        loc="right", fontsize=9, color=_MUTED, pad=4,
    )


def _cell_text(row: SummaryRow) -> list[str]:
    def count(value: int | None) -> str:
        return "-" if value is None else f"{value:,}"

    name = _plain(row["sensor"]) + (f" ({row['kind']})" if row["kind"].startswith("raw") else "")
    return [
        name, count(row["samples"]), count(row["collapses"]), count(row["dissipations"]),
        f"{row['collapsed_pct']:.1f}", f"{row['mean_coherence_sync']:.3f}", f"{row['last_coherence_sync']:.3f}",
    ]


def _draw_table(ax: Axes, rows: list[SummaryRow]) -> None:
    ax.axis("off")
    labels = ["sensor", "samples", "collapses", "dissipations", "collapsed (%)", "mean |T_sync|²", "last |T_sync|²"]
    widths = [0.25, 0.13, 0.11, 0.11, 0.13, 0.135, 0.135]
    table = ax.table(cellText=[_cell_text(r) for r in rows], colLabels=labels, colWidths=widths,
                     bbox=[0.0, 0.0, 1.0, 1.0], cellLoc="right")
    table.auto_set_font_size(False)
    table.set_fontsize(9.5)
    for (r, c), cell in table.get_celld().items():
        cell.get_text().set_parse_math(False)  # ids are text, not mathtext
        cell.set_edgecolor("#c8c8c8")
        cell.set_linewidth(0.6)
        if c == 0:
            cell.set_text_props(ha="left")
            cell.PAD = 0.02
        if r == 0:
            cell.set_facecolor("#e9edf3")
            cell.set_text_props(fontweight="bold")
        elif r % 2 == 0:
            cell.set_facecolor("#f7f7f7")


def _raw_text(rows: list[SummaryRow], phase_band: tuple[float, float] | None, method: str) -> str:
    """`` (2 raw: 8 to 12 Hz, hilbert)`` when some sensors are raw, else nothing."""
    raw = sum(r["kind"].startswith("raw") for r in rows)
    if not raw:
        return ""
    band = "band: see --config" if phase_band is None else f"{phase_band[0]:g} to {phase_band[1]:g} Hz, {method}"
    return f" ({raw} raw: {band})"


def _legend_handles() -> list[Line2D | Patch]:
    return [
        Line2D([], [], color=_SYNC_COLOR, lw=1.5, label="|T_sync|²"),
        Line2D([], [], color=_MASTER_COLOR, lw=0.9, alpha=0.8, label="|T_master|²"),
        Line2D([], [], color=_EMISSARY_COLOR, lw=0.9, alpha=0.8, label="|T_emissary|²"),
        Patch(facecolor=_COLLAPSED_COLOR, alpha=0.13, label="collapsed"),
        Line2D([], [], color=_THRESHOLD_COLOR, lw=0.9, label="I_c"),
        Line2D([], [], color=_THRESHOLD_COLOR, lw=0.9, ls=(0, (4, 3)), label="I_c − hysteresis"),
        Line2D([], [], ls="none", marker="^", ms=7, color=_COLLAPSED_COLOR, mec="black", mew=0.6, label="collapse"),
        Line2D([], [], ls="none", marker="v", ms=7, color=_DISSIPATE_COLOR, mec="black", mew=0.6, label="dissipate"),
    ]


def write_report(
    root: str | os.PathLike[str],
    out: str | os.PathLike[str] | None = None,
    *,
    threshold: float = 0.95,
    hysteresis: float = 0.05,
    sensors: Sequence[str] | None = None,
    start_us: int | None = None,
    end_us: int | None = None,
    max_panels: int = MAX_PANELS,
    mesh_threshold: float | None = None,
    phase_band: tuple[float, float] | None = None,
    phase_method: str = "hilbert",
) -> ReportResult:
    """Draw the archive's coherence and collapse events into one PNG.

    The figure (drawn off-screen with matplotlib's Agg renderer, 100 dpi,
    1250 px wide, as tall as its content) has:

    * a title with the archive's name and the event-time range of the
      reported coherence_history rows (UTC), the sensor count, I_c and the
      hysteresis, and a legend;
    * one panel per sensor (the first ``max_panels`` in table order; a note
      says so when there are more), stacked on a shared UTC event-time axis:
      ``coherence_sync`` as a bold line, ``coherence_master`` and
      ``coherence_emissary`` as thin light lines, collapsed stretches shaded,
      a solid line at ``threshold`` and a dashed one at
      ``threshold - hysteresis``, collapse (▲) and dissipate (▼) events at
      their ``coherence_sync``; y from 0 to 1, labelled \\|T\\|^2;
    * above them, when the archive has ``mesh_sync`` rows in range (the mesh
      was on), a panel of the order parameter r of each cell and of the
      global mesh, R2 thin, collapsed stretches shaded
      (:mod:`flows.report.mesh_panel`), with ``mesh_threshold`` (default
      ``threshold``) as a line;
    * the summary table of every reported sensor (:func:`summary_rows`).

    Args:
        root: the archive root (``memory.storage.path``).
        out: the PNG to write (PNG whatever its suffix; parent directories
            are created); None for ``<root>/report.png``.
        threshold: I_c, ``kairos.coherence_threshold`` (0 < I_c <= 1).
        hysteresis: ``sync.hysteresis`` (0 <= hysteresis < I_c).
        sensors: sensor ids to report, in this order; None for every sensor
            of coherence_history, in natural name order.
        start_us, end_us: only rows with ``start_us <= t <= end_us``
            (microseconds since the epoch, UTC); None leaves that end open.
        max_panels: at most this many sensor panels (>= 1).
        phase_band, phase_method: ``kairos.phase_band`` and ``kairos.phase_method``, named in the header
            when the archive has raw sensors (their rows are marked with their rate in the table).

    Returns:
        A :class:`ReportResult`.

    Raises:
        FileNotFoundError: ``root`` is not a directory.
        ValueError: no coherence_history rows (in the range), a sensor
            without coherence_history rows (naming the known ones), an empty
            ``sensors``, ``start_us > end_us``, or a bad threshold,
            hysteresis or max_panels.
    """
    if not 0.0 < threshold <= 1.0:
        raise ValueError(f"threshold must be in (0, 1], got {threshold}")
    if not 0.0 <= hysteresis < threshold:
        raise ValueError(f"hysteresis must be >= 0 and below threshold ({threshold}), got {hysteresis}")
    if max_panels < 1:
        raise ValueError(f"max_panels must be >= 1, got {max_panels}")
    path, history, events, rows = load(root, sensors, start_us, end_us)
    mesh = load_mesh(TemporalMemory(path), start_us, end_us)
    out_path = path / "report.png" if out is None else Path(out)

    n_sensors = len(history.sensors)
    plotted = history.sensors[:max_panels]
    capped = n_sensors > len(plotted)
    t_first, t_last = int(history.t_us.min()), int(history.t_us.max())

    # Lay the figure out in inches, top to bottom, so that panels and table
    # rows keep their size whatever the number of sensors.
    header_h = 1.25 + (0.3 if capped else 0.0)
    panels_h = len(plotted) * _PANEL_H + (len(plotted) - 1) * _PANEL_GAP
    if mesh is not None:
        panels_h += _MESH_PANEL_H + _PANEL_GAP
    table_h = (n_sensors + 1) * _TABLE_ROW_H
    height = header_h + _PANEL_GAP + panels_h + _AXIS_LABELS_H + _TABLE_TITLE_H + table_h + _BOTTOM
    fig = Figure(figsize=(_WIDTH, height), dpi=_DPI, facecolor="white")
    FigureCanvasAgg(fig)

    def box(top_in: float, h_in: float) -> list[float]:
        """Axes rectangle (figure fractions) whose top edge is top_in inches below the figure's top."""
        return [_LEFT / _WIDTH, 1.0 - (top_in + h_in) / height, 1.0 - (_LEFT + _RIGHT) / _WIDTH, h_in / height]

    span = f"{utc_text(t_first)} – {utc_text(t_last)} UTC ({_duration_text(t_last - t_first)})"
    fig.text(0.5, 1.0 - 0.22 / height, f"BecomingONE coherence report: {_plain(path.resolve().name)}",
             ha="center", va="top", fontsize=14, fontweight="bold", parse_math=False)
    fig.text(0.5, 1.0 - 0.55 / height,
             f"{span}  ·  {n_sensors} sensor{'s' * (n_sensors != 1)}{_raw_text(rows, phase_band, phase_method)}  ·  "
             f"I_c = {threshold:g}, hysteresis {hysteresis:g} (dissipate below {threshold - hysteresis:g})",
             ha="center", va="top", fontsize=10.5, color="#333333")
    fig.legend(handles=_legend_handles(), loc="upper center", bbox_to_anchor=(0.5, 1.0 - 0.82 / height),
               ncol=8, frameon=False, fontsize=9, handlelength=2.2, columnspacing=1.6)
    if capped:
        fig.text(0.5, 1.0 - 1.2 / height,
                 f"Showing {len(plotted)} of {n_sensors} sensors (the first in table order); the table lists all. "
                 "Choose the panels with sensors= (becomingone report --sensor ID).",
                 ha="center", va="top", fontsize=9.5, style="italic", color="#8a4b00")

    top = header_h + _PANEL_GAP
    axes = []
    if mesh is not None:
        ax = fig.add_axes(box(top, _MESH_PANEL_H))
        draw_mesh_panel(ax, mesh, threshold if mesh_threshold is None else mesh_threshold)
        axes.append(ax)
        top += _MESH_PANEL_H + _PANEL_GAP
    for i, sensor in enumerate(plotted):
        ax = fig.add_axes(box(top, _PANEL_H), sharex=axes[0] if axes else None)
        block = slice(int(history.bounds[i]), int(history.bounds[i + 1]))
        t_num = mdates.date2num(history.t_us[block].astype("datetime64[us]"))
        _draw_panel(ax, sensor, rows[i], t_num, history, block, events, i, threshold, hysteresis)
        axes.append(ax)
        top += _PANEL_H + _PANEL_GAP
    top -= _PANEL_GAP

    lo, hi = (t_first, t_last) if t_last > t_first else (t_first - _SECOND_US, t_last + _SECOND_US)
    pad = (hi - lo) // 100  # room for the event markers at the edges
    axes[0].set_xlim(mdates.date2num(np.array([lo - pad, hi + pad], dtype="datetime64[us]")))
    locator = mdates.AutoDateLocator(tz=_dt.timezone.utc, minticks=5, maxticks=12)
    axes[-1].xaxis.set_major_locator(locator)
    axes[-1].xaxis.set_major_formatter(mdates.ConciseDateFormatter(locator, tz=_dt.timezone.utc))
    for ax in axes[:-1]:
        ax.tick_params(labelbottom=False)
    axes[-1].set_xlabel("event time (UTC)")

    top += _AXIS_LABELS_H
    fig.text(_LEFT / _WIDTH, 1.0 - (top + 0.12) / height, "Per-sensor summary", ha="left", va="top",
             fontsize=11, fontweight="bold")
    fig.text(1.0 - _RIGHT / _WIDTH, 1.0 - (top + 0.14) / height,
             "collapsed (%): share of grid points in state collapsed  ·  samples: rows of input/  ·  "
             "\"-\" = dataset not in the archive", ha="right", va="top", fontsize=8.5, color=_MUTED)
    _draw_table(fig.add_axes(box(top + _TABLE_TITLE_H, table_h)), rows)

    out_path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out_path, format="png", dpi=_DPI, facecolor="white")
    return ReportResult(
        path=out_path, sensors=history.sensors, plotted=tuple(plotted), rows=rows, start_us=t_first, end_us=t_last,
        cells=tuple(mesh.cells) if mesh is not None else (),
    )
