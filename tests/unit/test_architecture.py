"""The package graph has no loops and no forbidden edges (issue 8).

Rules (the README's architecture section says why):

- ``models`` imports nothing of ours: it is the contract both sides import.
- ``edge`` never imports ``cloud``, ``edgeship``, ``tests`` or ``bench``: the device installs without them.
- ``cloud`` imports from ``edge`` only ``edge.runtimes`` — declared shared: the parity gate must run the
  device's own runtime plugins (the one exception, listed in ``SHARED``).
- ``firmware_bridge`` talks to the agent over HTTP: it imports neither ``edge`` nor ``cloud``.
- Inside ``edge``: ``monitoring`` and ``store`` and ``runtimes`` never import ``serving`` or ``delivery``;
  ``serving`` and ``delivery`` never import each other; only ``edge.agent`` wires them together.

Every ``import`` statement counts, also those inside functions (lazy imports are still dependencies).
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
OURS = ("models", "edge", "cloud", "edgeship", "firmware_bridge", "tests", "bench")
SHARED = {("cloud", "edge.runtimes")}  # (importer package, imported module prefix)

FORBIDDEN: dict[str, tuple[str, ...]] = {
    "models": ("edge", "cloud", "edgeship", "firmware_bridge", "tests", "bench"),
    "edge": ("cloud", "edgeship", "firmware_bridge", "tests", "bench"),
    "cloud": ("edge", "edgeship", "firmware_bridge", "tests", "bench"),
    "firmware_bridge": ("edge", "cloud", "tests", "bench"),
    "edge.monitoring": ("edge.serving", "edge.delivery", "edge.agent"),
    "edge.store": ("edge.serving", "edge.delivery", "edge.agent"),
    "edge.runtimes": ("edge.serving", "edge.delivery", "edge.store", "edge.monitoring", "edge.agent"),
    "edge.serving": ("edge.delivery", "edge.agent"),
    "edge.delivery": ("edge.serving", "edge.agent"),
}


def imports_of(path: Path) -> list[tuple[int, str]]:
    """Every absolute module an ``import`` in ``path`` names, with its line."""
    tree = ast.parse(path.read_text(), filename=str(path))
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found += [(node.lineno, alias.name) for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            found.append((node.lineno, node.module))
            # ``from edge import serving`` imports edge.serving
            found += [(node.lineno, f"{node.module}.{alias.name}") for alias in node.names]
    return found


def module_name(path: Path, root: Path = ROOT) -> str:
    rel = path.relative_to(root).with_suffix("")
    parts = list(rel.parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def _within(name: str, prefix: str) -> bool:
    return name == prefix or name.startswith(prefix + ".")


def violations(files: list[Path], root: Path = ROOT) -> list[str]:
    out = []
    for path in files:
        me = module_name(path, root)
        rules = [(pkg, banned) for pkg, banned in FORBIDDEN.items() if _within(me, pkg)]
        for line, target in imports_of(path):
            for pkg, banned in rules:
                for b in banned:
                    if not _within(target, b):
                        continue
                    if any(_within(me, imp) and _within(target, shared) for imp, shared in SHARED):
                        continue
                    out.append(f"{path.relative_to(root)}:{line}: {me} imports {target} ({pkg} may not import {b})")
    return out


def package_files() -> list[Path]:
    return sorted(p for top in ("models", "edge", "cloud", "edgeship", "firmware_bridge") for p in (ROOT / top).rglob("*.py"))


def test_no_forbidden_imports() -> None:
    bad = violations(package_files())
    assert not bad, "forbidden imports:\n" + "\n".join(bad)


@pytest.mark.parametrize(
    ("where", "source", "expected"),
    [
        ("edge/x.py", "from cloud.training import gates\n", "edge may not import cloud"),
        ("edge/x.py", "def f():\n    import edgeship.logs\n", "edge may not import edgeship"),
        ("models/x.py", "from edge.serving.errors import RequestError\n", "models may not import edge"),
        ("cloud/x.py", "from edge.serving import predictor\n", "cloud may not import edge"),
        ("edge/serving/x.py", "from edge import delivery\n", "edge.serving may not import edge.delivery"),
        ("edge/store/x.py", "from edge.serving.pipeline import Serving\n", "edge.store may not import edge.serving"),
    ],
)
def test_the_checker_catches_a_forbidden_import(tmp_path, where, source, expected) -> None:
    path = tmp_path / where
    path.parent.mkdir(parents=True)
    path.write_text(source)
    bad = violations([path], root=tmp_path)
    assert bad and expected in bad[0], bad


def test_the_declared_exception_is_allowed(tmp_path) -> None:
    path = tmp_path / "cloud" / "x.py"
    path.parent.mkdir(parents=True)
    path.write_text("from edge.runtimes import get_runtime\n")
    assert violations([path], root=tmp_path) == []


_METRIC_TYPES = {"Counter", "Gauge", "Histogram", "Summary", "Info", "Enum", "GaugeMetricFamily", "CounterMetricFamily"}


def metric_definitions(path: Path) -> list[int]:
    """Lines of ``path`` that create a Prometheus metric (a prometheus_client type called)."""
    tree = ast.parse(path.read_text())
    imported = {
        alias.asname or alias.name
        for node in ast.walk(tree)
        if isinstance(node, ast.ImportFrom) and (node.module or "").startswith("prometheus_client")
        for alias in node.names
        if alias.name in _METRIC_TYPES
    }
    return [
        node.lineno
        for node in ast.walk(tree)
        if isinstance(node, ast.Call) and isinstance(node.func, ast.Name) and node.func.id in imported
    ]


def test_every_agent_metric_is_defined_in_the_metrics_module() -> None:
    """One module per process kind owns every metric's name, help and labels (issue 8)."""
    owner = ROOT / "edge" / "monitoring" / "metrics.py"
    stray = [
        f"{p.relative_to(ROOT)}:{line}"
        for p in sorted((ROOT / "edge").rglob("*.py"))
        if p != owner
        for line in metric_definitions(p)
    ]
    assert not stray, "define agent metrics in edge/monitoring/metrics.py, not in:\n" + "\n".join(stray)
    assert metric_definitions(owner)  # the check sees definitions where they are


def test_the_metric_check_catches_a_stray_definition(tmp_path) -> None:
    path = tmp_path / "x.py"
    path.write_text("from prometheus_client import Counter\nC = Counter('edgeship_x', 'x')\n")
    assert metric_definitions(path) == [2]


def emitted_event_kinds() -> dict[str, list[str]]:
    """Literal first arguments of the agent's event and update-step calls, with where they are."""
    calls = {"publish_event", "_step", "report", "event", "_refuse", "append"}
    out: dict[str, list[str]] = {}
    for p in sorted((ROOT / "edge").rglob("*.py")):
        for node in ast.walk(ast.parse(p.read_text())):
            if not (isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute) and node.func.attr in calls and node.args):
                continue
            first = node.args[0]
            if node.func.attr == "append":  # the agent's start-up notes: _start_notes.append(("revoked_model", {...}))
                receiver = node.func.value
                if not (isinstance(receiver, ast.Attribute) and receiver.attr == "_start_notes"):
                    continue
                first = first.elts[0] if isinstance(first, ast.Tuple) and first.elts else None
            if isinstance(first, ast.Constant) and isinstance(first.value, str):
                out.setdefault(first.value, []).append(f"{p.relative_to(ROOT)}:{node.lineno}")
    return out


def test_every_event_kind_the_agent_sends_is_in_the_shared_vocabulary() -> None:
    """Event kinds are typed once in models.messages (issue 8); the cloud reads them from there."""
    from edge.monitoring.telemetry import LOST_EVENT
    from models.messages import EVENT_KINDS
    from models.serving import ACTUALS_EVENT

    kinds = emitted_event_kinds()
    assert {"active", "refused", "downloading", "transfer_stalled", "revoked_model"} <= set(kinds)  # the scan sees them
    unknown = {k: v for k, v in kinds.items() if k not in EVENT_KINDS}
    assert not unknown, f"event kinds missing from models.messages.EVENT_KINDS: {unknown}"
    assert {LOST_EVENT, ACTUALS_EVENT} <= EVENT_KINDS
