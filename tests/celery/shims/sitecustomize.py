"""Put on PYTHONPATH by tests: hides the top-level modules named in
SLUICE_TEST_HIDE_MODULES (comma-separated) as if they were not installed."""

import os
import sys

_HIDDEN = {n for n in os.environ.get("SLUICE_TEST_HIDE_MODULES", "").split(",") if n}


class _Hide:
    @staticmethod
    def find_spec(name, path=None, target=None):
        if name.split(".")[0] in _HIDDEN:
            raise ModuleNotFoundError(f"No module named {name!r}", name=name)
        return None


sys.meta_path.insert(0, _Hide)
