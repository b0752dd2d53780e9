"""The module map in docs/architecture.md, made from the source tree: every package and module of
the product, the benchmarks and the test rigs, with the first line of its docstring.

    python -m tests.support.module_map      rewrite the map in docs/architecture.md
                                            (`make module-map`)

`tests/unit/test_module_map.py` fails when the map in the page is not what this makes, so the
page cannot drift from the code: a module added, moved or re-described shows up there.
"""

from __future__ import annotations

import ast
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
PAGE = ROOT / "docs" / "architecture.md"
START = "<!-- module map: made by `make module-map`; a test checks it -->"
END = "<!-- end of the module map -->"
TREES = {  # where a distribution's packages are, and what it is
    "src": "the product (the wheel and the image hold this alone)",
    "testing/src": "the test rigs (postal-testing)",
    "bench/src": "the benchmarks (postal-bench)",
}


def summary(path: Path) -> str:
    """The first line of the module's docstring, or what is missing."""
    docstring = ast.get_docstring(ast.parse(path.read_text()))
    return docstring.strip().splitlines()[0] if docstring else "(no docstring)"


def entries(tree: Path) -> list[str]:
    lines = []
    for path in sorted(tree.rglob("*.py"), key=lambda p: p.relative_to(tree).parts):
        if "__pycache__" in path.parts or "migrations" in path.parts or path.name == "__main__.py":
            continue
        relative = path.relative_to(tree)
        if path.name == "__init__.py":
            name = relative.parent.name + "/"
            depth = len(relative.parts) - 2
        else:
            name = relative.name
            depth = len(relative.parts) - 1
        lines.append(f"{'  ' * depth}{name:<{max(1, 28 - 2 * depth)}} {summary(path)}")
    return lines


def module_map() -> str:
    """The block between START and END, fences included."""
    body = []
    for tree, what in TREES.items():
        body += [f"{tree}/: {what}", *(f"  {line}" for line in entries(ROOT / tree)), ""]
    return "```\n" + "\n".join(body).rstrip() + "\n```"


def page_with_map(page: str) -> str:
    before, rest = page.split(START, 1)
    _, after = rest.split(END, 1)
    return f"{before}{START}\n{module_map()}\n{END}{after}"


def main() -> int:
    PAGE.write_text(page_with_map(PAGE.read_text()))
    return 0


if __name__ == "__main__":
    sys.exit(main())
