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

import json
import logging
import shutil
import signal
import sys
import threading
import time
from datetime import timedelta
from pathlib import Path
from typing import Any, TextIO

from bytewax.recovery import RecoveryConfig, init_db_dir
from bytewax.run import cli_main

from connectors.health import FlowHealth, flow_health
from connectors.endpoint import endpoint_tls, serve
from connectors.metrics import RunLedger, ledger
from flows.kairos import build_flow
from flows.log_context import first_worker, set_flow
from flows.logs import configure_logging, log_uncaught_exceptions
from flows.observer import FlowObserver
from flows.startup import ConfigOrigin, input_partitions, log_startup
from operators.fleet import state_layout
from schemas.config import Config, KafkaSource, SyntheticSource
from schemas.messages import format_utc
from schemas.printable import printable

__all__ = ["RECOVERY_PARTITIONS", "RecoveryMismatch", "Stopped", "bytewax_run_flow", "check_kafka", "recovery_dir",
           "run_flow"]

log = logging.getLogger("becomingone.flow")

#: Partitions of a recovery store ``becomingone run`` creates (fixed for the store's life).
RECOVERY_PARTITIONS = 4


class Stopped(Exception):
    """The run was stopped by a signal and drained; ``signum`` names it."""

    def __init__(self, signum: int) -> None:
        super().__init__(signal.Signals(signum).name)
        self.signum = signum


def recovery_dir(config: Config) -> Path:
    """Where ``becomingone run`` keeps its Bytewax recovery state: ``<memory root>/_recovery``."""
    return config.memory.root / "_recovery"


class RecoveryMismatch(ValueError):
    """The recovery state was made for another input than the config's."""


def _recovery_identity(config: Config) -> dict[str, Any]:
    # What names the flow's state in Bytewax's store: the source's partitions and the key groups;
    # and what reads it back: the layout of a key group's state.
    if config.becomingone.node == "witness":
        return {"source": "witness", "input": config.witness_node.topic, "node": config.witness_node.node}
    src = config.source
    where = src.topic if isinstance(src, KafkaSource) else getattr(src, "path", None)
    return {"source": src.kind, "input": where, "key_groups": config.becomingone.key_groups,
            "state_layout": state_layout(config.becomingone.node == "light")}


def _recovery_config(path: Path, config: Config) -> RecoveryConfig:
    """The store at ``path``, created with :data:`RECOVERY_PARTITIONS` partitions if it has none.

    Raises:
        RecoveryMismatch: the store holds the state of another input (another topic or
            file, another source kind, another ``becomingone.key_groups``).
    """
    identity = _recovery_identity(config)
    stamp = path / "input.json"
    if not any(path.glob("part-*.sqlite3")):
        path.mkdir(parents=True, exist_ok=True)
        init_db_dir(path, RECOVERY_PARTITIONS)
    elif stamp.exists():
        stored = json.loads(stamp.read_text(encoding="utf-8"))
        if stored != identity:
            changed = ", ".join(f"{k} {stored.get(k)!r} -> {identity[k]!r}" for k in identity if stored.get(k) != identity[k])
            raise RecoveryMismatch(
                f"the recovery state in {path} is for another input or state layout ({changed}); remove that "
                f"directory to "
                f"start over (the archive keeps what it holds), point memory.storage.path elsewhere, or run with "
                f"--no-recovery")
    stamp.write_text(json.dumps(identity), encoding="utf-8")
    return RecoveryConfig(path)


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
        return (f"{where}  sensors {self.book.sensor_count():>5,}  samples {accepted:>11,}  "
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
    sensors = book.sensors
    for name, r in sensors.items():   # a raw sensor: its kind is its measured rate (SPEC section 9)
        if r.raw:
            kinds[name] = "raw" if r.rate_hz is None else f"raw {r.rate_hz:g} Hz"
    width = max([10, *(len(k) for k in kinds.values())])
    head = (f"{'sensor':<16} {'kind':<{width}} {'samples':>10} {'rejected':>9} {'collapses':>9} "
            f"{'dissipations':>12} {'coherence':>9}  state")
    out.write(head + "\n" + "-" * len(head) + "\n")
    for name in sorted(sensors):
        r = sensors[name]
        out.write(f"{printable(name):<16} {kinds.get(name, '-'):<{width}} {r.samples:>10,} {r.rejected:>9,} "
                  f"{r.collapses:>9,} {r.dissipations:>12,} {r.coherence_sync:>9.4f}  "
                  f"{'collapsed' if r.collapsed else 'dissipated'}\n")
    _raw_summary(sensors, config, out)
    if book.cells:
        _mesh_summary(book, config, out)
    accepted, rejected, collapses, dissipations = book.totals()
    out.write(f"\n{accepted:,} samples accepted, {rejected:,} rejected (dead letters), {collapses:,} collapse and "
              f"{dissipations:,} dissipate events in {seconds:.1f} s; coherence = |T_sync|^2 at the last "
              f"Emissary grid point, threshold I_c = {config.kairos.coherence_threshold}\n")
    if config.sink.archive:
        out.write(f"archive: {printable(str(config.memory.root))}\n")


def _raw_summary(sensors: dict, config: Config, out: TextIO) -> None:
    """How the raw sensors' phase was made, and the raw sensors that gave none."""
    raw = {name: r for name, r in sensors.items() if r.raw}
    if not raw:
        return
    f_lo, f_hi = config.kairos.phase_band
    method = ("the analytic signal" if config.kairos.phase_method == "hilbert"
              else "2 pi per detected peak (events)")
    out.write(f"\nraw sensors ({len(raw):,}): phase from {method} of the band {f_lo:g} to {f_hi:g} Hz "
              f"(kairos.phase_band), stamped at the filter's centre sample\n")
    for name in sorted(n for n, r in raw.items() if r.no_phase):
        out.write(f"  {printable(name)}: no phase at {raw[name].rate_hz:g} Hz: {raw[name].no_phase}\n")


def _mesh_summary(book: RunLedger, config: Config, out: TextIO) -> None:
    """The mesh's cells at their last row (``*``: the global mesh)."""
    mesh = config.sync.mesh
    threshold = mesh.threshold if mesh.threshold is not None else config.kairos.coherence_threshold
    head = f"{'mesh cell':<16} {'sensors':>10} {'collapses':>9} {'dissipations':>12} {'r':>9} {'R2':>9}  state"
    out.write("\n" + head + "\n" + "-" * len(head) + "\n")
    for name in sorted(book.cells, key=lambda c: (c == "*", c)):
        c = book.cells[name]
        label = "* (global)" if name == "*" else printable(name)
        out.write(f"{label:<16} {c.sensors:>10,} {c.collapses:>9,} {c.dissipations:>12,} {c.r:>9.4f} "
                  f"{c.r2_window:>9.4f}  {'collapsed' if c.collapsed else 'dissipated'}\n")
    out.write(f"r = |Z| of the cell's sensors at its last mesh row, R2 = mean r^2 over {mesh.window:g} s, "
              f"threshold {threshold:g}\n")


def check_kafka(config: Config, timeout: float = 10.0) -> Any:
    """When ``config`` uses Kafka, wait up to ``timeout`` seconds for the cluster to answer
    (a witness node: its own cluster and the audited one; a relay node: both of its clusters; with the
    mesh on, the cluster of every ``sync.mesh.peers`` entry too).

    Before the flow starts, so that a cluster out of reach is one line naming
    the bootstrap address, not a failure inside a Bytewax worker.

    Returns:
        An AdminClient of the node's own cluster (``kafka``), or None (no Kafka, or a relay node).

    Raises:
        connectors.kafka.KafkaUnreachable: no broker answered (a ConnectionError).
        connectors.kafka.KafkaSetupError: librdkafka rejected the settings.
    """
    if config.becomingone.node == "relay":
        from flows.relay import check_relay_clusters

        check_relay_clusters(config, timeout)
        return None
    from connectors.kafka import admin_settings, connect_admin

    clusters = [config.kafka] if config.kafka is not None else []
    if config.becomingone.node == "witness" and config.witness_node.kafka is not None:
        from connectors.flow_topics import audited_cluster

        clusters.append(audited_cluster(config))  # the audited node's cluster
    if config.sync.mesh_enabled:
        from connectors.flow_topics import mesh_peer_cluster

        clusters.extend(mesh_peer_cluster(config, peer) for peer in config.sync.mesh.peers)
    admins = [connect_admin(admin_settings(kafka, client_id=config.becomingone.name), timeout=timeout)
              for kafka in clusters]
    return admins[0] if config.kafka is not None else None


def run_flow(config: Config, *, workers: int = 1, out: TextIO | None = None, progress: TextIO | None = None,
             replay: bool = False, source: Any = None, span: tuple[int, int] | None = None,
             kafka_timeout: float = 10.0, recovery: Path | None = None,
             snapshot_interval: float | None = None, origin: ConfigOrigin | None = None) -> RunLedger:
    """Run the dataflow of ``config`` here until its input ends (or a signal); print the summary.

    ``source`` replaces the config's source (see :func:`flows.kairos.build_flow`);
    ``span`` = (first event time, duration) in us makes the progress line a share.

    With ``recovery`` (a directory; ``becomingone run`` passes :func:`recovery_dir`)
    the flow keeps Bytewax recovery state there and resumes from it: a run killed
    at any moment and run again loses no accepted sample and adds no archive row
    twice.  ``snapshot_interval`` (seconds; None: Bytewax's 10 s) is how often
    the state is snapshotted, so how much a resumed run reads again.  With ``origin`` (where the
    config came from) the startup line is logged once the Kafka cluster answered
    (:func:`flows.startup.log_startup`).  Once a file or synthetic input has been read to its end, the state is
    removed (the next run starts over); a Kafka source's state stays, so the next
    run continues where this one stopped.

    The first SIGINT or SIGTERM stops the sources and drains the flow (what
    was read is integrated, archived and published); a second one aborts
    (KeyboardInterrupt).  After a drained stop the summary is printed and
    :class:`Stopped` raised.

    Raises:
        OSError: the metrics port cannot be bound (the message names it), or
            the Kafka cluster did not answer within ``kafka_timeout`` seconds
            (:class:`connectors.kafka.KafkaUnreachable`, see :func:`check_kafka`).
        connectors.kafka.KafkaSetupError: librdkafka rejected the Kafka settings.
        RecoveryMismatch: ``recovery`` holds the state of another input.
    """
    # The streams of the call, not of the import: a caller may have replaced them since.
    out = sys.stdout if out is None else out
    progress = sys.stderr if progress is None else progress
    health = _begin_health(config)
    if config.metrics.enabled:  # first: /healthz answers while the cluster is checked
        serve(config.metrics.bind, config.metrics.port, endpoint_tls(config.security))
    admin = check_kafka(config, kafka_timeout)
    if origin is not None:
        log_startup(config, origin, input_partitions(config, admin, kafka_timeout))
    book = ledger()
    book.reset()
    observer = FlowObserver.of(config)
    observer.stop.clear()  # an earlier run of this process may have been stopped: Kafka output waits again
    flow = build_flow(config, replay=replay, source=source, recovery=recovery is not None, observer=observer)
    health.running(observer.stop.requested)
    recovery_config = _recovery_config(recovery, config) if recovery is not None else None
    bar = _Progress(progress, book, config, span)
    started = time.monotonic()
    bar.start()
    stopped_by: list[int] = []

    def on_signal(signum, frame) -> None:
        # The first signal stops reading input and drains, so the archive is
        # complete; a second one stops at once.
        if stopped_by:
            raise KeyboardInterrupt
        stopped_by.append(signum)
        observer.stop.request()
        name = "Ctrl-C" if signum == signal.SIGINT else signal.Signals(signum).name
        progress.write(f"\nstopping ({name}): finishing what was read ({name} again to abort)\n")

    handled = (signal.SIGINT, signal.SIGTERM)
    previous = {s: signal.signal(s, on_signal) for s in handled} if _main_thread() else {}
    try:
        cli_main(flow, workers_per_process=workers, recovery_config=recovery_config,
                 epoch_interval=None if snapshot_interval is None else timedelta(seconds=snapshot_interval))
    except BaseException:
        health.finish("failed")
        raise
    else:
        health.finish("stopped")
    finally:
        for s, handler in previous.items():
            signal.signal(s, handler)
        bar.stop.set()
        bar.join()
        bar.write(final=True)
    _summary(book, config, out, time.monotonic() - started, replayed=source is not None)
    if stopped_by:
        raise Stopped(stopped_by[0])
    if recovery is not None and source is None and not _reads_topic(config):
        # The input was read to its end: nothing is left to resume.
        shutil.rmtree(recovery, ignore_errors=True)
    return book


def _begin_health(config: Config) -> FlowHealth:
    """The process's :class:`~connectors.health.FlowHealth`, begun for a flow of ``config``."""
    health = flow_health()
    health.begin(archive=config.memory.root if config.sink.archive else None, kafka=config.kafka is not None)
    return health


def _reads_topic(config: Config) -> bool:
    """True when the flow reads a Kafka topic, whose state a later run continues (a witness node
    reads the audited topic whatever ``source`` says)."""
    return isinstance(config.source, KafkaSource) or config.becomingone.node == "witness"


def _main_thread() -> bool:
    return threading.current_thread() is threading.main_thread()


# --------------------------------------------------------------------------
# `python -m bytewax.run flows.kairos`: the flow of $BECOMINGONE_CONFIG.


def bytewax_run_flow():
    """The flow ``python -m bytewax.run flows.kairos`` runs (``flows.kairos.flow``).

    A bad config, a cluster out of reach or settings librdkafka refuses end
    the process with one line and the exit codes of ``becomingone run``; the
    first SIGTERM drains the flow.
    """
    from schemas.config import ConfigError, load_config

    try:
        config = load_config()
    except ConfigError as exc:
        # Each problem with its key path, as `becomingone` prints them; exit 2 as for a bad config there.
        print(f"becomingone: invalid config:\n{exc}", file=sys.stderr)
        raise SystemExit(2) from None
    configure_logging(config.logging, "becomingone")
    log_uncaught_exceptions()
    set_flow(config.becomingone.name, first_worker(sys.argv))
    health = _begin_health(config)
    observer = FlowObserver.of(config)
    observer.start()  # the endpoint from the start: /healthz while the cluster is checked, /readyz once ready
    admin = _check_kafka_or_exit(config)
    log_startup(config, ConfigOrigin.of(), input_partitions(config, admin))
    _drain_on_sigterm(observer)
    flow = build_flow(config, recovery=_bytewax_recovery(sys.argv), observer=observer)
    health.running(observer.stop.requested)
    return flow


def _check_kafka_or_exit(config: Config) -> Any:
    """Under ``python -m bytewax.run``: a cluster out of reach, or settings librdkafka refuses, is one
    line and exit 1 (2 for the settings), as in ``becomingone run``, not a failure inside a worker.
    Returns what :func:`check_kafka` returns."""
    from connectors.kafka import KafkaSetupError

    try:
        return check_kafka(config)
    except KafkaSetupError as exc:
        log.critical("%s", exc)
        raise SystemExit(2) from None
    except OSError as exc:  # KafkaUnreachable
        log.critical("%s", exc)
        raise SystemExit(1) from None


def _bytewax_recovery(argv: list[str]) -> bool:
    """True when ``python -m bytewax.run`` was given a recovery directory (``-r`` or its variable).

    Bytewax's parser takes any unambiguous prefix of a long option, so ``--rec DIR`` and
    ``--recovery-dir=DIR`` count too.

    >>> _bytewax_recovery(["flows.kairos", "-r", "rec", "-s", "5", "-b", "0"]), _bytewax_recovery(["flows.kairos"])
    (True, False)
    >>> [_bytewax_recovery(["flows.kairos", a, "rec"]) for a in ("--recovery-dir", "--rec=x", "--r", "-rx", "-w")]
    [True, True, True, True, False]
    """
    import os

    def names_recovery(a: str) -> bool:
        if a.startswith("--"):
            name = a.split("=", 1)[0]
            return len(name) > 2 and "--recovery-directory".startswith(name)
        return a.startswith("-r")

    return bool(os.environ.get("BYTEWAX_RECOVERY_DIRECTORY")) or any(names_recovery(a) for a in argv[1:])


def _drain_on_sigterm(observer: FlowObserver) -> None:
    """Under ``python -m bytewax.run``: the first SIGTERM (Kubernetes' stop signal) stops the
    sources and lets the flow drain, as ``becomingone run`` does; a second one aborts."""
    if not _main_thread():
        return

    def on_term(signum: int, frame: Any) -> None:
        if observer.stop.requested():
            raise KeyboardInterrupt
        log.warning("SIGTERM: stopping the sources and draining (a second SIGTERM aborts)")
        observer.stop.request()

    signal.signal(signal.SIGTERM, on_term)
