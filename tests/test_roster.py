"""Idle sensors release their windows without changing any value, and the per-process cap
turns sensors beyond it into `capacity` dead letters (SPEC section 8)."""

from __future__ import annotations

import collections
import os
import subprocess
import sys
import textwrap

import numpy as np
import pytest

from operators.params import KairosParams
from operators.resonator import ResonatorSettings
from operators.roster import Roster, SensorCapacity, idle_horizon_us
from schemas.samples import SampleBatch

STEP_US = 10_000  # 100 Hz
BATCH_US = 100_000


def _settings(lateness_us: int = 0) -> ResonatorSettings:
    return ResonatorSettings(KairosParams.from_seconds(0.05, velocity_span=0.01, max_gap=1.0),
                             emissary_window_us=200_000, emissary_interval_us=10_000, master_window_us=1_000_000,
                             master_interval_us=100_000, threshold=0.95, hysteresis=0.05, phase_threshold=0.1,
                             min_span_us=300_000, lateness_us=lateness_us)


def _plan(rng: np.random.Generator) -> dict[str, list[tuple[int, int]]]:
    """Per sensor, the stretches of event time (us) it sends in."""
    plan = {
        "steady": [(0, 12_000_000)],  # drives the key group's event time
        "returns": [(0, 3_000_000), (6_000_000, 9_000_000)],  # collapsed, silent 3 s, back
        "comes-back-soon": [(0, 4_000_000), (4_800_000, 8_000_000)],  # silent less than the horizon
    }
    for k in range(40):  # short-lived ids
        start = int(rng.integers(0, 100)) * BATCH_US
        plan[f"brief-{k}"] = [(start, start + 300_000)]
    return plan


def _batches(plan, rng: np.random.Generator):
    """Batches of 0.1 s of every sensor's samples, with a few out-of-order, late and repeated rows."""
    end = max(stop for stretches in plan.values() for _, stop in stretches)
    for lo in range(0, end, BATCH_US):
        batch = []
        for sensor, stretches in plan.items():
            t = np.arange(lo + STEP_US, lo + BATCH_US + 1, STEP_US)
            t = t[np.any([(t > a) & (t <= b) for a, b in stretches], axis=0)]
            if not t.size:
                continue
            if sensor == "returns" and lo == 6_000_000:
                t = np.concatenate([[2_500_000 + 5_000, 2_990_000], t])  # late, then a repeat
            noise = sensor.startswith("brief") and sensor.endswith("7")
            phase = rng.uniform(-np.pi, np.pi, t.size) if noise else 2 * np.pi * 3.0 * t * 1e-6
            batch.append(SampleBatch(sensor, t.astype(np.int64), phase[:, None]))
        yield batch


def _collect(out: dict, sensor: str, res) -> None:
    got = out[sensor]
    got["emissary"].append((res.emissary.t, res.emissary.T))
    got["master"].append((res.master.t, res.master.T))
    sync = res.sync
    got["sync"].append((sync.t, sync.T_sync, sync.event, sync.collapsed))
    got["dead"].extend(res.reasons)


def _joined(out: dict) -> dict:
    flat = {}
    for sensor, kinds in out.items():
        for kind, parts in kinds.items():
            if kind == "dead":
                flat[sensor, kind] = list(parts)
                continue
            for i, column in enumerate(zip(*parts)):
                arr = np.concatenate(column) if column else np.empty(0)
                flat[sensor, kind, i] = arr
    return flat


def _run(settings, *, release: bool) -> tuple[dict, int]:
    rng = np.random.default_rng(5)
    plan = _plan(rng)
    out: dict = collections.defaultdict(lambda: collections.defaultdict(list))
    capacity = SensorCapacity(10_000)
    roster = Roster(settings, capacity)
    if not release:
        roster.horizon_us = None
    released = 0
    for batch in _batches(plan, rng):
        for b in batch:
            r = roster.resonator(b.sensor)
            res = r.push(b, now_us=0)
            roster.observe(res.watermark)
            _collect(out, b.sensor, res)
        for r, res in roster.release_idle(None):
            released += 1
            _collect(out, r.sensor, res)
    for sensor, r in sorted(roster.state.live.items()):
        _collect(out, sensor, r.flush())
    return _joined(out), released


@pytest.mark.parametrize("lateness_us", [0, 30_000])
def test_releasing_idle_sensors_changes_no_value(lateness_us):
    settings = _settings(lateness_us)
    kept, none_released = _run(settings, release=False)
    released, n_released = _run(settings, release=True)
    assert none_released == 0 and n_released >= 40  # every short-lived id, and the one that returns
    assert kept.keys() == released.keys()
    for key in kept:
        if key[1] == "dead":
            assert kept[key] == released[key], key
        else:
            np.testing.assert_array_equal(kept[key], released[key], err_msg=str(key))
    # The returning sensor was collapsed when it went silent: it dissipates when it comes back,
    # and its late and repeated rows are refused as before.
    events = released["returns", "sync", 2]
    assert (events == 1).sum() >= 2 and (events == 2).sum() >= 1
    assert released["returns", "dead"] == ["late", "duplicate"]


def test_a_sensor_silent_for_less_than_the_horizon_is_not_released():
    settings = _settings()
    roster = Roster(settings, SensorCapacity(10))
    assert idle_horizon_us(settings) == 1_110_000
    for lo in range(0, 3_000_000, BATCH_US):
        for sensor in ("a",) + (("b",) if lo < 1_000_000 else ()):
            t = np.arange(lo + STEP_US, lo + BATCH_US + 1, STEP_US)
            roster.observe(roster.resonator(sensor).push(SampleBatch(sensor, t, np.zeros((t.size, 1))), 0).watermark)
        gone = [r.sensor for r, _ in roster.release_idle(None)]
        if lo <= 2_100_000:
            assert "b" in roster.state.live, lo
        if gone:
            assert gone == ["b"] and lo > 2_100_000
    assert "b" in roster.state.retired and roster.capacity.live == 1


def test_the_cap_counts_live_sensors_and_a_released_one_makes_room():
    settings = _settings()
    capacity = SensorCapacity(2)
    roster = Roster(settings, capacity)
    assert roster.resonator("a") is not None and roster.resonator("b") is not None
    assert roster.resonator("c") is None and capacity.live == 2
    t = np.arange(1, 400) * STEP_US
    roster.observe(roster.resonator("a").push(SampleBatch("a", t, np.zeros((t.size, 1))), 0).watermark)
    assert [r.sensor for r, _ in roster.release_idle(None)] == ["b"]  # b never sent: idle
    assert roster.resonator("c") is not None and capacity.live == 2
    roster.close()
    assert capacity.live == 0


_CHURN = textwrap.dedent("""
    import sys, tracemalloc
    import numpy as np
    from operators.fleet import Fleet
    from operators.params import KairosParams
    from operators.resonator import ResonatorSettings
    from operators.roster import SensorCapacity
    from schemas.samples import SampleBatch

    release = sys.argv[1] == "release"
    settings = ResonatorSettings(KairosParams.from_seconds(1.0, velocity_span=0.1, max_gap=5.0),
        emissary_window_us=1_000_000, emissary_interval_us=10_000, master_window_us=10_000_000,
        master_interval_us=100_000, threshold=0.95, hysteresis=0.05, phase_threshold=0.1, min_span_us=5_000_000)
    fleet = Fleet(settings, SensorCapacity(1_000_000))
    if not release:
        fleet.horizon_us = None
    def live():   # bytes allocated and not freed (NumPy's arrays included)
        return tracemalloc.get_traced_memory()[0]
    tracemalloc.start()
    t0 = 1_700_000_000_000_000
    seconds, per_second = 100, 1_000
    base = None
    for sec in range(seconds):   # one call per second of event time: 1,000 new ids, three samples each
        t = t0 + sec * 1_000_000 + np.arange(1, 4) * 100_000
        fleet.push([SampleBatch(f"id-{k:06d}", t, np.zeros((3, 1)))
                    for k in range(sec * per_second, (sec + 1) * per_second)], 0)
        fleet.release_idle()
        if sec == 19:
            base = live()
    print(live() - base, fleet.live_count(), len(fleet.names) - fleet.live_count())
""")


@pytest.mark.slow
def test_memory_stays_flat_over_a_churn_of_100000_short_lived_ids():
    # In a process of its own, so what it holds is the churn's alone.  1,000 new ids per second
    # of event time, three samples each; the windows reach back 10 s.
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    grow = {}
    for mode in ("release", "keep"):
        proc = subprocess.run([sys.executable, "-c", _CHURN, mode], capture_output=True, text=True,
                              timeout=900, cwd=root)
        assert proc.returncode == 0, proc.stderr
        extra, live, retired = (int(x) for x in proc.stdout.split())
        grow[mode] = (extra, live, retired)
    extra, live, retired = grow["release"]
    assert live < 20_000 and retired > 80_000
    # Past the first 20,000 ids: what 80,000 more cost, per id.
    assert extra / 80_000 < 1_500, grow
    # Kept, each of these short-lived ids holds its rings too (about 1.9 kB against 0.8 kB released, a
    # tombstone's row); a sensor whose windows had filled would hold a megabyte.
    assert grow["keep"][0] > 1.5 * extra, grow


def test_a_flow_beyond_max_sensors_dead_letters_the_newcomers_and_keeps_going(tmp_path, capsys):
    import json

    from connectors.archive import open_dataset
    from flows.run import run_flow
    from schemas.config import parse_config

    config = parse_config({
        "becomingone": {"max_sensors": 2, "key_groups": 1},
        "source": {"kind": "synthetic", "duration": 2.0, "sensors": [
            {"name": "a", "kind": "steady"}, {"name": "b", "kind": "noise"}, {"name": "c", "kind": "steady"}]},
        "memory": {"storage": {"path": str(tmp_path)}},
        "metrics": {"enabled": False},
    })
    totals = run_flow(config).totals()
    letters = [json.loads(line) for line in (tmp_path / "dead-letters" / "worker-0.jsonl").read_text().splitlines()]
    assert {d["reason"] for d in letters} == {"capacity"} and len(letters) == 200
    assert "becomingone.max_sensors" in letters[0]["error"] and "'c'" in letters[0]["error"]
    sensors = set(open_dataset(tmp_path / "input").to_table()["sensor"].to_pylist())
    assert sensors == {"a", "b"}
    accepted, rejected, _, _ = totals
    assert (accepted, rejected) == (400, 200)


def test_a_flow_that_releases_idle_sensors_writes_the_archive_of_one_that_keeps_them(tmp_path, monkeypatch):
    import json

    from connectors.archive import open_dataset
    from flows.run import run_flow
    from operators import fleet
    from schemas.config import parse_config

    t0 = 1_735_689_600.0
    lines = []
    for k in range(1, 1_201):  # 12 s at 100 Hz; "away" is silent from 3 s to 9 s
        t = k * 0.01
        lines.append({"sensor": "stays", "t": t0 + t, "phase": 2 * np.pi * 2.0 * t})
        if t <= 3.0 or t > 9.0:
            lines.append({"sensor": "away", "t": t0 + t, "phase": 2 * np.pi * 3.0 * t})
    path = tmp_path / "samples.jsonl"
    path.write_text("".join(json.dumps(line) + "\n" for line in lines))

    def run(root, release: bool) -> dict:
        if not release:
            monkeypatch.setattr(fleet, "idle_horizon_us", lambda settings: None)
        config = parse_config({
            "becomingone": {"key_groups": 1},  # both sensors in one group: its event time moves on
            "kairos": {"tau_scale": 0.1, "velocity_span": 0.02, "max_gap": 1.0},
            "master": {"tau_max": 2.0, "min_span": 1.0}, "emissary": {"tau_max": 0.5},
            # 50 lines per call (1/4 s of event time), so the flow sees time pass between calls.
            "source": {"kind": "file", "path": str(path), "batch_rows": 50},
            "memory": {"storage": {"path": str(root)}, "signature_interval": 0.1},
            "sync": {"publish_interval": 0.1},
            "metrics": {"enabled": False},
        })
        run_flow(config)
        out = {}
        for name, keys in (("input", ["sensor", "t"]), ("temporal_signatures", ["sensor", "transducer", "t"]),
                           ("coherence_history", ["sensor", "t"]), ("events", ["sensor", "t"])):
            table = open_dataset(root / name).to_table()
            out[name] = table.sort_by([(k, "ascending") for k in keys]).to_pylist()
        return out

    retired: list[str] = []
    original = fleet.Fleet.release_idle

    def counting(self):
        live = self.table.live[:len(self.names)].copy()
        step = original(self)
        retired.extend(self.names[k] for k in np.flatnonzero(live & ~self.table.live[:len(self.names)]))
        return step

    monkeypatch.setattr(fleet.Fleet, "release_idle", counting)
    released = run(tmp_path / "released", release=True)
    assert retired == ["away"]  # released once while silent
    kept = run(tmp_path / "kept", release=False)
    assert released == kept
    away = [e["event"] for e in released["events"] if e["sensor"] == "away"]
    assert away == ["collapse", "dissipate", "collapse"]  # collapsed, gone, back
