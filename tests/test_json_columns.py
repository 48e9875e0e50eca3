"""JSON messages read as columns in one parse decode exactly as message by message.

The oracle is the decode step with the columnar read turned off: the same
batches (sensors, times, phases, cells, original bytes), the same dead
letters (reason, text, bytes) and counts, for runs of valid messages and
for runs with any of the ways a message can be wrong or unusual mixed in.
"""

from __future__ import annotations

import json

import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st

import operators.decode.decoder as decoder
from operators.decode import RawMessage, decode_messages

VALID = [
    lambda i: {"sensor": f"s{i % 7}", "t": 1_764_115_200 + i * 0.01, "phase": (i * 0.37) % 6 - 3},
    lambda i: {"sensor": f"s{i % 3}", "t": 1_764_115_200 + i, "phase": i % 5},                 # integers
    lambda i: {"sensor": "v", "t": 1_764_115_200.5 + i, "phase": [0.1 * i, -0.2], "cell": "c1"},
    lambda i: {"sensor": "w", "t": 1_764_115_200 + i / 3, "phase": 1.5, "cell": None, "extra": {"k": [1]}},
]
ODD = [  # each either valid but unusual, or wrong in one way
    b'{"sensor":"a","t":1764115200,"phase":NaN}', b'{"sensor":"","t":1764115200,"phase":1}',
    b'{"sensor":"a","t":"2025-11-26T00:00:00Z","phase":1}', b'{"sensor":"a","t":1e300,"phase":1}',
    b'{"sensor":"a","t":1764115200,"phase":[]}', b'{"sensor":"a","t":1764115200,"phase":[1,null]}',
    b'{"sensor":"a","t":1764115200,"phase":true}', b'{"sensor":"a","t":1764115200}', b'[1,2]', b'',
    b'{"sensor":"a","t":1764115200,"phase":1} {"sensor":"b","t":1764115200,"phase":1}',
    b'{"sensor":"a","sensor":"b","t":1764115200,"phase":1}', b'{"sensor":"a\\u00e9","t":1764115200,"phase":1}',
    b'{"sensor":"a","t":1764115200,\n"phase":1}', b'{"sensor":"\xff","t":1764115200,"phase":1}',
    b'{"sensor":"a","t":99999999999999999999,"phase":1}', b'{"sensor":"a","t":1764115200,"phase":1e999}',
    b'{"sensor":7,"t":1764115200,"phase":1}', b'{"sensor":"a","t":1764115200,"phase":1,"cell":3}',
    b'  {"sensor":"sp","t":1764115200.25,"phase":0.5}  ', b'{"sensor":"a","t":-1e11,"phase":1}',
]


def _run(values: list[bytes], columnar: bool, monkeypatch) -> tuple:
    if not columnar:
        monkeypatch.setattr(decoder, "json_columns", lambda values: None)
    else:
        monkeypatch.undo()
    msgs = [RawMessage(b"k", v, None, "topic", 0, i) for i, v in enumerate(values)]
    d = decode_messages(msgs, ingested=0.0)
    batches = [(b.sensor, b.t_us.tolist(), b.phase.tolist(), b.cell, b.provenance.raw, b.provenance.offset.tolist())
               for b in d.batches]
    dead = [(x.reason, x.error, x.original, x.offset) for x in d.dead]
    return batches, dead, dict(d.counts), d.rows


@settings(max_examples=150, deadline=None)
@given(st.lists(st.one_of(st.tuples(st.just("valid"), st.integers(0, 3), st.integers(0, 10_000)),
                          st.tuples(st.just("odd"), st.integers(0, len(ODD) - 1), st.just(0))), min_size=1,
                max_size=40))
def test_a_run_read_as_columns_decodes_as_message_by_message(spec):
    import pytest

    values = [json.dumps(VALID[k](i)).encode() if kind == "valid" else ODD[k] for kind, k, i in spec]
    with pytest.MonkeyPatch.context() as mp:
        slow = _run(values, False, mp)
    with pytest.MonkeyPatch.context() as mp:
        fast = _run(values, True, mp)
    assert fast == slow


def test_a_clean_run_is_read_as_columns(monkeypatch):
    calls = []
    original = decoder.json_columns
    monkeypatch.setattr(decoder, "json_columns", lambda values: calls.append(len(values)) or original(values))
    values = [json.dumps(VALID[0](i)).encode() for i in range(500)]
    d = decode_messages([RawMessage(b"k", v, None, "topic", 0, i) for i, v in enumerate(values)])
    assert calls == [500] and d.accepted == 500 and not d.dead
    assert np.concatenate([b.t_us for b in d.batches]).size == 500


def test_bytes_that_are_not_utf8_in_a_run_are_a_dead_letter_of_their_own():
    values = [json.dumps(VALID[0](i)).encode() for i in range(3)] + [b'{"sensor":"\xff","t":1764115200,"phase":1}']
    d = decode_messages([RawMessage(b"k", v, None, "topic", 0, i) for i, v in enumerate(values)])
    assert d.accepted == 3 and [x.reason for x in d.dead] == ["malformed"] and d.dead[0].offset == 3
