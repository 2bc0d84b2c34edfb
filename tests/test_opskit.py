"""The operator kit, checked by Debian's promtool (a subprocess, so not in the
unit tier; nothing else is started, no Redis): the shipped alert rules are
valid, their unit tests (deploy/prometheus/sluice-alerts.test.yml: synthetic
series, alerts that must fire and must not) pass, every query of the Grafana
dashboard parses as PromQL, and the example scrape config for Fly.io is valid.

Names, labels and aggregation of the same files: tests/unit/test_opskit.py.
"""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path

import pytest

from tests.unit.test_opskit import RULES, RULES_TEST, SCRAPE_EXAMPLE, dashboard_exprs, rule_exprs

PROMTOOL = shutil.which("promtool")

pytestmark = pytest.mark.skipif(
    PROMTOOL is None,
    reason="needs promtool (Debian's prometheus package): apt-get install prometheus",
)

#: Grafana's variables, replaced by values PromQL accepts.
GRAFANA_VARIABLES = {
    "$__rate_interval": "5m",
    "$instance": ".*",
    "$connection": ".*",
    "$queue": ".*",
}


def promtool(*args: str, cwd: Path | None = None) -> str:
    assert PROMTOOL is not None
    done = subprocess.run([PROMTOOL, *args], cwd=cwd, capture_output=True, text=True, timeout=60)
    output = done.stdout + done.stderr
    assert done.returncode == 0, f"promtool {' '.join(args)} failed:\n{output}"
    return output


def test_the_alert_rules_are_valid():
    assert "SUCCESS" in promtool("check", "rules", str(RULES))


def test_the_alerts_fire_and_stay_silent_as_their_unit_tests_say():
    """`promtool test rules` evaluates the rules over the synthetic series of the
    test file and compares the alerts (labels and rendered annotations) at each
    eval_time; a missing or an extra alert fails."""
    assert "SUCCESS" in promtool("test", "rules", str(RULES_TEST))


def test_every_dashboard_query_parses(tmp_path):
    """Each panel's and variable's query, with Grafana's variables given values,
    becomes a recording rule that `promtool check rules` parses."""
    lines = ["groups:", "  - name: dashboard", "    rules:"]
    count = 0
    for where, expr in sorted(dashboard_exprs().items()):
        if expr.startswith("label_values("):
            # Grafana's own function: label_values(<selector>, <label>).
            expr = expr[len("label_values(") : expr.rindex(",")]
        for variable, value in GRAFANA_VARIABLES.items():
            expr = expr.replace(variable, value)
        assert "$" not in expr, f"{where}: an unknown variable in {expr!r}"
        lines += [f"      - record: dashboard:query_{count}", f"        expr: {json.dumps(expr)}"]
        count += 1
    rules = tmp_path / "dashboard-queries.yml"
    rules.write_text("\n".join(lines) + "\n")
    assert f"SUCCESS: {count} rules found" in promtool("check", "rules", str(rules))


def test_the_fly_scrape_config_example_is_valid(tmp_path):
    """The example config, with its token file present (promtool checks that it
    exists) and the rules file beside it, as the docs say."""
    token = tmp_path / "sluice-metrics-token"
    token.write_text("a-token\n")
    text = SCRAPE_EXAMPLE.read_text()
    assert "/etc/prometheus/sluice-metrics-token" in text
    config = tmp_path / "prometheus.yml"
    config.write_text(text.replace("/etc/prometheus/sluice-metrics-token", str(token)))
    shutil.copy(RULES, tmp_path / RULES.name)
    output = promtool("check", "config", str(config))
    assert "SUCCESS" in output and f"{len(rule_exprs())} rules found" in output
