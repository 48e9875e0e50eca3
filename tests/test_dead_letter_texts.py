"""The error text of late, duplicate and future dead letters: times in UTC, the watermark, the bounds.

Built only for rejected rows; event times at either end of what the archive
holds (1677 to 2262) never make it raise.
"""

from __future__ import annotations

import json
import subprocess

import numpy as np
import pytest

from operators.intake import SensorIntake
from operators.params import KairosParams
from schemas.samples import SampleBatch
from tests.conftest import BIN, clean_env

T0 = 1_764_115_200  # 2025-11-26T00:00:00Z


def _cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([str(BIN), *args], capture_output=True, text=True, env=clean_env(), timeout=300)


def test_a_late_dead_letter_names_its_time_and_the_watermark_in_utc(tmp_path):
    data = tmp_path / "samples.jsonl"
    rows = [{"sensor": "s1", "t": T0 + k, "phase": 0.1 * k} for k in range(6)]
    rows.append({"sensor": "s1", "t": T0 + 1.5, "phase": 1.0})  # late: behind the watermark at T0 + 5
    rows.append({"sensor": "s1", "t": T0 + 5, "phase": 1.0})  # duplicate of an accepted time
    rows.append({"sensor": "s1", "t": "2262-04-11T00:00:00Z", "phase": 1.0})  # far future, at the end of time
    data.write_text("".join(json.dumps(r) + "\n" for r in rows))
    cfg = tmp_path / "file.yaml"
    cfg.write_text(f"source:\n  kind: file\n  path: {data}\nmetrics:\n  enabled: false\n"
                   f"memory:\n  storage:\n    path: {tmp_path / 'archive'}\n")
    proc = _cli("run", "--config", str(cfg))
    assert proc.returncode == 0, proc.stderr
    letters = [json.loads(line) for line in
               (tmp_path / "archive" / "dead-letters" / "worker-0.jsonl").read_text().splitlines()]
    errors = {letter["reason"]: letter["error"] for letter in letters}
    assert errors["late"] == ("t 2025-11-26T00:00:01.500000Z is at or before the sensor's watermark "
                              "2025-11-26T00:00:05.000000Z (lateness 0 s)")
    assert errors["duplicate"].startswith("t 2025-11-26T00:00:05.000000Z ")
    assert errors["future"].startswith("t 2262-04-11T00:00:00.000000Z is more than sync.max_future (60 s) ahead")


@pytest.mark.parametrize("first, later, watermark", [
    ("1677-09-22T00:00:00Z", "1677-09-22T00:00:00Z", None),  # duplicate at the start of time
    ("2262-04-10T00:00:00Z", "1677-09-22T00:00:01Z", "2262-04-09T23:59:59.500000Z"),  # late by six centuries
])
def test_rejection_texts_at_the_ends_of_time(first, later, watermark):
    from schemas.timebase import to_micros

    intake = SensorIntake("s", KairosParams.from_seconds(0.02), lateness_us=500_000, max_future_us=None)
    t1, t2 = int(to_micros(first)), int(to_micros(later))
    intake.push(SampleBatch("s", np.array([t1]), np.zeros((1, 1))), now_us=0)
    out = intake.push(SampleBatch("s", np.array([t2]), np.zeros((1, 1))), now_us=0)
    (letter,) = out.dead
    assert letter.error.startswith(f"t {later[:19]}.000000Z ")
    assert out.reasons == (["late"] if watermark else ["duplicate"])
    if watermark:
        assert letter.error.endswith(f"watermark {watermark} (lateness 0.5 s)")


def test_future_text_names_the_bound_and_the_wall_clock():
    intake = SensorIntake("s", KairosParams.from_seconds(0.02), lateness_us=0, max_future_us=60_000_000)
    now = T0 * 1_000_000
    out = intake.push(SampleBatch("s", np.array([now + 61_000_000]), np.zeros((1, 1))), now_us=now)
    (letter,) = out.dead
    assert letter.error == ("t 2025-11-26T00:01:01.000000Z is more than sync.max_future (60 s) ahead of "
                            "the wall clock (2025-11-26T00:00:00.000000Z)")
