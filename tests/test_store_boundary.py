"""Only app/store/ knows SQL: no other module imports a database driver or holds a statement."""

from __future__ import annotations

import ast
import re
from pathlib import Path

import pytest

from tests.conftest import ROOT

DRIVERS = {"sqlite3", "sqlite_utils", "psycopg", "psycopg_pool"}
SQL = re.compile(
    r"\b(SELECT\b.+\bFROM|INSERT\s+(OR\s+\w+\s+)?INTO|UPDATE\s+\w+\s+SET|DELETE\s+FROM|"
    r"CREATE\s+(TABLE|INDEX)|ALTER\s+TABLE|PRAGMA\s+\w+|BEGIN\s+IMMEDIATE|COMMIT|ROLLBACK)\b",
    re.DOTALL,
)
STORE = ROOT / "app" / "store"


def modules_outside_the_store() -> list[Path]:
    paths = sorted((ROOT / "app").rglob("*.py")) + sorted((ROOT / "demo_api").rglob("*.py"))
    return [path for path in paths if STORE not in path.parents]


def problems(path: Path) -> list[str]:
    tree = ast.parse(path.read_text(), filename=str(path))
    docstrings = {
        id(node.body[0].value) for node in ast.walk(tree)
        if isinstance(node, ast.Module | ast.ClassDef | ast.FunctionDef | ast.AsyncFunctionDef)
        and node.body and isinstance(node.body[0], ast.Expr)
        and isinstance(node.body[0].value, ast.Constant)
    }
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found += [f"line {node.lineno}: imports {a.name}" for a in node.names
                      if a.name.split(".")[0] in DRIVERS]
        elif isinstance(node, ast.ImportFrom) and (node.module or "").split(".")[0] in DRIVERS:
            found.append(f"line {node.lineno}: imports from {node.module}")
        elif (isinstance(node, ast.Constant) and isinstance(node.value, str)
              and id(node) not in docstrings and SQL.search(node.value)):
            found.append(f"line {node.lineno}: SQL {node.value[:60]!r}")
    return found


@pytest.mark.parametrize("path", modules_outside_the_store(),
                         ids=lambda p: str(p.relative_to(ROOT)))
def test_no_sql_and_no_driver_outside_the_store(path):
    assert problems(path) == []


def test_the_check_finds_what_the_store_itself_holds():
    found = problems(STORE / "sqlite.py")
    assert any("imports sqlite3" in p for p in found)
    assert any("SQL 'INSERT INTO notifications" in p for p in found)
    assert any("SQL 'SELECT" in p for p in found)
