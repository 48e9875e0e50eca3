"""The Grafana dashboard of deploy/grafana and the rules of deploy/prometheus use only
metrics a running flow exports.

Every ``becomingone_*`` name in the dashboard's queries and the rules'
expressions is looked up on the ``/metrics`` endpoint of `becomingone run`
reading a Kafka topic: a counter's name stands for ``<name>_total``, a
histogram's for ``_bucket``, ``_sum`` and ``_count``, as prometheus-client
exposes them. The dashboard's queries are also checked as PromQL by
`promtool` (when present).
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import time
import urllib.request
from pathlib import Path

import pytest
import yaml
from prometheus_client.parser import text_string_to_metric_families

from tests.conftest import BIN, WAIT, clean_env, free_port, produce_steady_and_noise, stop_process, unique_topic

DEPLOY = Path(__file__).resolve().parent.parent / "deploy"
DASHBOARD = DEPLOY / "grafana" / "becomingone.json"
RULES = DEPLOY / "prometheus" / "rules.yml"
# A metric name: not the tail of a longer identifier (nor of a recording rule's name:with:colons).
_NAME = re.compile(r"(?<![\w:])becomingone_[A-Za-z0-9_:]*")
# What prometheus-client exposes for a metric family of each type (the family name has no _total).
_SAMPLE_SUFFIXES = {"counter": ("_total", "_created"), "gauge": ("",), "histogram": ("_bucket", "_sum", "_count", "_created"),
                    "summary": ("", "_sum", "_count", "_created"), "info": ("_info",), "unknown": ("",)}


def _dashboard() -> dict:
    return json.loads(DASHBOARD.read_text())


def _panels(dashboard: dict) -> list[dict]:
    out = []
    for panel in dashboard["panels"]:
        out.append(panel)
        out.extend(panel.get("panels", []))  # a collapsed row holds its panels
    return out


def dashboard_queries() -> list[str]:
    """The PromQL of every panel target and every query variable."""
    dashboard = _dashboard()
    queries = [t["expr"] for p in _panels(dashboard) for t in p.get("targets", [])]
    queries += [v["query"]["query"] for v in dashboard["templating"]["list"] if v["type"] == "query"]
    return queries


def rule_expressions() -> list[str]:
    return [rule["expr"] for group in yaml.safe_load(RULES.read_text())["groups"] for rule in group["rules"]]


def metric_names(promql: str) -> set[str]:
    """The ``becomingone_*`` metric names a PromQL expression uses."""
    return set(_NAME.findall(promql))


def exposed_names(text: str) -> set[str]:
    """Every sample name the families of a /metrics text can carry, labelled families with no
    series yet included."""
    return {family.name + suffix for family in text_string_to_metric_families(text)
            for suffix in _SAMPLE_SUFFIXES[family.type]}


def test_names_are_taken_from_promql_as_written():
    expr = ('sum by (le) (rate(becomingone_batch_seconds_bucket{step="decode"}[5m])) / '
            'time() - (becomingone_snapshot_timestamp_seconds > 0) + label_values(becomingone_samples_total, job)'
            ' + foo_becomingone_x + job:becomingone_y:rate5m')
    assert metric_names(expr) == {"becomingone_batch_seconds_bucket", "becomingone_snapshot_timestamp_seconds",
                                  "becomingone_samples_total"}


def test_exposed_names_follow_the_family_types():
    text = ("# HELP a_total x\n# TYPE a_total counter\na_total 1.0\n"
            "# HELP h x\n# TYPE h histogram\n"
            "# HELP g x\n# TYPE g gauge\n")
    assert exposed_names(text) == {"a_total", "a_created", "h_bucket", "h_sum", "h_count", "h_created", "g"}


def test_dashboard_is_importable_and_every_query_follows_the_variables():
    dashboard = _dashboard()
    assert dashboard["schemaVersion"] >= 39 and dashboard["uid"] == "becomingone"
    variables = {v["name"]: v for v in dashboard["templating"]["list"]}
    assert variables["datasource"]["type"] == "datasource" and variables["datasource"]["query"] == "prometheus"
    assert {"job", "instance"} <= set(variables)
    panels = [p for p in _panels(dashboard) if p["type"] != "row"]
    assert len({p["id"] for p in _panels(dashboard)}) == len(_panels(dashboard))
    for panel in panels:
        assert panel["datasource"] == {"type": "prometheus", "uid": "${datasource}"}, panel["title"]
        assert panel["targets"], panel["title"]
        for target in panel["targets"]:
            selectors = re.findall(r"becomingone_\w+(\{[^}]*\})?", target["expr"])
            assert selectors and all('job=~"$job", instance=~"$instance"' in s for s in selectors), target["expr"]
    titles = {p["title"] for p in panels}
    assert {"Throughput by result", "Dead letters by reason", "Consumer lag per partition", "Event latency",
            "Collapsed sensors", "Mesh r per cell", "Archive write duration", "Snapshot duration"} <= titles


def test_dashboard_queries_are_valid_promql(tmp_path):
    """Each query, with the dashboard's variables filled in, as a recording rule `promtool` checks."""
    tool = shutil.which("promtool")
    if tool is None:
        pytest.skip("promtool not installed: apt-get install prometheus")
    filled = [q.replace("$__rate_interval", "1m").replace("$job", ".*").replace("$instance", ".*")
              for q in dashboard_queries() if not q.startswith("label_values(")]
    rules = {"groups": [{"name": "dashboard", "rules": [
        {"record": f"dashboard:query_{k}", "expr": q} for k, q in enumerate(filled)]}]}
    path = tmp_path / "dashboard-queries.yaml"
    path.write_text(yaml.safe_dump(rules))
    proc = subprocess.run([tool, "check", "rules", str(path)], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stdout + proc.stderr


def _scrape(port: int) -> str:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as response:
            return response.read().decode()
    except OSError:
        return ""  # not serving yet


def _value(text: str, name: str, **labels: str) -> float:
    return sum(s.value for family in text_string_to_metric_families(text) for s in family.samples
               if s.name == name and labels.items() <= s.labels.items())


@pytest.mark.slow  # a broker and a whole flow
def test_every_metric_of_the_dashboard_and_rules_is_exported_by_a_running_flow(bootstrap, tmp_path):
    topic, port = unique_topic("test.dashboard"), free_port()
    produce_steady_and_noise(bootstrap, topic, seconds=3.0, seed=7, cell="cell-a")
    config = tmp_path / "config.yaml"
    config.write_text(
        f"source: {{kind: kafka, topic: {topic}, from_beginning: true, stop_at_end: false}}\n"
        f"kafka: {{bootstrap.servers: '{bootstrap}'}}\n"
        "sync: {mesh_enabled: true}\n"
        f"memory: {{storage: {{path: '{tmp_path / 'archive'}'}}}}\n"
        f"metrics: {{port: {port}, per_sensor_labels: true}}\n")
    err = tmp_path / "flow-stderr.txt"
    with open(err, "wb") as stderr:
        flow = subprocess.Popen([str(BIN), "run", "--config", str(config), "--snapshot-interval", "1"],
                                stdout=subprocess.DEVNULL, stderr=stderr, env=clean_env())
    try:
        # Running: samples accepted, the archive written and snapshotted (a hang guard, not a timing).
        text, deadline = "", time.monotonic() + 3 * WAIT
        while not (_value(text, "becomingone_samples_total", result="accepted") > 0
                   and _value(text, "becomingone_snapshot_seconds_count") > 0
                   and _value(text, "becomingone_archive_write_seconds_count") > 0):
            assert flow.poll() is None, f"the flow exited ({flow.returncode}): {err.read_text()}"
            assert time.monotonic() < deadline, f"the flow did not get going: {err.read_text()}"
            time.sleep(0.2)
            text = _scrape(port)
        assert flow.poll() is None
    finally:
        assert stop_process(flow) == 0, err.read_text()

    exported = exposed_names(text)
    used = {name for q in dashboard_queries() + rule_expressions() for name in metric_names(q)}
    assert len(used) >= 20
    assert used - exported == set()
    # The Kafka series the lag and broker panels and alerts read are there, with their labels.
    assert _value(text, "becomingone_kafka_connected") >= 1
    assert any(s.labels.get("topic") == topic for f in text_string_to_metric_families(text)
               for s in f.samples if s.name == "becomingone_source_lag_messages")
    assert _value(text, "becomingone_snapshot_timestamp_seconds") > 0
