"""The uvicorn internals the bounded protocol leans on (docs/private-names.md,
`postal/cli/serve_protocol.py`) are there, and behave as it assumes, in the version checked.

The first test is the tripwire of an upgrade: after `make lock` brings another uvicorn, it fails
until someone has read the protocol against the new release and moved UVICORN_CHECKED (and the
row in docs/private-names.md).
"""

from __future__ import annotations

import asyncio
import importlib.metadata
import inspect
import re
from pathlib import Path
from typing import Any

import pytest
from uvicorn.config import Config
from uvicorn.protocols.http.flow_control import FlowControl
from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol, RequestResponseCycle
from uvicorn.server import ServerState

from postal.cli.serve_protocol import UVICORN_CHECKED, BoundedHttpToolsProtocol

ROOT = Path(__file__).resolve().parents[2]
LOCKS = ROOT / "requirements"


def test_the_installed_uvicorn_is_the_one_the_protocol_was_checked_against() -> None:
    installed = importlib.metadata.version("uvicorn")
    assert installed == UVICORN_CHECKED, (
        f"uvicorn {installed} is installed, but postal/cli/serve_protocol.py was checked against"
        f" {UVICORN_CHECKED}: read it against the new release, then move UVICORN_CHECKED"
    )
    row = next(
        line for line in (ROOT / "docs" / "private-names.md").read_text().splitlines()
        if line.startswith("| uvicorn |")
    )  # fmt: skip
    assert f"| {UVICORN_CHECKED} |" in row


@pytest.mark.parametrize("lock", ["dev.txt", "main.txt"])
def test_the_lock_pins_that_uvicorn(lock: str) -> None:
    pins = re.findall(r"^uvicorn==(\S+)", (LOCKS / lock).read_text(), flags=re.MULTILINE)
    assert pins == [UVICORN_CHECKED]


async def app(scope: Any, receive: Any, send: Any) -> None:  # pragma: no cover - never called
    raise AssertionError


def test_the_protocol_has_the_attributes_the_subclass_reads() -> None:
    async def build() -> HttpToolsProtocol:
        config = Config(app, loop="none", log_config=None)
        config.load()
        return HttpToolsProtocol(config, ServerState(), {}, asyncio.get_running_loop())

    protocol = asyncio.run(build())
    names = {
        "config", "app", "loop", "connections", "transport", "flow", "headers", "scope", "cycle",
        "server_state", "timeout_keep_alive", "timeout_keep_alive_task",
    }  # fmt: skip
    assert names <= set(vars(protocol))
    assert protocol.app is protocol.config.loaded_app
    assert callable(protocol.timeout_keep_alive_handler)
    assert isinstance(protocol.server_state.default_headers, list)
    # Fewer than 30 attributes of its own: the subclass adds one, and CPython's fast attribute
    # access stops past 30 (see `Bounds`).
    assert len(vars(protocol)) <= 28


def test_the_methods_called_straight_are_uvicorn_s_own() -> None:
    for name in ("data_received", "on_headers_complete", "on_message_complete"):
        assert name in vars(HttpToolsProtocol)
        assert name in vars(BoundedHttpToolsProtocol)
        ours = inspect.signature(getattr(BoundedHttpToolsProtocol, name)).parameters
        assert list(ours) == list(inspect.signature(getattr(HttpToolsProtocol, name)).parameters)


def test_uvicorn_does_what_the_protocol_assumes() -> None:
    """Read from uvicorn's source, since they are behaviours rather than names: the request's
    app is `self.app`, read when its head is complete; each request gets a new scope at its
    first byte, handed to its cycle with the head; the keep-alive timer is armed only after a
    response; a cycle in flight keeps `keep_alive` and closes after its answer when it is off."""
    begin = inspect.getsource(HttpToolsProtocol.on_message_begin)
    complete = inspect.getsource(HttpToolsProtocol.on_headers_complete)
    assert "self.scope = {" in begin
    assert "app = self.app" in complete
    assert "scope=self.scope" in complete
    assert "timeout_keep_alive_task = self.loop.call_later(" in inspect.getsource(
        HttpToolsProtocol.on_response_complete
    )
    assert "timeout_keep_alive_task" not in inspect.getsource(HttpToolsProtocol.connection_made)
    send = inspect.getsource(RequestResponseCycle.send)
    assert "if not self.keep_alive:\n                    self.transport.close()" in send
    assert "if self.disconnected:" in send
    cycle = set(inspect.signature(RequestResponseCycle.__init__).parameters)
    assert {"keep_alive", "message_event", "expect_100_continue"} <= cycle
    init = inspect.getsource(RequestResponseCycle.__init__)
    flags = ("response_started", "response_complete", "disconnected", "waiting_for_100_continue")
    for name in flags:
        assert f"self.{name} = " in init
    assert "self.read_paused = " in inspect.getsource(FlowControl.__init__)
