"""The layout of ARCHITECTURE.md: packages show a surface, and nothing else sits at the top."""

from __future__ import annotations

import ast
import importlib
from pathlib import Path

import pytest

BROKER = Path(__file__).resolve().parents[3] / "broker"
PACKAGES = ("audit", "connections", "google", "identity", "keys", "risc", "tenancy", "tokens",
            "webhooks", "workload")
TOP_LEVEL = {
    # foundation
    "__init__", "config", "errors", "db", "driver", "models", "clock", "logging", "metrics",
    "health", "scopes", "clientip", "limits", "migrate", "tls",
    "clientcert", "jwks", "headers", "callouts",
    # entry points
    "worker", "server", "wsgi", "gunicorn_conf", "client",
}


def _imports(source: str) -> list[tuple[int, str]]:
    """Return (line, module) for every absolute import in a module's source."""
    found = []
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            found.append((node.lineno, node.module))
        elif isinstance(node, ast.Import):
            found.extend((node.lineno, a.name) for a in node.names)
    return found


def _surface_violations(rel: str, source: str) -> list[str]:
    parts_of_path = rel.split("/")
    home = parts_of_path[0] if len(parts_of_path) > 1 else None
    problems = []
    for line, module in _imports(source):
        parts = module.split(".")
        if parts[0] != "broker" or len(parts) < 3 or parts[1] not in PACKAGES:
            continue
        if parts[1] != home:
            problems.append(f"broker/{rel}:{line} imports {module}")
    return problems


def test_code_outside_a_package_imports_only_its_surface() -> None:
    problems = [
        problem
        for path in sorted(BROKER.rglob("*.py"))
        for problem in _surface_violations(
            path.relative_to(BROKER).as_posix(), path.read_text(encoding="utf-8")
        )
    ]
    assert problems == []


def test_the_surface_check_catches_a_reach_inside() -> None:
    # The check above must be able to fail: a web module reaching into tokens is reported,
    # the same import inside tokens is not.
    source = "from broker.tokens.store import Want\nfrom broker.tokens import Want\n"
    assert _surface_violations("web/probe.py", source) == [
        "broker/web/probe.py:1 imports broker.tokens.store"
    ]
    assert _surface_violations("tokens/probe.py", source) == []


@pytest.mark.parametrize("package", PACKAGES)
def test_each_package_names_its_surface(package: str) -> None:
    module = importlib.import_module(f"broker.{package}")
    surface = getattr(module, "__all__", None)
    assert surface, f"broker.{package} has no __all__"
    missing = [name for name in surface if not hasattr(module, name)]
    assert missing == []


def test_only_foundation_and_entry_points_sit_at_the_top() -> None:
    top = {p.stem for p in BROKER.glob("*.py")}
    assert top - TOP_LEVEL == set()
