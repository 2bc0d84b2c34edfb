"""The chaos soak (bench/soak.py), short: every fault kind once, in a fixed order.

Same code as `python bench/soak.py --minutes 30`: its own Redis (AOF, appendfsync
always), gunicorn+gevent with 2 workers, 4 producers, 16 raw SSE consumers and
the live view in Chromium (skipped with a message when Chromium or Playwright is
missing). About 60-90 s. The invariants are the script's; see its docstring.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from bench.soak import FAULT_KINDS, SoakConfig, run_soak

ARTIFACTS = Path(__file__).resolve().parent.parent / "test-artifacts"

pytestmark = pytest.mark.single_node(
    reason="the soak runs a Redis of its own (AOF) and restarts and kills it"
)


@pytest.mark.timeout(600)
def test_chaos_soak_every_fault_once(tmp_path):
    report = run_soak(
        SoakConfig(
            minutes=0,  # a fixed sequence: the run ends when it is done
            seed=1,
            fault_sequence=list(FAULT_KINDS),
            gap_s=(4.0, 4.0),
            workdir=str(tmp_path / "soak"),
        )
    )
    ARTIFACTS.mkdir(exist_ok=True)
    (ARTIFACTS / "soak-report.json").write_text(json.dumps(report, indent=2, default=str) + "\n")
    summary = {
        k: report.get(k)
        for k in ("duration_s", "events", "delivered", "faults", "browser", "notes", "violations")
    }
    print(json.dumps(summary, indent=1, default=str))
    assert "soak_aborted" not in {v["kind"] for v in report["violations"]}, report.get(
        "abort_traceback"
    )
    assert {kind: report["faults_by_kind"].get(kind, 0) for kind in FAULT_KINDS} == {
        kind: 1 for kind in FAULT_KINDS
    }
    assert report["events"]["acknowledged"] > 0
    assert all(n > 0 for n in report["delivered"].values()), report["delivered"]
    assert report["violations"] == [], json.dumps(report["violations"], indent=1, default=str)
