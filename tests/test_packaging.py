"""`pip install .` gives a working `sluice` command, run from any directory.

The wheel is built from this checkout and installed (without dependencies:
they are this environment's) into a directory of its own; the installed
console script then serves from a directory that holds no part of the
repository: the gunicorn settings, the WSGI app, the templates and the
static files must all come from the package.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest
import requests

from tests.conftest import ROOT, free_port
from tests.util import wait_until

#: Files the server needs at run time that are not Python modules.
PACKAGE_DATA = (
    "sluice/web/templates/live.html",
    "sluice/web/static/js/live/store.js",
    "sluice/web/static/app.css",
)


@pytest.fixture(scope="module")
def installed(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """(wheel, target directory) of this checkout built and installed."""
    # A copy of what a clone holds: a build in the checkout would leave build/
    # there, whose stale files a later build would package.
    source = tmp_path_factory.mktemp("source")
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(ROOT / name, source / name)
    shutil.copytree(
        ROOT / "sluice", source / "sluice", ignore=shutil.ignore_patterns("__pycache__")
    )
    out = tmp_path_factory.mktemp("wheel")
    subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "-q", "-w", str(out), str(source)],
        check=True,
        cwd=out,
        timeout=300,
    )
    wheel = next(out.glob("sluice-*.whl"))
    target = tmp_path_factory.mktemp("site")
    subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "install",
            "--no-deps",
            "-q",
            "--target",
            str(target),
            str(wheel),
        ],
        check=True,
        cwd=out,
        timeout=300,
    )
    return wheel, target


def test_wheel_holds_the_package_data_and_the_console_script(installed):
    wheel, target = installed
    names = set(zipfile.ZipFile(wheel).namelist())
    for path in PACKAGE_DATA:
        assert path in names, f"{path} is missing from the wheel"
    entry_points = next(n for n in names if n.endswith("entry_points.txt"))
    assert "sluice = sluice.cli:main" in zipfile.ZipFile(wheel).read(entry_points).decode()
    assert (target / "bin" / "sluice").exists()


def test_installed_sluice_serves_from_any_directory(installed, redis_url, tmp_path):
    _wheel, target = installed
    port = free_port()
    env = {
        **os.environ,
        # The installed copy, not the checkout: the repository is not on the path.
        "PYTHONPATH": str(target),
        "REDIS_URL": redis_url,
        "HOST": "127.0.0.1",
    }
    process = subprocess.Popen(
        [str(target / "bin" / "sluice"), "serve", "--port", str(port), "--workers", "1"],
        cwd=tmp_path,
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    base = f"http://127.0.0.1:{port}"
    try:

        def healthy() -> bool:
            assert process.poll() is None, process.stderr.read().decode()[-2000:]
            try:
                return requests.get(base + "/api/health", timeout=5).status_code == 200
            except (requests.ConnectionError, requests.Timeout):
                return False  # not listening yet, or a worker still booting on a busy machine

        wait_until(healthy, timeout=30, what="the installed server to answer /api/health")
        page = requests.get(base + "/login", timeout=5)
        assert page.status_code == 200 and "<form" in page.text
        script = requests.get(base + "/static/js/live/store.js", timeout=5)
        assert script.status_code == 200 and "class Store" in script.text
        contract = requests.get(base + "/static/js/contract.js", timeout=5)
        assert "job:state_change" in contract.text
        # It really is the installed copy that serves.
        probe = subprocess.run(
            [sys.executable, "-c", "import sluice; print(sluice.__file__)"],
            cwd=tmp_path,
            env=env,
            capture_output=True,
            text=True,
            check=True,
        )
        assert probe.stdout.strip().startswith(str(target))
    finally:
        process.send_signal(signal.SIGTERM)
        process.wait(timeout=30)
