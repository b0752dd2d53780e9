"""scripts/image.py (`make image`) checked offline: the containers.conf it gives podman, and what
of this machine's apt and pip configuration it carries into the base image. The build itself is
tests/image (opt-in: `make image-test`)."""

from __future__ import annotations

import importlib.util
import resource
import subprocess
import sys
import tomllib
from pathlib import Path
from types import ModuleType

import pytest
from dockerfile_parse import DockerfileParser

SCRIPT = Path(__file__).parents[2] / "scripts" / "image.py"

POLICY = """\
Package files:
 100 /var/lib/dpkg/status
     release a=now
 500 http://mirror.example/debian-security bookworm-security/main amd64 Packages
     release v=12,o=Debian,a=oldstable-security,n=bookworm-security,l=Debian-Security,c=main,b=amd64
     origin mirror.example
 500 http://mirror.example/debian bookworm/main amd64 Packages
     release v=12.15,o=Debian,a=oldstable,n=bookworm,l=Debian,c=main,b=amd64
     origin mirror.example
 500 http://mirror.example/debian bookworm/main all Packages
     release v=12.15,o=Debian,a=oldstable,n=bookworm,l=Debian,c=main,b=all
     origin mirror.example
 500 http://mirror.example/debian trixie/main amd64 Packages
     release v=13,o=Debian,a=stable,n=trixie,l=Debian,c=main,b=amd64
     origin mirror.example
 500 https://vendor.example/apt bookworm/main amd64 Packages
     release o=Vendor,n=bookworm,c=main,b=amd64
     origin vendor.example
Pinned packages:
"""


@pytest.fixture(scope="module")
def image() -> ModuleType:
    """The script as a module (it is not a package: `make image` runs it as a file)."""
    spec = importlib.util.spec_from_file_location("postal_image_script", SCRIPT)
    assert spec is not None
    assert spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_the_containers_conf_asks_for_runc_and_no_more_than_this_machine_allows(
    tmp_path: Path,
) -> None:
    path = tmp_path / "containers.conf"
    subprocess.run([sys.executable, SCRIPT, "conf", str(path)], check=True, timeout=30)
    conf = tomllib.loads(path.read_text())
    assert conf["engine"]["runtime"] == "runc"
    limits = dict(item.split("=") for item in conf["containers"]["default_ulimits"])
    for name, kind in (("nofile", resource.RLIMIT_NOFILE), ("nproc", resource.RLIMIT_NPROC)):
        soft, hard = (int(value) for value in limits[name].split(":"))
        assert soft == hard > 0
        machine = resource.getrlimit(kind)[1]
        assert machine == resource.RLIM_INFINITY or hard <= machine


def test_the_base_gets_the_suites_debian_mirrors_and_nothing_else(image: ModuleType) -> None:
    assert image.mirrors_from_policy(POLICY) == [
        "deb http://mirror.example/debian-security bookworm-security main",
        "deb http://mirror.example/debian bookworm main",  # once, though listed for two arches
    ]
    assert image.mirrors_from_policy("") == []  # no package lists: mmdebstrap's default mirror


def test_pip_settings_rank_the_environment_over_the_files(image: ModuleType) -> None:
    listing = (
        "global.index-url='https://files.example/simple'\n"
        "install.index-url='https://install.example/simple'\n"
        ":env:.index-url='https://env.example/simple'\n"
        "global.cert='/etc/ssl/certs/ca-certificates.crt'\n"
    )
    assert image.pip_settings_from(listing) == {
        "index-url": "https://env.example/simple",
        "cert": "/etc/ssl/certs/ca-certificates.crt",
    }


def test_only_shareable_indexes_reach_the_base(image: ModuleType) -> None:
    settings = {
        "index-url": "https://user:secret@private.example/simple",
        "extra-index-url": "file:///opt/pypi/simple https://extra.example/simple",
        "find-links": "/opt/wheels",
    }
    conf = image.base_pip_conf(settings)
    assert conf.splitlines() == [
        "[global]",
        "cert = /etc/ssl/certs/ca-certificates.crt",
        "extra-index-url = https://extra.example/simple",
    ]
    assert "secret" not in conf


def test_the_base_is_the_image_the_dockerfile_names(image: ModuleType) -> None:
    (base,) = set(DockerfileParser(path=str(image.DOCKERFILE)).parent_images)
    assert image.base_tag() == base
