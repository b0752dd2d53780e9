"""The lock check that `make lint` runs (scripts/lock.py check): offline, it passes on the
repository as committed and fails, naming the problem, when pyproject.toml's dependencies and
requirements/ disagree."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


def run_check(root: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, str(root / "scripts" / "lock.py"), "check"],
        capture_output=True,
        text=True,
        check=False,
    )


@pytest.fixture
def checkout(tmp_path: Path) -> Path:
    """pyproject.toml, requirements/ and the script, as committed."""
    (tmp_path / "scripts").mkdir()
    shutil.copy(ROOT / "scripts" / "lock.py", tmp_path / "scripts")
    shutil.copy(ROOT / "pyproject.toml", tmp_path)
    shutil.copytree(ROOT / "requirements", tmp_path / "requirements")
    for subproject in ("bench", "testing"):
        (tmp_path / subproject).mkdir()
        shutil.copy(ROOT / subproject / "pyproject.toml", tmp_path / subproject)
    return tmp_path


def test_the_committed_lock_matches_pyproject(checkout: Path) -> None:
    result = run_check(checkout)
    assert result.returncode == 0, result.stderr
    assert result.stderr == ""


def test_a_dependency_added_to_pyproject_but_not_locked_fails(checkout: Path) -> None:
    pyproject = checkout / "pyproject.toml"
    text = pyproject.read_text()
    pyproject.write_text(text.replace('"httptools>=0.6",', '"httptools>=0.6",\n    "orjson>=3",'))
    result = run_check(checkout)
    assert result.returncode == 1
    assert "requirements/main.txt does not pin orjson" in result.stderr
    assert "requirements/dev.txt was compiled from another pyproject.toml" in result.stderr
    assert "run `make lock`" in result.stderr


def test_a_pin_outside_pyprojects_range_fails(checkout: Path) -> None:
    main = checkout / "requirements" / "main.txt"
    main.write_text(main.read_text().replace("\nredis==8.", "\nredis==7."))
    result = run_check(checkout)
    assert result.returncode == 1
    assert "requirements/main.txt pins redis==7." in result.stderr


def test_a_benchmark_requirement_not_in_the_lock_fails(checkout: Path) -> None:
    bench = checkout / "bench" / "pyproject.toml"
    bench.write_text(bench.read_text().replace('"rich>=13",', '"rich>=13",\n    "numba>=0.60",'))
    result = run_check(checkout)
    assert result.returncode == 1
    assert "requirements/dev.txt does not pin numba" in result.stderr


def test_a_tool_setting_changed_in_pyproject_needs_no_new_lock(checkout: Path) -> None:
    pyproject = checkout / "pyproject.toml"
    pyproject.write_text(pyproject.read_text().replace("line-length = 100", "line-length = 99"))
    assert run_check(checkout).returncode == 0
