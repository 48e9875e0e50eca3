"""A light node (``becomingone.node: light``): intake and Emissary, no Master (SPEC section 7, node types).

What a user sees: ``becomingone run --node light`` collapses a coherent sensor
once its Emissary spans its window, not a noise sensor; the archive holds no
Master rows (``temporal_signatures/`` has Emissary rows only, the Master's
values are NaN) and the values of the per-sensor chain; the topics carry
``t_master: null``; and a sensor's state is a small fraction of a full node's.
The engines' equality on random input is in ``tests/test_columnar.py``,
``tests/test_window_conformance.py`` and ``tests/test_fleet.py``.
"""

from __future__ import annotations

import dataclasses
import io
import json
import math
import pickle
import subprocess

import numpy as np
import pytest

from connectors.archive import open_dataset, verify_archive
from operators.columnar import fleet_products, fleet_resonance
from operators.columnar_reference import fleet_resonance_reference
from operators.columnar_state import FleetState
from operators.columnar_stream import stream_resonance
from operators.fleet import Fleet
from operators.params import KairosParams
from operators.resonator import GridRows, Resonator, ResonatorSettings, resonator_settings
from operators.roster import SensorCapacity, idle_horizon_us
from schemas.config import parse_config
from schemas.samples import SampleBatch
from tests.conftest import BIN, clean_env

EPOCH_US = 1_764_115_200_000_000
W = 200_000  # the Emissary window of the small settings below, us
SMALL = ResonatorSettings(KairosParams(tau_us=50_000, velocity_span_us=10_000), W, 10_000, 1_000_000, 100_000,
                          0.9, 0.05, 0.1, 300_000, light=True)


def _oscillator(t_us: np.ndarray, hz: float = 5.0) -> np.ndarray:
    return (np.mod(2 * np.pi * hz * (t_us - EPOCH_US) * 1e-6, 2 * np.pi) - np.pi)[:, None]


def _engines(t: np.ndarray, phase: np.ndarray, s: ResonatorSettings) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """(grid points, maturity) of one sensor's sync rows from each engine (samples in two calls)."""
    half = len(t) // 2
    r = Resonator("x", s)
    rows = GridRows()
    for part in (slice(0, half), slice(half, None)):
        r.push(SampleBatch("x", t[part], phase[part]), now_us=0, rows=rows)
    r.flush(rows)
    fleet = Fleet(s, SensorCapacity(10))
    steps = [fleet.push([SampleBatch("x", t[part], phase[part])], 0) for part in (slice(0, half), slice(half, None))]
    steps.append(fleet.flush())
    key_group = [np.concatenate(c) for c in zip(*((st.resonance.sync.t, st.resonance.sync.mature) for st in steps))]
    one_pass = fleet_resonance(np.zeros(len(t), int), t, phase, s).sync
    reference = fleet_resonance_reference(np.zeros(len(t), int), t, phase, s).sync
    return {"per-sensor": (rows.sync.t, rows.sync.mature), "key-group": tuple(key_group),
            "one-pass": (one_pass.t, one_pass.mature), "reference": (reference.t, reference.mature)}


@pytest.mark.parametrize("gap", [W, W + 1])
def test_the_emissary_is_mature_once_its_run_of_products_is_a_window_old_and_again_after_a_pause(gap):
    # 1 kHz for 1 s, a pause, 1 s more (one chain).  After the pause the products resume once a sample
    # has a velocity from one after the pause (d = 10 ms later), so they pause 10 ms longer than the
    # samples.  A gap of exactly W between products leaves a product in every window: one run.  A
    # longer one empties the window: a new run, immature for W after its first product.
    first = EPOCH_US + np.arange(1, 1001) * 1_000
    t = np.r_[first, first[-1] + gap - 10_000 + np.arange(0, 1000) * 1_000]
    phase = _oscillator(t)
    products = fleet_products(np.zeros(len(t), int), t, phase, SMALL.params).t
    assert int(products[0]) == EPOCH_US + 61_000          # tau 50 ms after the first velocity (d 10 ms)
    resumed = int(np.argmax(np.diff(products))) + 1
    assert int(products[resumed] - products[resumed - 1]) == gap
    runs = [int(products[0])] + ([int(products[resumed])] if gap > W else [])
    for name, (g, mature) in _engines(t, phase, SMALL).items():
        after = np.searchsorted(runs, g, side="right") - 1  # the run in force at each point
        held = np.searchsorted(products, g, side="right") - np.searchsorted(products, g - W, side="right")
        want = (held > 0) & (g - np.asarray(runs)[after] >= W)
        np.testing.assert_array_equal(mature, want, err_msg=name)
        assert g[np.argmax(mature)] == EPOCH_US + 270_000, name   # the first point >= 61 ms + W


def _samples_file(path, seconds: float) -> None:
    """A clean 1.5 Hz oscillator and uniform noise at 100 Hz, as JSON lines."""
    rng = np.random.default_rng(3)
    lines = []
    for k in range(int(seconds * 100)):
        t = round(EPOCH_US * 1e-6 + k * 0.01, 2)
        lines.append(json.dumps({"sensor": "osc", "t": t, "phase": math.remainder(2 * math.pi * 1.5 * k * 0.01,
                                                                                  2 * math.pi)}))
        lines.append(json.dumps({"sensor": "noise", "t": t, "phase": float(rng.uniform(-math.pi, math.pi))}))
    path.write_text("\n".join(lines) + "\n")


def _file_config(tmp_path, data) -> dict:
    return {"source": {"kind": "file", "path": str(data)}, "metrics": {"enabled": False},
            "memory": {"storage": {"path": str(tmp_path / "archive")}}}


def test_a_light_node_run_collapses_the_coherent_sensor_only_and_archives_no_master(tmp_path):
    data = tmp_path / "samples.jsonl"
    _samples_file(data, seconds=8.0)
    config = {**_file_config(tmp_path, data), "sync": {"mesh_enabled": True}}   # intake, Emissary and mesh
    cfg = tmp_path / "light.yaml"
    cfg.write_text(json.dumps(config))          # JSON is YAML
    proc = subprocess.run([str(BIN), "run", "--node", "light", "--config", str(cfg)], capture_output=True,
                          text=True, env=clean_env(), timeout=300)
    assert proc.returncode == 0, proc.stderr
    assert "1,600 samples accepted, 0 rejected (dead letters), 1 collapse and 0 dissipate events" in proc.stdout

    root = tmp_path / "archive"
    assert verify_archive(root) == {name: [] for name in verify_archive(root)}
    events = open_dataset(root / "events").to_table().to_pylist()
    assert [(e["sensor"], e["event"]) for e in events] == [("osc", "collapse")]
    assert events[0]["t_master_re"] is None and events[0]["delta_phase"] == 0.0   # as on the topic
    assert events[0]["t_sync_re"] == events[0]["t_emissary_re"]
    signatures = open_dataset(root / "temporal_signatures").to_table()
    assert set(signatures["transducer"].to_pylist()) == {"emissary"}
    history = open_dataset(root / "coherence_history").to_table().sort_by([("sensor", "ascending"), ("t", "ascending")])
    assert all(math.isnan(x) for x in history["coherence_master"].to_pylist())
    assert set(history["delta_phase"].to_pylist()) == {0.0}
    mesh = open_dataset(root / "mesh_sync").to_table()
    assert mesh.num_rows and set(mesh["n_sensors"].to_pylist()) == {2}     # the mesh runs on a light node
    macro = [json.loads(p)["payload"] for p, layer in zip(*open_dataset(root / "witnessing_logs").to_table()
                                                          .select(["payload", "layer"]).to_pydict().values())
             if layer == "macro"]
    assert [(m["coherence_master"], m["master_span"], m["event"]["t_master"]) for m in macro] == [(None, None, None)]

    # The values are the per-sensor chain's for the same samples and settings.
    settings = resonator_settings(parse_config({**config, "becomingone": {"node": "light"}}))
    for sensor in ("noise", "osc"):
        rows = [json.loads(line) for line in data.read_text().splitlines()]
        mine = [r for r in rows if r["sensor"] == sensor]
        t = np.array([round(r["t"] * 1e6) for r in mine], np.int64)
        r = Resonator(sensor, dataclasses.replace(settings, max_future_us=None))
        grid = GridRows()
        r.push(SampleBatch(sensor, t, np.array([[x["phase"]] for x in mine])), now_us=0, rows=grid)
        r.flush(grid)
        sv = grid.sync
        on_grid = sv.t % 1_000_000 == 0
        archived = history.filter(np.array(history["sensor"].to_pylist()) == sensor)
        want_t = [int(x) for x in sv.t[on_grid]]
        assert [int(x.timestamp() * 1e6) for x in archived["t"].to_pylist()] == want_t
        np.testing.assert_allclose(archived["coherence_sync"].to_numpy(), sv.coherence_sync[on_grid], rtol=0,
                                   atol=1e-12)
        assert archived["state"].to_pylist() == ["collapsed" if c else "dissipated" for c in sv.collapsed[on_grid]]
        changed = sv.event != 0
        assert [int(e["t"].timestamp() * 1e6) for e in events if e["sensor"] == sensor] == sv.t[changed].tolist()


def test_a_full_node_on_the_same_samples_waits_for_its_master(tmp_path):
    # The contrast: 8 s of samples are short of master.min_span (10 s), so a full node does not collapse.
    from flows.run import run_flow

    data = tmp_path / "samples.jsonl"
    _samples_file(data, seconds=8.0)
    config = parse_config({**_file_config(tmp_path, data), "sink": {"archive": False}})
    book = run_flow(config, out=io.StringIO(), progress=io.StringIO())
    assert book.totals() == (1_600, 0, 0, 0)


def test_the_topic_messages_of_a_light_node_carry_no_master():
    # The resonate step driven directly, with Kafka on: collapse and sync messages and macro records.
    from prometheus_client import CollectorRegistry

    from connectors.metrics import PipelineMetrics, RunLedger
    from flows.emit import TopicBlock, TopicRecord
    from flows.observer import FlowObserver
    from flows.resonate import ResonateLogic
    from operators.params import dead_letter_limits
    from operators.witness import WitnessEntry
    from schemas.messages import CollapseEvent, SyncRecord, from_json_bytes
    from schemas.samples import SampleRuns

    config = parse_config({"becomingone": {"node": "light"}, "sink": {"archive": False}, "metrics": {"enabled": False},
                           "kafka": {"bootstrap.servers": "localhost:9092"}})
    observer = FlowObserver(metrics=PipelineMetrics(CollectorRegistry()), ledger=RunLedger())
    logic = ResonateLogic(config, resonator_settings(config, replay=True), dead_letter_limits(config), None,
                          SensorCapacity(10), False, observer)
    t = EPOCH_US + np.arange(1, 501) * 10_000
    out, _ = logic.on_batch([[SampleRuns.of([SampleBatch("osc", t, _oscillator(t, 1.5))])]])
    (emitted,) = out
    records = emitted.records
    (collapse,) = [from_json_bytes(CollapseEvent, r.value) for r in records
                   if isinstance(r, TopicRecord) and r.role == "collapse"]
    assert collapse.t_master is None and collapse.delta_phase == 0.0 and collapse.t_sync == collapse.t_emissary
    syncs = [from_json_bytes(SyncRecord, v) for r in records if isinstance(r, TopicBlock) and r.role == "sync"
             for v in r.values]
    assert len(syncs) == 5 and all(s.t_master is None for s in syncs)
    assert [s.mature for s in syncs] == [False, False, True, True, True]   # products from 1.11 s on
    (macro,) = [e.payload for e in emitted.witness if isinstance(e, WitnessEntry)]
    assert (macro.coherence_master, macro.master_span, macro.coherence_emissary) == (None, None, 1.0)


def _state_per_sensor(light: bool) -> tuple[float, float]:
    """(bytes held, bytes pickled) per sensor: four 10 Hz sensors for just over an hour of event time in
    calls of one second, the default config (Emissary 1 s at 0.01 s, Master 3600 s at 0.1 s)."""
    settings = resonator_settings(parse_config({"becomingone": {"node": "light" if light else "full"}}), replay=True)
    state = FleetState(settings, channels=1)
    rng = np.random.default_rng(0)
    for second in range(3_660):
        t = np.tile(EPOCH_US + second * 1_000_000 + np.arange(1, 11) * 100_000, 4)
        phase = _oscillator(t, 1.3) + rng.normal(0, 0.05, (40, 1))
        stream_resonance(state, np.repeat(np.arange(4), 10), t, phase)
    state.compact()
    return state.nbytes() / 4, len(pickle.dumps(state, protocol=pickle.HIGHEST_PROTOCOL)) / 4


def test_a_light_node_holds_a_small_fraction_of_a_full_nodes_state_per_sensor():
    full_held, full_pickled = _state_per_sensor(light=False)
    light_held, light_pickled = _state_per_sensor(light=True)
    assert full_held > 864_000 and full_pickled > 864_000     # the Master's hour of panes
    assert light_held < full_held / 100 and light_pickled < full_pickled / 100
    # The per-sensor chain allocates no Master at all; idle sensors go once the Emissary's reach has passed.
    assert Resonator("x", SMALL).master is None and Resonator("x", SMALL).master_state_bytes == 0
    default = resonator_settings(parse_config({}))
    assert idle_horizon_us(dataclasses.replace(default, light=True)) == 5_010_000   # max_gap + 0.01 s
    assert idle_horizon_us(default) == 3_600_110_000


def test_a_recovery_store_of_a_full_node_is_refused_by_a_light_node(tmp_path):
    from flows.run import RecoveryMismatch, _recovery_config

    full = parse_config({"memory": {"storage": {"path": str(tmp_path)}}})
    light = parse_config({"memory": {"storage": {"path": str(tmp_path)}}, "becomingone": {"node": "light"}})
    store = tmp_path / "_recovery"
    _recovery_config(store, full)
    with pytest.raises(RecoveryMismatch, match=r"state_layout 'fleet [0-9.]+' -> 'fleet [0-9.]+ light'"):
        _recovery_config(store, light)
