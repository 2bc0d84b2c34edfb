"""The operator kit, statically: the Grafana dashboard and the Prometheus alert
rules name only metrics and labels Sluice exports, and aggregate them the right
way. Pure file reading, no subprocess.

promtool's checks of the same files (rules valid, alert unit tests, every
dashboard query parsed, the example scrape config): tests/test_opskit.py.
"""

from __future__ import annotations

import functools
import json
import re
from pathlib import Path

import pytest
from prometheus_client.metrics import MetricWrapperBase
from prometheus_client.process_collector import ProcessCollector

from sluice import metrics

ROOT = Path(__file__).resolve().parents[2]
RULES = ROOT / "deploy" / "prometheus" / "sluice-alerts.yml"
RULES_TEST = ROOT / "deploy" / "prometheus" / "sluice-alerts.test.yml"
SCRAPE_EXAMPLE = ROOT / "deploy" / "prometheus" / "prometheus-fly.yml"
DASHBOARD = ROOT / "deploy" / "grafana" / "sluice-dashboard.json"

#: Gauges read from Redis at scrape time: identical on every worker and every
#: instance, so they are aggregated with max, never summed.
REDIS_GAUGES = (
    "sluice_queue_depth",
    "sluice_queue_consumers",
    "sluice_queue_oldest_age_seconds",
    "sluice_workers_online",
)

#: Labels Prometheus adds to every scraped series (target labels).
TARGET_LABELS = {"instance", "job"}

SUFFIXES = {"counter": ("_total",), "histogram": ("_bucket", "_sum", "_count"), "gauge": ("",)}


def declared() -> dict[str, tuple[str, tuple[str, ...]]]:
    """Every Sluice metric: base name -> (type, label names), from sluice/metrics.py:
    its metric objects, and the gauges its scrape-time collector (`JobGauges`) yields."""
    found: dict[str, tuple[str, tuple[str, ...]]] = {}
    for obj in vars(metrics).values():
        if isinstance(obj, MetricWrapperBase):
            family = obj.describe()[0]
            found[family.name] = (family.type, tuple(obj._labelnames))
    for family in metrics.JobGauges(lambda: []).collect():
        found[family.name] = (family.type, tuple(family._labelnames))  # type: ignore[attr-defined]
    return found


@functools.cache
def exported_samples() -> dict[str, set[str]]:
    """Sample name (as queried) -> the labels a query may use on it."""
    samples: dict[str, set[str]] = {}
    for name, (kind, labels) in declared().items():
        for suffix in SUFFIXES[kind]:
            extra = {"le"} if suffix == "_bucket" else set()
            samples[name + suffix] = set(labels) | extra | TARGET_LABELS
    # The live workers' process metrics, labelled pid (sluice.metrics.WorkerProcesses).
    for family in ProcessCollector(registry=None).collect():
        for sample in family.samples:
            samples[sample.name] = {"pid"} | TARGET_LABELS
    return samples


def rule_exprs() -> dict[str, str]:
    """alert name -> its expression, read from the rules file (the subset of YAML
    it is written in: `expr:` on one line, or `expr: |` and an indented block)."""
    exprs: dict[str, str] = {}
    lines = RULES.read_text().splitlines()
    name = None
    for i, line in enumerate(lines):
        stripped = line.strip()
        if stripped.startswith("- alert:"):
            name = stripped.split(":", 1)[1].strip()
        elif stripped.startswith("expr:"):
            assert name is not None, f"expr before any alert, line {i + 1}"
            value = stripped.split(":", 1)[1].strip()
            if value == "|":
                indent = len(line) - len(line.lstrip())
                block = []
                for following in lines[i + 1 :]:
                    if following.strip() and len(following) - len(following.lstrip()) <= indent:
                        break
                    block.append(following.strip())
                value = " ".join(part for part in block if part)
            exprs[name] = value
    return exprs


def dashboard() -> dict:
    return json.loads(DASHBOARD.read_text())


def all_panels(board: dict) -> list[dict]:
    """Every panel, those nested in collapsed rows included."""
    found = []
    for panel in board["panels"]:
        found.append(panel)
        found.extend(panel.get("panels", []))
    return found


def dashboard_exprs(board: dict | None = None) -> dict[str, str]:
    """ "panel title / refId" -> PromQL, the template variables' queries included
    (as "variable <name>")."""
    board = board or dashboard()
    exprs = {}
    for panel in all_panels(board):
        for target in panel.get("targets", []):
            exprs[f"{panel['title']} / {target['refId']}"] = target["expr"]
    for variable in board["templating"]["list"]:
        if variable["type"] == "query":
            query = variable["query"]
            exprs[f"variable {variable['name']}"] = (
                query["query"] if isinstance(query, dict) else query
            )
    return exprs


@functools.cache
def every_expr() -> dict[str, str]:
    return {
        **{f"rule {k}": v for k, v in rule_exprs().items()},
        **{f"dashboard {k}": v for k, v in dashboard_exprs().items()},
    }


METRIC = re.compile(r"\b((?:sluice|process)_[a-z0-9_]+)\b(\{[^}]*\})?")
MATCHER = re.compile(r"([a-zA-Z_][a-zA-Z0-9_]*)\s*(?:=~|!~|!=|=)")
GROUPING = re.compile(r"\b(?:by|on|without|ignoring)\s*\(([^)]*)\)")


def test_the_tables_of_this_test_are_read():
    exprs = rule_exprs()
    assert len(exprs) >= 10 and all(exprs.values())
    assert "sluice_ingest_events_total" in exported_samples()
    assert "sluice_jobs_total" in exported_samples()
    assert "process_resident_memory_bytes" in exported_samples()


@pytest.mark.parametrize("where", sorted(every_expr()))
def test_every_metric_and_label_is_exported(where):
    expr = every_expr()[where]
    samples = exported_samples()
    names = [m.group(1) for m in METRIC.finditer(expr)]
    assert names, f"{where}: no Sluice metric in {expr!r}"
    for match in METRIC.finditer(expr):
        name, selector = match.group(1), match.group(2) or ""
        assert name in samples, f"{where}: {name} is not a metric Sluice exports"
        for label in MATCHER.findall(selector):
            assert label in samples[name], f"{where}: {name} has no label {label!r}"
    # Every grouping label belongs to one of the metrics of the expression.
    usable = set().union(*(samples[name] for name in names))
    for group in GROUPING.findall(expr):
        for label in filter(None, (part.strip() for part in group.split(","))):
            assert label in usable, f"{where}: no metric of {expr!r} has label {label!r}"


@pytest.mark.parametrize("where", sorted(every_expr()))
def test_redis_derived_gauges_are_never_summed(where):
    expr = every_expr()[where]
    if any(gauge in expr for gauge in REDIS_GAUGES):
        assert not re.search(r"\b(sum|count|avg)\b", expr), (
            f"{where}: a gauge read from Redis is the same on every instance: max it, "
            f"never sum it: {expr!r}"
        )


def test_the_rules_cover_what_the_issue_asks():
    exprs = rule_exprs()
    assert set(exprs) >= {
        "SluiceNoEventsIngested",
        "SluiceConnectionSilent",
        "SluiceJobFailureRateHigh",
        "SluiceQueueDepthHigh",
        "SluiceQueueOldestWaitHigh",
        "SluiceWorkersOffline",
        "SluiceFanoutLagHigh",
        "SluiceRedisErrors",
        "SluiceIngestErrors",
    }
    text = RULES.read_text()
    # Each alert has a `for:`, a severity and both annotations.
    for block in text.split("- alert:")[1:]:
        name = block.split()[0]
        assert "\n        for: " in block, name
        assert re.search(r"severity: (critical|warning)\b", block), name
        assert "summary:" in block and "description:" in block, name


def test_the_dashboard_is_importable():
    board = dashboard()
    assert isinstance(board["schemaVersion"], int) and board["schemaVersion"] >= 36
    assert board["uid"] and board["title"]
    panels = all_panels(board)
    ids = [panel["id"] for panel in panels]
    assert len(ids) == len(set(ids)), "panel ids must be unique"
    assert [p["title"] for p in panels if p["type"] == "row"] == ["Service", "Jobs"]
    variables = {v["name"]: v for v in board["templating"]["list"]}
    assert variables["datasource"]["type"] == "datasource"
    assert variables["datasource"]["query"] == "prometheus"
    assert {"connection", "queue"} <= set(variables)
    # Every query panel reads the datasource variable, nothing hard-wired.
    for panel in panels:
        if panel["type"] == "row":
            continue
        assert panel["datasource"]["uid"] == "${datasource}", panel["title"]
        for target in panel["targets"]:
            assert target["datasource"]["uid"] == "${datasource}", panel["title"]
        # Panels do not overlap, within the 24 columns.
        grid = panel["gridPos"]
        assert grid["x"] + grid["w"] <= 24, panel["title"]
    cells = set()
    for panel in panels:
        grid = panel["gridPos"]
        for x in range(grid["x"], grid["x"] + grid["w"]):
            for y in range(grid["y"], grid["y"] + grid["h"]):
                assert (x, y) not in cells, f"{panel['title']} overlaps another panel"
                cells.add((x, y))


def test_the_job_panels_follow_the_connection_and_queue_variables():
    for where, expr in dashboard_exprs().items():
        if where.startswith("variable"):
            continue
        for name in ("sluice_jobs_total", "sluice_job_", "sluice_queue_"):
            if name in expr:
                assert 'connection=~"$connection"' in expr, where
                assert 'queue=~"$queue"' in expr, where
