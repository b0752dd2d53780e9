"""Which way the imports of posts/, imports/ and storage/ point (docs/architecture.md).

The use cases own their ports: posts/ and imports/ never import storage/, not even for typing,
and storage/ implements them, reaching into the use-case rooms only for their models, errors
and ports. The cache is imported by its public names only (`postal.cache`), never a submodule.
Every import statement counts, wherever it is: in a function, under TYPE_CHECKING.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

import postal

PACKAGE = Path(postal.__file__).parent

# room -> module prefixes it must not import
FORBIDDEN = {
    "posts": ("postal.storage", "postal.imports", "postal.api", "postal.app", "postal.cli"),
    "imports": ("postal.storage", "postal.api", "postal.app", "postal.cli", "postal.import_cli"),
    "storage": ("postal.api", "postal.app", "postal.cli", "postal.import_cli"),
}
# What storage/ may take from the use-case rooms: what it implements, and the data it exchanges.
STORAGE_MAY_IMPORT = {
    "postal.posts.models",
    "postal.posts.errors",
    "postal.posts.ports",
    "postal.imports.ports",
}


def imported_modules(path: Path) -> list[str]:
    """Every module `path` imports (absolute names), wherever the statement is."""
    modules: list[str] = []
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            modules.extend(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module is not None and node.level == 0:
            modules.append(node.module)
    return modules


def sources(room: str) -> list[Path]:
    return sorted((PACKAGE / room).rglob("*.py"))


def within(module: str, prefix: str) -> bool:
    return module == prefix or module.startswith(prefix + ".")


@pytest.mark.parametrize("room", sorted(FORBIDDEN))
def test_a_room_imports_nothing_above_it(room: str) -> None:
    crossings = [
        f"{path.relative_to(PACKAGE)} imports {module}"
        for path in sources(room)
        for module in imported_modules(path)
        if any(within(module, prefix) for prefix in FORBIDDEN[room])
    ]
    assert crossings == []


def test_storage_takes_only_models_errors_and_ports_from_the_use_cases() -> None:
    crossings = [
        f"{path.relative_to(PACKAGE)} imports {module}"
        for path in sources("storage")
        for module in imported_modules(path)
        if (within(module, "postal.posts") or within(module, "postal.imports"))
        and module not in STORAGE_MAY_IMPORT
    ]
    assert crossings == []


@pytest.mark.parametrize("room", sorted(FORBIDDEN))
def test_the_cache_is_imported_by_its_public_names(room: str) -> None:
    submodules = [
        f"{path.relative_to(PACKAGE)} imports {module}"
        for path in sources(room)
        for module in imported_modules(path)
        if module.startswith("postal.cache.")
    ]
    assert submodules == []


def test_the_rules_are_checked_on_real_sources() -> None:
    """A renamed room would make the checks above pass vacuously."""
    for room in FORBIDDEN:
        assert sources(room), room
    assert "postal.imports.ports" in imported_modules(PACKAGE / "storage" / "bulk.py")
