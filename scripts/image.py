#!/usr/bin/env python3
"""Postal's container image, built with podman on a machine that may reach no container registry.

    scripts/image.py build       the image (`make image`), its base made first if podman lacks it
    scripts/image.py base        the base image alone
    scripts/image.py tools       podman, runc and mmdebstrap, installed with apt-get if missing
    scripts/image.py conf PATH   the containers.conf the others use, written to PATH

Settings, from the environment: IMAGE, the tag to build (default `postal:<version>`); LAYERS=false
to keep no intermediate images (the image test does: it leaves nothing behind); CONTAINERS_CONF,
podman's own, used as it is when set (otherwise one is written to a temporary directory).

Why it is done this way:
- podman from Debian's packages, with runc as the runtime and default ulimits no higher than this
  machine allows, in a containers.conf named by CONTAINERS_CONF (nothing is written to /etc).
  Podman's defaults ask for more open files (1,048,576) than a sandboxed machine may grant, and
  runc then fails with "error setting rlimit ... operation not permitted".
- The base image is the one the Dockerfile's FROM names (its PYTHON_IMAGE default), used if
  podman has it (pulled from a registry, or made before) and otherwise made here from Debian
  packages: mmdebstrap --variant=minbase, bookworm, with python3, venv, pip and ca-certificates,
  from this machine's own Debian mirrors (what `apt-cache policy` lists), then `podman import`ed
  under that tag. The build never pulls (--pull=never).
- So that the build's RUN steps reach the package indexes this machine reaches, the base trusts
  this machine's CA certificates (its /etc/ssl/certs/ca-certificates.crt is copied in) and names
  the http(s) index this machine's pip is configured with (pip's config files and PIP_*
  environment, read at build time: no index is written in this repository). An index URL with
  credentials in it is not copied: the base's files end up in the final image.
"""

from __future__ import annotations

import itertools
import os
import re
import resource
import shlex
import shutil
import subprocess
import sys
import tempfile
import time
import tomllib
from pathlib import Path
from urllib.parse import urlsplit

ROOT = Path(__file__).resolve().parent.parent
DOCKERFILE = ROOT / "Dockerfile"
SUITE = "bookworm"  # the Debian release of the Dockerfile's python:3.11-slim-bookworm
# The Python the Dockerfile runs as `python` and `pip`; passwd for its useradd.
BASE_PACKAGES = (
    "python3",
    "python3-venv",
    "python3-pip",
    "python-is-python3",
    "ca-certificates",
    "passwd",
)
# No documentation, manual pages or translations in the base (and so in the image): mmdebstrap's
# own example for a smaller chroot. They stay excluded for packages the builder installs later.
DPKG_EXCLUDES = (
    "path-exclude=/usr/share/man/*",
    "path-exclude=/usr/share/locale/*",
    "path-include=/usr/share/locale/locale.alias",
    "path-exclude=/usr/share/doc/*",
    "path-include=/usr/share/doc/*/copyright",
)
# merged /usr the debootstrap way (usr-is-merged), without the usrmerge package and the Perl it
# pulls in.
MERGED_USR_HOOKS = Path("/usr/share/mmdebstrap/hooks/merged-usr")
CA_BUNDLE = Path("/etc/ssl/certs/ca-certificates.crt")
# Upper bounds of the containers' default ulimits: on the sandbox this was tried on, runc could
# not set RLIMIT_NPROC above 32768 even though the hard limit was higher.
NOFILE_CAP = 1_048_576
NPROC_CAP = 32_768
TOOLS = {"podman": "podman", "runc": "runc", "mmdebstrap": "mmdebstrap"}  # command -> package
BASE_TIMEOUT = 900.0  # seconds; making the base took 114 s here, mostly downloading
BUILD_TIMEOUT = 900.0  # the build took 82 s here


def say(message: str) -> None:
    print(f"image: {message}", file=sys.stderr, flush=True)


def base_tag() -> str:
    """The image the Dockerfile's FROM names: its PYTHON_IMAGE argument's default."""
    match = re.search(r"^ARG PYTHON_IMAGE=(\S+)$", DOCKERFILE.read_text(), re.MULTILINE)
    if match is None:
        raise SystemExit("image: no `ARG PYTHON_IMAGE=...` in the Dockerfile")
    return match.group(1)


def default_image() -> str:
    version = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["version"]
    return f"postal:{version}"


def limit(kind: int, cap: int) -> int:
    """This process's hard limit of `kind`, at most `cap`: a container may not be given more."""
    hard = resource.getrlimit(kind)[1]
    return cap if hard == resource.RLIM_INFINITY else min(hard, cap)


def containers_conf() -> str:
    nofile = limit(resource.RLIMIT_NOFILE, NOFILE_CAP)
    nproc = limit(resource.RLIMIT_NPROC, NPROC_CAP)
    return (
        "# Written by scripts/image.py: runc, and ulimits this machine allows.\n"
        "[containers]\n"
        f'default_ulimits = ["nofile={nofile}:{nofile}", "nproc={nproc}:{nproc}"]\n'
        "\n"
        "[engine]\n"
        'runtime = "runc"\n'
    )


def ensure_tools(*commands: str) -> None:
    """Install what is missing of `commands` from Debian's packages (as root, with apt-get)."""
    missing = [TOOLS[command] for command in commands if shutil.which(command) is None]
    if not missing:
        return
    if os.geteuid() != 0 or shutil.which("apt-get") is None:
        raise SystemExit(f"image: install {' '.join(missing)} first (Debian's packages)")
    say(f"installing {' '.join(missing)} with apt-get")
    # With their recommends (netavark, catatonit, uidmap, ...): the set this was tried with.
    install = ["apt-get", "install", "-y", *missing]
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    if subprocess.run(install, env=env, stdout=subprocess.DEVNULL).returncode != 0:
        # The package lists may be missing or stale (a fresh machine): refresh them once.
        subprocess.run(["apt-get", "update"], env=env, stdout=subprocess.DEVNULL, check=False)
        if subprocess.run(install, env=env, stdout=subprocess.DEVNULL).returncode != 0:
            raise SystemExit(f"image: apt-get could not install {' '.join(missing)}")


def podman(*args: str, timeout: float = 120.0, check: bool = True) -> str:
    result = subprocess.run(
        ["podman", *args], capture_output=True, text=True, timeout=timeout, check=False
    )
    if check and result.returncode != 0:
        raise SystemExit(f"image: podman {shlex.join(args)} failed:\n{result.stderr}")
    return result.stdout


def debian_mirrors() -> list[str]:
    """This machine's apt sources for the suite and its updates, as one-line entries."""
    policy = subprocess.run(
        ["apt-cache", "policy"], capture_output=True, text=True, timeout=60, check=False
    ).stdout
    return mirrors_from_policy(policy)


def mirrors_from_policy(policy: str) -> list[str]:
    """The `deb URI SUITE COMPONENT` entries of `apt-cache policy`'s output for the suite and its
    -updates/-security: only Debian's own (o=Debian), so a third-party repository of the host's
    (whose key the base lacks) never reaches the base."""
    entries: list[str] = []
    # Each source is a line "500 URI SUITE/COMPONENT ARCH Packages" followed by its release line,
    # "release v=12,o=Debian,n=bookworm,...".
    for line, release in itertools.pairwise(policy.splitlines()):
        source = re.match(r"\s*\d+ (https?://\S+) (\S+)/(\S+) \S+ Packages$", line)
        if source is None or ",o=Debian," not in f",{release.strip().removeprefix('release ')},":
            continue
        uri, suite, component = source.groups()
        entry = f"deb {uri} {suite} {component}"
        if (suite == SUITE or suite.startswith(f"{SUITE}-")) and entry not in entries:
            entries.append(entry)
    return entries


def pip_settings() -> dict[str, str]:
    """The machine's pip config: its files and PIP_* environment, as `pip config list` has it."""
    listing = subprocess.run(
        [sys.executable, "-m", "pip", "config", "list"],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    ).stdout
    return pip_settings_from(listing)


def pip_settings_from(listing: str) -> dict[str, str]:
    """`pip config list`'s lines (`global.index-url='...'`, `:env:.cert='...'`) as one setting
    each, the way pip ranks them: the environment over `install.` over `global.`."""
    found: dict[str, tuple[int, str]] = {}
    rank = {"global": 0, "install": 1, ":env:": 2}
    for line in listing.splitlines():
        key, _, value = line.partition("=")
        section, _, name = key.rpartition(".")
        if section in rank and rank[section] >= found.get(name, (-1, ""))[0]:
            found[name] = (rank[section], value.strip().strip("'\""))
    return {name: value for name, (_, value) in found.items()}


def shareable_indexes(value: str) -> list[str]:
    """The http(s) index URLs of a pip setting: file:// indexes are directories on this machine,
    and a URL with credentials must not land in an image."""
    kept = []
    for url in value.split():
        parts = urlsplit(url)
        if parts.scheme not in ("http", "https"):
            continue
        if parts.username or parts.password:
            say("an index URL of pip's has credentials in it: not copied into the base image")
            continue
        kept.append(url)
    return kept


def base_pip_conf(settings: dict[str, str]) -> str:
    """The base's /etc/pip.conf: the base's CA bundle (this machine's), and the indexes of
    `settings` (this machine's pip config) that can be shared."""
    lines = ["[global]", f"cert = {CA_BUNDLE}"]
    index = shareable_indexes(settings.get("index-url", ""))
    if index:
        lines.append(f"index-url = {index[0]}")
    extra = shareable_indexes(settings.get("extra-index-url", ""))
    if extra:
        lines.append(f"extra-index-url = {' '.join(extra)}")
    if settings.get("trusted-host"):
        lines.append(f"trusted-host = {settings['trusted-host']}")
    return "\n".join(lines) + "\n"


def make_base(tag: str) -> None:
    ensure_tools("mmdebstrap")
    started = time.monotonic()
    with tempfile.TemporaryDirectory(prefix="postal-base.") as work:
        pip_conf = Path(work) / "pip.conf"
        pip_conf.write_text(base_pip_conf(pip_settings()))
        tarball = Path(work) / "base.tar"
        command = [
            "mmdebstrap",
            "--variant=minbase",
            f"--include={','.join(BASE_PACKAGES)}",
            *(f"--dpkgopt={option}" for option in DPKG_EXCLUDES),
            f"--customize-hook=copy-in {pip_conf} /etc",
        ]
        if MERGED_USR_HOOKS.is_dir():
            command.append(f"--hook-dir={MERGED_USR_HOOKS}")
        if CA_BUNDLE.is_file():
            command.append(f"--customize-hook=copy-in {CA_BUNDLE} {CA_BUNDLE.parent}")
        mirrors = debian_mirrors()  # none: mmdebstrap's default mirror for the suite
        command += [SUITE, str(tarball), *mirrors]
        say(f"making the base {tag} with mmdebstrap ({len(mirrors)} of this machine's mirrors)")
        made = subprocess.run(
            command, capture_output=True, text=True, timeout=BASE_TIMEOUT, check=False
        )
        if made.returncode != 0:  # its log is long: the end says why
            tail = "\n".join(made.stderr.splitlines()[-20:])
            raise SystemExit(f"image: mmdebstrap failed:\n{tail}")
        podman("import", "--change", 'CMD ["python3"]', str(tarball), tag, timeout=300)
    say(f"made the base {tag} in {time.monotonic() - started:.0f} s")


def ensure_base() -> str:
    tag = base_tag()
    ensure_tools("podman", "runc")
    if subprocess.run(["podman", "image", "exists", tag], timeout=60).returncode != 0:
        make_base(tag)
    return tag


def build(image: str, layers: bool) -> None:
    ensure_base()
    started = time.monotonic()
    command = [
        "podman",
        "build",
        "--pull=never",  # the base is local; no registry is asked
        "--format=docker",  # the OCI format would drop the Dockerfile's HEALTHCHECK
        f"--layers={str(layers).lower()}",
        "--tag",
        image,
        "--file",
        str(DOCKERFILE),
        str(ROOT),
    ]
    say(shlex.join(command))
    if subprocess.run(command, timeout=BUILD_TIMEOUT, check=False).returncode != 0:
        raise SystemExit(f"image: the build of {image} failed (its output is above)")
    size = int(podman("image", "inspect", "--format", "{{.Size}}", image).strip())
    say(f"built {image} in {time.monotonic() - started:.0f} s: {size / 1e6:.0f} MB")


def main(argv: list[str]) -> None:
    if argv[:1] == ["conf"] and len(argv) == 2:
        Path(argv[1]).write_text(containers_conf())
        return
    if argv not in (["build"], ["base"], ["tools"]):
        raise SystemExit(__doc__)
    if argv == ["tools"]:
        ensure_tools("podman", "runc", "mmdebstrap")
        return
    with tempfile.TemporaryDirectory(prefix="postal-podman.") as work:
        if "CONTAINERS_CONF" not in os.environ:
            conf = Path(work) / "containers.conf"
            conf.write_text(containers_conf())
            os.environ["CONTAINERS_CONF"] = str(conf)
        if argv == ["base"]:
            ensure_base()
        else:
            layers = os.environ.get("LAYERS", "true").lower() != "false"
            build(os.environ.get("IMAGE") or default_image(), layers)


if __name__ == "__main__":
    main(sys.argv[1:])
