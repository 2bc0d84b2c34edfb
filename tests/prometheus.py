"""A Prometheus server of a test's own (Debian's `prometheus` and `promtool`),
and scraping `GET /metrics`: shared by tests/test_metrics.py and
tests/test_job_metrics.py. Without the package the tests that need it are
skipped, saying why."""

from __future__ import annotations

import shutil
import subprocess
import time
import uuid
from pathlib import Path

import pytest
import requests

from tests.conftest import ARTIFACTS, free_port
from tests.util import wait_until

PROMETHEUS = shutil.which("prometheus")
PROMTOOL = shutil.which("promtool")
needs_prometheus = pytest.mark.skipif(
    PROMETHEUS is None or PROMTOOL is None,
    reason="needs Debian's prometheus package (prometheus and promtool on PATH): "
    "apt-get install prometheus (.ci/run installs it)",
)
TOKEN = "metrics-" + uuid.uuid4().hex


class Prometheus:
    """A Prometheus server of the test's own: scrapes one target every second."""

    def __init__(self, tmp: Path, target: str, token: str) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        config = tmp / "prometheus.yml"
        config.write_text(
            "global:\n"
            "  scrape_interval: 1s\n"
            "  scrape_timeout: 1s\n"
            "scrape_configs:\n"
            "  - job_name: sluice\n"
            "    authorization:\n"
            f"      credentials: {token}\n"
            "    static_configs:\n"
            f"      - targets: ['{target}']\n"
        )
        ARTIFACTS.mkdir(exist_ok=True)
        self.log_path = ARTIFACTS / f"prometheus-{self.port}.log"
        with open(self.log_path, "ab") as log:
            self.process = subprocess.Popen(
                [
                    str(PROMETHEUS),
                    f"--config.file={config}",
                    f"--storage.tsdb.path={tmp / 'tsdb'}",
                    f"--web.listen-address=127.0.0.1:{self.port}",
                    "--log.level=warn",
                ],
                stdout=log,
                stderr=subprocess.STDOUT,
            )
        wait_until(self._ready, timeout=60, what=f"Prometheus ready (log: {self.log_path})")

    def _ready(self) -> bool:
        if self.process.poll() is not None:
            raise RuntimeError(
                f"prometheus exited with {self.process.returncode}; see {self.log_path}"
            )
        try:
            return requests.get(self.url + "/-/ready", timeout=1).status_code == 200
        except requests.RequestException:
            return False

    def query(self, expr: str) -> float | None:
        """The instant value of `expr` (one series), None when it has none."""
        response = requests.get(self.url + "/api/v1/query", params={"query": expr}, timeout=5)
        response.raise_for_status()
        result = response.json()["data"]["result"]
        assert len(result) <= 1, (expr, result)
        return float(result[0]["value"][1]) if result else None

    def vector(self, expr: str) -> dict[tuple[tuple[str, str], ...], float]:
        """Every series of `expr`: its labels (sorted pairs) -> its value."""
        response = requests.get(self.url + "/api/v1/query", params={"query": expr}, timeout=5)
        response.raise_for_status()
        return {
            tuple(sorted(item["metric"].items())): float(item["value"][1])
            for item in response.json()["data"]["result"]
        }

    def wait_for(self, expected: dict[str, float], timeout: float = 30) -> None:
        """Poll until every expression has exactly its expected value."""
        deadline = time.monotonic() + timeout
        while True:
            got = {expr: self.query(expr) for expr in expected}
            if got == expected:
                return
            if time.monotonic() > deadline:
                wrong = {e: (got[e], want) for e, want in expected.items() if got[e] != want}
                raise AssertionError(f"Prometheus has (got, wanted): {wrong}")
            time.sleep(0.25)

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=15)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()


def scrape(url: str, token: str | None = TOKEN) -> requests.Response:
    headers = {"Authorization": f"Bearer {token}"} if token is not None else {}
    return requests.get(url + "/metrics", headers=headers, timeout=10)
