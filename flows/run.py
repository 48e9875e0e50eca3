"""``becomingone run``: the dataflow in this process, with live progress and a closing summary.

The flow is :func:`flows.kairos.build_flow` run by Bytewax's own runner
(``cli_main``) with ``workers`` worker threads.  While it runs, a line on
stderr shows samples accepted and rejected, collapse and dissipate events,
and how far event time has come (as a share of the run for the synthetic
source); at the end a table per sensor says what each did.  The numbers come
from the run ledger the operators keep (:mod:`connectors.metrics`), so they
are this process's view.
"""

from __future__ import annotations

import signal
import sys
import threading
import time
from typing import Any, TextIO

from bytewax.run import cli_main

from connectors.metrics import RunLedger, ledger, serve
from flows.kairos import build_flow
from flows.sources import clear_stop_request, request_stop
from schemas.config import Config, SyntheticSource
from schemas.messages import format_utc
from schemas.printable import printable

__all__ = ["check_kafka", "run_flow"]


class _Progress(threading.Thread):
    """One live line on a terminal; a line every ``period`` seconds otherwise."""

    def __init__(self, stream: TextIO, book: RunLedger, config: Config,
                 span: tuple[int, int] | None = None) -> None:
        super().__init__(name="becomingone-progress", daemon=True)
        self.stream, self.book = stream, book
        self.tty = stream.isatty()
        self.period = 0.25 if self.tty else 5.0
        src = config.source
        self.span = span or ((src.start_us, src.duration_us) if isinstance(src, SyntheticSource) else None)
        self.started = time.monotonic()
        self.stop = threading.Event()

    def line(self) -> str:
        accepted, rejected, collapses, dissipations = self.book.totals()
        elapsed = max(time.monotonic() - self.started, 1e-9)
        wm = self.book.newest_watermark
        if wm is None:
            where = "event time -"
        elif self.span is not None:
            where = f"event time {min(max((wm - self.span[0]) / self.span[1], 0.0), 1.0):6.1%}"
        else:
            where = f"watermark {format_utc(wm)}"
        return (f"{where}  sensors {len(self.book.sensors):>5,}  samples {accepted:>11,}  "
                f"({accepted / elapsed:>10,.0f}/s)  rejected {rejected:>7,}  "
                f"collapse {collapses:>4,}  dissipate {dissipations:>4,}")

    def run(self) -> None:
        while not self.stop.wait(self.period):
            self.write(final=False)

    def write(self, final: bool) -> None:
        if self.tty:
            self.stream.write("\r" + self.line() + ("\n" if final else ""))
        else:
            self.stream.write(self.line() + "\n")
        self.stream.flush()


def _summary(book: RunLedger, config: Config, out: TextIO, seconds: float, replayed: bool = False) -> None:
    kinds = {s.name: s.kind for s in config.source.sensors} if isinstance(config.source, SyntheticSource) else {}
    if replayed:
        kinds = {}
    # 'rejected' per sensor counts the event-time step's dead letters (duplicate,
    # late, future, channels); the total line counts every dead letter.
    head = (f"{'sensor':<16} {'kind':<10} {'samples':>10} {'rejected':>9} {'collapses':>9} "
            f"{'dissipations':>12} {'coherence':>9}  state")
    out.write(head + "\n" + "-" * len(head) + "\n")
    for name in sorted(book.sensors):
        r = book.sensors[name]
        out.write(f"{printable(name):<16} {kinds.get(name, '-'):<10} {r.samples:>10,} {r.rejected:>9,} {r.collapses:>9,} "
                  f"{r.dissipations:>12,} {r.coherence_sync:>9.4f}  {'collapsed' if r.collapsed else 'dissipated'}\n")
    accepted, rejected, collapses, dissipations = book.totals()
    out.write(f"\n{accepted:,} samples accepted, {rejected:,} rejected (dead letters), {collapses:,} collapse and "
              f"{dissipations:,} dissipate events in {seconds:.1f} s; coherence = |T_sync|^2 at the last "
              f"Emissary grid point, threshold I_c = {config.kairos.coherence_threshold}\n")
    if config.sink.archive:
        out.write(f"archive: {printable(str(config.memory.root))}\n")


def check_kafka(config: Config, timeout: float = 10.0) -> None:
    """When ``config`` uses Kafka, wait up to ``timeout`` seconds for the cluster to answer.

    Before the flow starts, so that a cluster out of reach is one line naming
    the bootstrap address, not a failure inside a Bytewax worker.

    Raises:
        connectors.kafka.KafkaUnreachable: no broker answered (a ConnectionError).
        connectors.kafka.KafkaSetupError: librdkafka rejected the settings.
    """
    if config.kafka is None:
        return
    from connectors.kafka import admin_settings, connect_admin

    connect_admin(admin_settings(config.kafka, client_id=config.becomingone.name), timeout=timeout)


def run_flow(config: Config, *, workers: int = 1, out: TextIO = sys.stdout, progress: TextIO = sys.stderr,
             replay: bool = False, source: Any = None, span: tuple[int, int] | None = None,
             kafka_timeout: float = 10.0) -> RunLedger:
    """Run the dataflow of ``config`` here until its input ends (or Ctrl-C); print the summary.

    ``source`` replaces the config's source (see :func:`flows.kairos.build_flow`);
    ``span`` = (first event time, duration) in us makes the progress line a share.

    Raises:
        OSError: the metrics port cannot be bound (the message names it), or
            the Kafka cluster did not answer within ``kafka_timeout`` seconds
            (:class:`connectors.kafka.KafkaUnreachable`, see :func:`check_kafka`).
        connectors.kafka.KafkaSetupError: librdkafka rejected the Kafka settings.
    """
    check_kafka(config, kafka_timeout)
    if config.metrics.enabled:
        serve(config.metrics.bind, config.metrics.port)
    book = ledger()
    book.reset()
    clear_stop_request()  # an earlier run of this process may have been stopped
    flow = build_flow(config, replay=replay, source=source, recovery=False)  # cli_main below: no recovery
    bar = _Progress(progress, book, config, span)
    started = time.monotonic()
    bar.start()
    interrupted = threading.Event()

    def on_interrupt(signum, frame) -> None:
        # First Ctrl-C: stop reading input and drain as at end of input, so
        # the archive is complete; a second one stops at once.
        if interrupted.is_set():
            raise KeyboardInterrupt
        interrupted.set()
        request_stop()
        progress.write("\nstopping: finishing what was read (Ctrl-C again to abort)\n")

    previous = signal.signal(signal.SIGINT, on_interrupt) if _main_thread() else None
    try:
        cli_main(flow, workers_per_process=workers)
    finally:
        if previous is not None:
            signal.signal(signal.SIGINT, previous)
        bar.stop.set()
        bar.join()
        bar.write(final=True)
    _summary(book, config, out, time.monotonic() - started, replayed=source is not None)
    if interrupted.is_set():
        raise KeyboardInterrupt
    return book


def _main_thread() -> bool:
    return threading.current_thread() is threading.main_thread()
