"""What `pip install nudge` installs: Nudge with every dependency it imports, and nothing else."""

from __future__ import annotations

import ast
import importlib.metadata
import re
import sys
import tomllib

from setuptools import find_packages

from tests.conftest import ROOT

PYPROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text())


def _names(requirements: list[str]) -> set[str]:
    return {re.split(r"[\[<>=!~ ;]", r, maxsplit=1)[0].lower().replace("_", "-")
            for r in requirements}


def imported_modules(path) -> set[str]:
    tree = ast.parse(path.read_text())
    found = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found |= {alias.name.split(".")[0] for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            found.add(node.module.split(".")[0])
    return found


def test_every_distribution_the_code_imports_is_declared():
    declared = _names(PYPROJECT["project"]["dependencies"])
    postgres = _names(PYPROJECT["project"]["optional-dependencies"]["postgres"])
    distributions = importlib.metadata.packages_distributions()
    missing = {}
    for path in (ROOT / "app").rglob("*.py"):
        # The PostgreSQL engine is the [postgres] extra; everything else is always needed.
        allowed = declared | (postgres if path.name == "postgres.py" else set())
        for module in imported_modules(path) - set(sys.stdlib_module_names) - {"app"}:
            names = {d.lower().replace("_", "-") for d in distributions.get(module, [module])}
            if not names & allowed:
                missing.setdefault(module, []).append(path.relative_to(ROOT).as_posix())
    assert not missing, f"imported but not in pyproject.toml dependencies: {missing}"


def test_pip_install_nudge_installs_nudge_not_the_demo_product():
    include = PYPROJECT["tool"]["setuptools"]["packages"]["find"]["include"]
    packages = find_packages(where=str(ROOT), include=include)
    assert "app" in packages and "app.store" in packages
    assert not [p for p in packages if not p.startswith("app")], packages


def test_no_module_is_named_like_a_standard_library_one():
    shadowing = [path.relative_to(ROOT).as_posix() for path in (ROOT / "app").rglob("*.py")
                 if path.stem in sys.stdlib_module_names]
    assert not shadowing, f"these shadow standard-library modules: {shadowing}"


def test_comments_give_reasons_not_benchmark_figures():
    """A measured figure in a comment goes stale; benchmarks/README.md keeps the figures."""
    figure = re.compile(r"#.*(\d+(\.\d+)? ?(ms|us|µs)\b|\d+(\.\d+)? ?(×|x (faster|slower))|"
                        r"measured|benchmarked)", re.IGNORECASE)
    found = [f"{path.relative_to(ROOT)}:{number}: {line.strip()}"
             for path in (ROOT / "app").rglob("*.py")
             for number, line in enumerate(path.read_text().splitlines(), 1)
             if figure.search(line)]
    assert not found, found
