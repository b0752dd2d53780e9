"""Postal's wheel, built from pyproject.toml as the image builds it, holds the product alone: no
benchmark, no test rig, no test. Built from a copy of what the image's build context holds
(pyproject.toml, README.md, LICENSE, src/), with the locked setuptools, and its files listed."""

from __future__ import annotations

import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

import postal

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def wheel_files(tmp_path_factory: pytest.TempPathFactory) -> list[str]:
    context = tmp_path_factory.mktemp("context")
    for name in ("pyproject.toml", "README.md", "LICENSE"):
        shutil.copy(ROOT / name, context)
    shutil.copytree(ROOT / "src", context / "src", ignore=shutil.ignore_patterns("__pycache__"))
    out = tmp_path_factory.mktemp("wheel")
    subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--quiet", "--no-deps", "--no-build-isolation",
         "--wheel-dir", str(out), str(context)],
        check=True, capture_output=True, timeout=300,
    )  # fmt: skip
    (wheel,) = out.glob("postal-*.whl")
    with zipfile.ZipFile(wheel) as archive:
        return archive.namelist()


def test_the_wheel_holds_only_the_postal_package_and_its_metadata(wheel_files: list[str]) -> None:
    tops = {name.split("/")[0] for name in wheel_files}
    assert tops == {"postal", f"postal-{postal.__version__}.dist-info"}


def test_no_benchmark_or_test_rig_is_in_the_wheel(wheel_files: list[str]) -> None:
    for name in wheel_files:
        parts = name.split("/")
        assert not {"bench", "postal_bench", "postal_testing", "tests", "testing"} & set(parts)
        assert not parts[-1].startswith(("proxy", "redis_servers", "cluster_set", "resolver"))


def test_the_wheel_ships_what_an_installed_postal_needs(wheel_files: list[str]) -> None:
    assert "postal/py.typed" in wheel_files
    assert "postal/cli/__main__.py" in wheel_files
    assert any(n.startswith("postal/storage/migrations/versions/") for n in wheel_files)
    assert any(n.endswith(".dist-info/licenses/LICENSE") for n in wheel_files)
    assert any(n.endswith(".dist-info/entry_points.txt") for n in wheel_files)
