"""Offline run: the KAIROS kernels over a finite synthetic source, with a closing summary.

This is what ``becomingone run`` does until the streaming dataflow takes over:
every sensor's samples go through its own lag-product state, Emissary and
Master transducers (the same kernels the dataflow uses), in event-time
batches, and the run ends with a table per sensor.  Everything printed is
computed, nothing is canned.
"""

from __future__ import annotations

import sys
import time
from dataclasses import dataclass, field
from typing import TextIO

import numpy as np

from connectors.synthetic import SyntheticSensor, synthetic_batches
from operators.emissary import EmissaryWindow
from operators.grid import WindowValues
from operators.lag import LagState
from operators.master import MasterWindow
from operators.params import KairosParams
from operators.transducer import Transducer

__all__ = ["SensorSummary", "run_offline"]


@dataclass
class SensorSummary:
    """What one sensor did over the run."""

    sensor: str
    kind: str
    samples: int = 0
    products: int = 0
    emissary_points: int = 0
    emissary_above: int = 0  # Emissary grid points with coherence >= I_c
    master_coherence: float = float("nan")  # last Master grid point
    emissary_coherence: float = float("nan")  # last Emissary grid point
    _emissary_sum: float = field(default=0.0, repr=False)

    def take_emissary(self, values: WindowValues, threshold: float) -> None:
        coh = values.coherence[values.n_products > 0]
        self.emissary_points += coh.size
        self.emissary_above += int(np.count_nonzero(coh >= threshold))
        self._emissary_sum += float(coh.sum())
        if coh.size:
            self.emissary_coherence = float(coh[-1])

    def take_master(self, values: WindowValues) -> None:
        coh = values.coherence[values.n_products > 0]
        if coh.size:
            self.master_coherence = float(coh[-1])

    @property
    def emissary_mean(self) -> float:
        return self._emissary_sum / self.emissary_points if self.emissary_points else float("nan")


class _Progress:
    """One live line on a terminal; a line every ~10 % otherwise (logs stay readable)."""

    def __init__(self, stream: TextIO, total_us: int) -> None:
        self.stream, self.total = stream, max(total_us, 1)
        self.tty = stream.isatty()
        self.next_mark = 0.1
        self.started = time.monotonic()

    def _line(self, frac: float, samples: int) -> str:
        rate = samples / max(time.monotonic() - self.started, 1e-9)
        return f"event time {frac:6.1%}  samples {samples:>10,}  {rate:>12,.0f} samples/s"

    def update(self, done_us: int, samples: int) -> None:
        frac = min(done_us / self.total, 1.0)
        if self.tty:
            self.stream.write("\r" + self._line(frac, samples))
            self.stream.flush()
        elif frac >= self.next_mark:
            self.stream.write(self._line(frac, samples) + "\n")
            self.next_mark += 0.1

    def close(self, samples: int) -> None:
        """End of input: the whole event-time range is done."""
        self.stream.write(("\r" if self.tty else "") + self._line(1.0, samples) + "\n")
        self.stream.flush()


def run_offline(config, out: TextIO = sys.stdout, progress: TextIO = sys.stderr) -> list[SensorSummary]:
    """Run every synthetic sensor of ``config.source`` through the kernels; print a summary.

    Returns the per-sensor summaries (also printed to ``out``).
    """
    k, em_cfg, ma_cfg, src = config.kairos, config.emissary, config.master, config.source
    if src.kind != "synthetic":
        raise ValueError(
            f"source.kind is {src.kind!r}: this build runs the synthetic source only "
            "(the Kafka and file sources come with the streaming dataflow)"
        )
    params = KairosParams(
        tau_us=k.tau_us, velocity_span_us=k.velocity_span_us, max_gap_us=k.max_gap_us,
        omega=k.omega, weights=None if k.channel_weights is None else tuple(k.channel_weights),
    )
    sensors = [SyntheticSensor(s.name, s.kind, freq_hz=s.freq_hz, channels=s.channels) for s in src.sensors]
    state = {}
    for s in sensors:
        state[s.name] = (
            LagState(params, channels=s.channels),
            Transducer(EmissaryWindow(em_cfg.tau_max_us, k.omega), em_cfg.witness_interval_us),
            Transducer(MasterWindow(ma_cfg.tau_max_us, ma_cfg.witness_interval_us, k.omega),
                       ma_cfg.witness_interval_us),
        )
    summary = {s.name: SensorSummary(s.name, s.kind) for s in sensors}
    threshold = k.coherence_threshold
    start_us = src.start_us
    bar = _Progress(progress, src.duration_us)
    total = 0
    started = time.monotonic()
    for name, t_us, phase in synthetic_batches(sensors, period_us=src.period_us, duration_us=src.duration_us,
                                               start_us=start_us, seed=src.seed):
        lag, emissary, master = state[name]
        products = lag.push(t_us, phase)
        watermark = int(t_us[-1])  # synthetic input is in order: nothing can be late
        row = summary[name]
        row.samples += t_us.size
        row.products += len(products)
        row.take_emissary(emissary.push(products, t_us, watermark), threshold)
        row.take_master(master.push(products, t_us, watermark))
        total += t_us.size
        bar.update(watermark - start_us, total)
    for name, (_, emissary, master) in state.items():
        summary[name].take_emissary(emissary.flush(), threshold)
        summary[name].take_master(master.flush())
    bar.close(total)
    elapsed = time.monotonic() - started
    rows = list(summary.values())
    _print_summary(rows, out, threshold, total, elapsed)
    return rows


def _print_summary(rows: list[SensorSummary], out: TextIO, threshold: float, total: int, elapsed: float) -> None:
    head = (f"{'sensor':<12} {'kind':<10} {'samples':>9} {'products':>9} "
            f"{'master |T|^2':>13} {'emissary last':>14} {'emissary mean':>14} {'>= I_c':>7}")
    out.write(head + "\n" + "-" * len(head) + "\n")
    for r in rows:
        above = r.emissary_above / r.emissary_points if r.emissary_points else 0.0
        out.write(f"{r.sensor:<12} {r.kind:<10} {r.samples:>9,} {r.products:>9,} "
                  f"{r.master_coherence:>13.4f} {r.emissary_coherence:>14.4f} "
                  f"{r.emissary_mean:>14.4f} {above:>7.1%}\n")
    out.write(f"\n{total:,} samples in {elapsed:.2f} s; coherence threshold I_c = {threshold}; "
              "master = whole-window |T|^2 at the last grid point, '>= I_c' = share of Emissary "
              "grid points at or above I_c\n")
