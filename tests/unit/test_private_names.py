"""No product module reaches into another object's private names except the library internals
listed in docs/private-names.md, and each listed library is installed at the version its row was
checked against."""

from __future__ import annotations

import ast
import importlib.metadata
import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
DOC = ROOT / "docs" / "private-names.md"
PRODUCT = ROOT / "src" / "postal"


def rows() -> list[tuple[str, str, str]]:
    """(library, checked version, where) for each row of the table."""
    found = []
    for line in DOC.read_text().splitlines():
        cells = [cell.strip() for cell in line.strip().strip("|").split("|")]
        if len(cells) == 5 and re.fullmatch(r"\d+(\.\d+)+", cells[1]):
            found.append((cells[0], cells[1], cells[3].strip("`")))
    return found


def private_uses() -> set[tuple[str, str]]:
    """(file relative to src/, name) of every `x._name` whose `x` is not self or cls, and every
    `from ... import _name`; dunder names are not private."""
    uses = set()
    for path in PRODUCT.rglob("*.py"):
        where = path.relative_to(ROOT / "src").as_posix()
        for node in ast.walk(ast.parse(path.read_text())):
            names: list[str] = []
            if isinstance(node, ast.Attribute):
                owner = node.value
                if not (isinstance(owner, ast.Name) and owner.id in ("self", "cls")):
                    names = [node.attr]
            elif isinstance(node, ast.ImportFrom):
                names = [alias.name for alias in node.names]
            uses |= {(where, n) for n in names if n.startswith("_") and not n.startswith("__")}
    return uses


def test_the_table_has_a_row_per_library() -> None:
    assert {library for library, _, _ in rows()} == {
        "redis",
        "prometheus-client",
        "uvicorn",
        "sqlalchemy",
    }


def test_each_library_is_installed_at_the_version_its_row_was_checked_against() -> None:
    for library, checked, _ in rows():
        installed = importlib.metadata.version(library)
        assert installed == checked, (
            f"{library} {installed} is installed; docs/private-names.md was checked against"
            f" {checked}: re-read its rows against the new release, then update them"
        )


def test_every_private_name_used_is_in_a_listed_place() -> None:
    places = [where for _, _, where in rows()]
    unlisted = sorted(
        (where, name)
        for where, name in private_uses()
        if not any(where.startswith(place) for place in places)
    )
    assert unlisted == []


def test_the_scan_sees_a_private_use() -> None:
    assert ("postal/observability/batching.py", "_buckets") in private_uses()
