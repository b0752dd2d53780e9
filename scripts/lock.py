#!/usr/bin/env python3
"""Postal's lock: every dependency, direct and transitive, pinned with hashes, in requirements/.

    scripts/lock.py compile    re-resolve after pyproject.toml changed, keeping every other pin
    scripts/lock.py upgrade    the newest versions pyproject.toml allows (`make lock`)
    scripts/lock.py check      fail when pyproject.toml and the lock disagree (`make lint`; offline)

Three files, resolved once and cut three ways so that they always agree:
- dev.txt: everything `make install` puts in .venv (the product, its extras, every PEP 735 group);
- main.txt: the product and its `tracing` extra (so the image can trace), for the container image;
- build.txt: what builds Postal's wheel (setuptools), for the container image's builder.
main.txt and build.txt are compiled with dev.txt as their constraints, so a package has one
version in all three.

The repository's other distributions, the benchmarks (bench/) and the test rigs (testing/),
are installed from the same lock: their third-party requirements are mirrored in the root's
dependency groups (`bench`, `test`), so the compile sees them, and `check` verifies that each is
pinned in dev.txt within its range.

Each file starts with the digest of the pyproject.toml tables it was compiled from. `check`
recomputes it, and checks each direct requirement against its pin, without the network: a new
release on the index never makes `make lint` fail, only an edit of pyproject.toml that was not
followed by `make lock` (or a hand edit of the lock) does.

The resolver is uv's `uv pip compile` (pinned in the lock itself, in the `lock` group), run from
the .venv this lock built.
"""

from __future__ import annotations

import hashlib
import json
import subprocess
import sys
import tomllib
from pathlib import Path

from packaging.markers import default_environment
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name
from packaging.version import Version

ROOT = Path(__file__).resolve().parent.parent
PYPROJECT = ROOT / "pyproject.toml"
SUBPROJECTS = ("bench", "testing")  # directories with a pyproject.toml of their own
LOCAL = {"postal", "postal-bench", "postal-testing"}  # installed from the repository, not locked
LOCKS = ROOT / "requirements"
DIGEST_PREFIX = "# pyproject.toml dependency digest: "
PYTHON_VERSION = "3.11"  # the oldest Python requires-python admits: the one resolved for

# file -> (uv pip compile arguments, what it is for)
FILES = {
    "dev.txt": (
        ["pyproject.toml", "--all-extras", "--group", "dev"],
        "everything `make install` puts in .venv",
    ),
    "main.txt": (
        ["pyproject.toml", "--extra", "tracing"],
        "the product and its tracing extra, for the container image",
    ),
    "build.txt": (["--group", "build"], "what builds Postal's wheel"),
}


def dependency_tables() -> dict[str, object]:
    """The parts of pyproject.toml that decide what the lock holds."""
    data = tomllib.loads(PYPROJECT.read_text())
    project = data["project"]
    return {
        "requires-python": project.get("requires-python"),
        "build-system": data.get("build-system", {}).get("requires", []),
        "dependencies": project.get("dependencies", []),
        "optional-dependencies": project.get("optional-dependencies", {}),
        "dependency-groups": data.get("dependency-groups", {}),
    }


def subproject_requirements(name: str) -> list[str]:
    """A sub-distribution's third-party requirements (not the repository's own)."""
    path = ROOT / name / "pyproject.toml"
    if not path.exists():
        return []
    requirements: list[str] = tomllib.loads(path.read_text())["project"].get("dependencies", [])
    return [r for r in requirements if canonicalize_name(Requirement(r).name) not in LOCAL]


def digest() -> str:
    tables = dependency_tables()
    tables["subprojects"] = {name: subproject_requirements(name) for name in SUBPROJECTS}
    canonical = json.dumps(tables, sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(canonical.encode()).hexdigest()


def pins(path: Path) -> dict[str, Version]:
    """name -> pinned version, from a compiled requirements file."""
    found: dict[str, Version] = {}
    for line in path.read_text().splitlines():
        line = line.strip()
        if not line or line.startswith(("#", "--")):
            continue
        requirement = Requirement(line.split(" \\")[0].split(";")[0].strip())
        (specifier,) = requirement.specifier  # compiled files pin with a single ==
        found[canonicalize_name(requirement.name)] = Version(specifier.version)
    return found


def group_requirements(groups: dict[str, list[object]], name: str) -> list[str]:
    """A PEP 735 group's requirement strings, its include-group entries followed."""
    out: list[str] = []
    for item in groups[name]:
        if isinstance(item, str):
            out.append(item)
        else:
            assert isinstance(item, dict)
            out += group_requirements(groups, item["include-group"])
    return out


def direct_requirements(file: str) -> list[str]:
    tables = dependency_tables()
    groups: dict[str, list[object]] = tables["dependency-groups"]  # type: ignore[assignment]
    if file == "build.txt":
        return group_requirements(groups, "build")
    direct: list[str] = list(tables["dependencies"])  # type: ignore[call-overload]
    if file == "dev.txt":
        extras: dict[str, list[str]] = tables["optional-dependencies"]  # type: ignore[assignment]
        for requirements in extras.values():
            direct += requirements
        direct += group_requirements(groups, "dev")
        for name in SUBPROJECTS:
            direct += subproject_requirements(name)
    return direct


def check() -> list[str]:
    """What is wrong with the lock, in words; empty when it matches pyproject.toml."""
    problems: list[str] = []
    want = digest()
    environment = {key: str(value) for key, value in default_environment().items()}
    environment["python_version"] = PYTHON_VERSION  # what the lock was resolved for
    for file in FILES:
        path = LOCKS / file
        if not path.exists():
            problems.append(f"requirements/{file} is missing")
            continue
        recorded = next(
            (
                line[len(DIGEST_PREFIX) :]
                for line in path.read_text().splitlines()
                if line.startswith(DIGEST_PREFIX)
            ),
            None,
        )
        if recorded != want:
            problems.append(f"requirements/{file} was compiled from another pyproject.toml")
        pinned = pins(path)
        for text in direct_requirements(file):
            requirement = Requirement(text)
            if requirement.marker is not None and not requirement.marker.evaluate(environment):
                continue
            version = pinned.get(canonicalize_name(requirement.name))
            if version is None:
                problems.append(f"requirements/{file} does not pin {requirement.name}")
            elif not requirement.specifier.contains(version, prereleases=True):
                problems.append(
                    f"requirements/{file} pins {requirement.name}=={version}, "
                    f"outside {requirement.specifier}"
                )
    return problems


def compile_all(upgrade: bool) -> None:
    uv = Path(sys.executable).parent / "uv"
    for file, (selection, purpose) in FILES.items():
        command = [
            str(uv), "pip", "compile", *selection,
            "--universal", "--python-version", PYTHON_VERSION, "--generate-hashes",
            "--quiet", "--custom-compile-command", "make lock",
            "--output-file", f"requirements/{file}",
        ]  # fmt: skip
        if file == "dev.txt":
            if upgrade:
                command.append("--upgrade")
        else:
            command += ["--constraint", "requirements/dev.txt"]
        subprocess.run(command, cwd=ROOT, check=True)
        path = LOCKS / file
        body = path.read_text()
        header = f"# {file}: {purpose}.\n{DIGEST_PREFIX}{digest()}\n"
        path.write_text(header + "\n".join(
            line for line in body.splitlines() if not line.startswith(DIGEST_PREFIX)
            and not line.startswith(f"# {file}: ")
        ) + "\n")  # fmt: skip


def main() -> int:
    action = sys.argv[1] if len(sys.argv) == 2 else ""
    if action in ("compile", "upgrade"):
        compile_all(upgrade=action == "upgrade")
        action = "check"
    if action == "check":
        problems = check()
        for problem in problems:
            print(f"lock: {problem}", file=sys.stderr)
        if problems:
            print("lock: run `make lock` and commit requirements/", file=sys.stderr)
            return 1
        return 0
    print(__doc__.split("\n\n")[1], file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(main())
