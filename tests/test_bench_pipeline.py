"""The end-to-end benchmark's harness on a tiny workload: messages, consumer children, counts.

Asserts what the benchmark relies on (every sample produced is counted once,
the wire formats decode to the generated samples, the pipeline's events equal
the offline operators'), never a time.
"""

from __future__ import annotations

import numpy as np
import pytest

from bench.harness import ConsumerHarness
from bench.stages import compute_ceiling, master_state
from bench.suite import check_events
from bench.workloads import PARTITIONS, WorkloadSpec, arrow_messages, generate_workload, json_messages
from operators.decode import RawMessage, decode_messages
from schemas.config import parse_config
from schemas.messages import ARROW_STREAM_CONTENT_TYPE, CONTENT_TYPE_HEADER

# 8 sensors (steady, drifting, noise, ... by index) at 100 Hz for 12 s: the Master matures at 10 s.
TINY = WorkloadSpec("tiny", 8, 100, 12, (1.0, 2.0), seed=3)


@pytest.fixture(scope="module")
def tiny():
    return generate_workload(TINY)


def _decoded(messages: list[RawMessage]) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    out = decode_messages(messages)
    assert not out.dead
    got: dict[str, list] = {}
    for b in out.batches:
        got.setdefault(b.sensor, []).append((b.t_us, b.phase[:, 0]))
    return {s: (np.concatenate([t for t, _ in parts]), np.concatenate([p for _, p in parts]))
            for s, parts in got.items()}


def test_wire_formats_carry_the_generated_samples(tiny):
    arrow = arrow_messages(tiny, 1_000_000)
    json = json_messages(tiny.head(2))
    assert arrow.samples == tiny.samples == TINY.samples
    assert json.samples == json.messages == TINY.sensors * 2 * TINY.rate_hz
    # Each partition's sensors only, in time order, partitions interleaved.
    assert [c.partition for c in arrow.chunks[:PARTITIONS]] == list(range(PARTITIONS))
    header = [(CONTENT_TYPE_HEADER, ARROW_STREAM_CONTENT_TYPE.encode())]
    from_arrow = _decoded([RawMessage(None, c.arrow, header) for c in arrow.chunks])
    from_json = _decoded([RawMessage(k, v) for c in json.chunks for k, v in zip(c.json_keys, c.json_values)])
    for i, name in enumerate(tiny.names):
        t, phase = from_arrow[name]
        assert np.array_equal(t, tiny.t_us) and np.array_equal(phase, tiny.phase[i])
        t, phase = from_json[name]
        assert np.array_equal(t, tiny.t_us[:200]) and np.array_equal(phase, tiny.phase[i, :200])
    partition_of = {name: tiny.partition_of(i) for i, name in enumerate(tiny.names)}
    for c in arrow.chunks:     # a sensor always goes to the same partition
        assert {partition_of[b.sensor] for b in decode_messages([RawMessage(None, c.arrow, header)]).batches} \
            == {c.partition}


@pytest.mark.slow
def test_consumer_children_count_every_sample(bootstrap, tmp_path, tiny):
    harness = ConsumerHarness(bootstrap, tmp_path)
    messages = arrow_messages(tiny, 1_000_000)
    io = harness.run("io", tiny, messages)
    assert io.samples == TINY.samples and io.messages == messages.messages
    engine = harness.run("engine", tiny, messages)
    assert engine.samples == TINY.samples and engine.results == {"decoded": TINY.samples}
    full = harness.run("full", tiny, messages)
    assert full.samples == TINY.samples and full.results == {"accepted": TINY.samples}
    assert full.scraped == full.results
    compute = compute_ceiling(tiny, parse_config({"sink": {"archive": False}}), repeats=1)
    assert compute.samples == TINY.samples and compute.collapses > 0
    # The one pass emits each grid point a sample reaches: every 0.01 s and every 0.1 s (from 0 s to 12 s).
    points = [np.unique(-(-tiny.t_us // interval)).size for interval in (10_000, 100_000)]
    assert compute.rows == (8 * points[0], 8 * points[1]) == (8 * 1_200, 8 * 121)
    check_events("tiny arrow", full, compute)
    assert full.peak_rss_bytes > 0
    head = tiny.head(3)
    as_json = harness.run("full", head, json_messages(head))
    assert as_json.results == {"accepted": head.samples}


def test_master_state_does_not_grow_with_the_rate():
    config = parse_config({"sink": {"archive": False}, "master": {"tau_max": 60.0}})
    slow, fast = master_state(config, 10, 70), master_state(config, 1_000, 5)
    assert slow.state_bytes == fast.state_bytes
    assert slow.products > 0 and fast.products > 0
