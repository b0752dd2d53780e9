"""The targets `postal bench http` checks, each said met or NOT met in words and in JSON.

Two sets, each on the medians and median per-run ratios of `http.stats`:

- against the peer (a plain redis.asyncio app): Postal (near cache on) serves at least the
  peer's req/s, with an open-loop p99 under 5 ms;
- against the floor (a bare route on the same server, same bytes), the near cache's: with the near
  cache on, at least 0.8x the floor's req/s and a p99 at most 1.5x the floor's; with it off, at
  least 0.5x and at most 3x. The p99 bound holds in both loops: the open loop's (at 1,000 req/s)
  and the closed loop's (100 connections back to back, where the issue measured its tails).

A target whose figures were not measured (the target, or its reference, not in `--targets`) is
"not measured", never met.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from postal_bench.http.stats import POSTAL, POSTAL_NEAR_OFF, TargetSummary
from postal_bench.stats import MS, ms_or_none, show_ms, show_ratio

RPS_TARGET = 1.0  # postal must serve at least the peer's requests per second...
P99_TARGET = 0.005  # s: ...with a p99 under 5 ms in the open loop (at 1,000 req/s by default)

# The near cache's targets, against the floor: (least req/s ratio, most p99 ratio) per target.
FLOOR_TARGETS = {POSTAL: (0.8, 1.5), POSTAL_NEAR_OFF: (0.5, 3.0)}
FLOOR_LABELS = {POSTAL: "near cache on", POSTAL_NEAR_OFF: "near cache off"}


def verdict(met: bool | None) -> str:
    return {True: "met", False: "NOT met", None: "not measured"}[met]


@dataclass(frozen=True, slots=True)
class TargetCheck:
    """Postal's two targets against the peer; None where Postal or the peer was not measured."""

    rps_vs_peer: float | None
    p99: float | None
    rate: float  # the open loop's rate the p99 was measured at, req/s

    @property
    def rps_met(self) -> bool | None:
        return None if self.rps_vs_peer is None else self.rps_vs_peer >= RPS_TARGET

    @property
    def p99_met(self) -> bool | None:
        return None if self.p99 is None else self.p99 < P99_TARGET

    @property
    def met(self) -> bool:
        return bool(self.rps_met and self.p99_met)

    def line(self) -> str:
        if self.rps_vs_peer is None and self.p99 is None:
            return "targets: not checked (postal was not measured)"
        return (
            f"targets: postal req/s vs peer {show_ratio(self.rps_vs_peer)}"
            f" (>= {RPS_TARGET:.1f}x): {verdict(self.rps_met)};"
            f" postal p99 at {self.rate:,.0f} req/s {show_ms(self.p99)} ms"
            f" (< {P99_TARGET * MS:g} ms): {verdict(self.p99_met)}"
        )

    def to_json(self) -> dict[str, object]:
        return {
            "rps_vs_peer": self.rps_vs_peer,
            "rps_target": RPS_TARGET,
            "p99_ms": ms_or_none(self.p99),
            "p99_target_ms": P99_TARGET * MS,
            "open_loop_rate": self.rate,
            "met": self.met,
            "line": self.line(),
        }


def _postal(
    summaries: Sequence[TargetSummary], name: str, topology: str | None
) -> TargetSummary | None:
    """The target `name` on `topology` (by default, the first measured)."""
    return next((s for s in summaries if s.name == name and topology in (None, s.topology)), None)


def check_targets(
    summaries: Sequence[TargetSummary], rate: float, topology: str | None = None
) -> TargetCheck:
    """Postal's targets against the peer on `topology` (by default, the first Postal measured)."""
    postal = _postal(summaries, POSTAL, topology)
    if postal is None:
        return TargetCheck(None, None, rate)
    return TargetCheck(postal.rps_vs_peer, postal.p99, rate)


@dataclass(frozen=True, slots=True)
class FloorCheck:
    """One Postal target against the floor: its req/s and p99 ratios and the near cache's bounds."""

    name: str  # POSTAL or POSTAL_NEAR_OFF
    rps_vs_floor: float | None
    p99_vs_floor: float | None  # the open loop's
    closed_p99_vs_floor: float | None = None  # the closed loop's

    @property
    def rps_target(self) -> float:
        return FLOOR_TARGETS[self.name][0]

    @property
    def p99_target(self) -> float:
        return FLOOR_TARGETS[self.name][1]

    @property
    def rps_met(self) -> bool | None:
        return None if self.rps_vs_floor is None else self.rps_vs_floor >= self.rps_target

    @property
    def p99_met(self) -> bool | None:
        measured = [r for r in (self.p99_vs_floor, self.closed_p99_vs_floor) if r is not None]
        return None if not measured else all(r <= self.p99_target for r in measured)

    @property
    def met(self) -> bool:
        return bool(self.rps_met and self.p99_met)

    def line(self) -> str:
        return (
            f"{self.name} ({FLOOR_LABELS[self.name]}): req/s {show_ratio(self.rps_vs_floor)}"
            f" of the floor's (>= {self.rps_target:g}x): {verdict(self.rps_met)};"
            f" p99 {show_ratio(self.p99_vs_floor)} the floor's in the open loop,"
            f" {show_ratio(self.closed_p99_vs_floor)} in the closed loop"
            f" (<= {self.p99_target:g}x): {verdict(self.p99_met)}"
        )

    def to_json(self) -> dict[str, object]:
        return {
            "target": self.name,
            "rps_vs_floor": self.rps_vs_floor,
            "rps_target": self.rps_target,
            "p99_vs_floor": self.p99_vs_floor,
            "closed_p99_vs_floor": self.closed_p99_vs_floor,
            "p99_target": self.p99_target,
            "met": self.met,
            "line": self.line(),
        }


def check_floor_targets(
    summaries: Sequence[TargetSummary], topology: str | None = None
) -> list[FloorCheck]:
    """The near cache's targets for both Postals on `topology`, measured or not."""
    checks = []
    for name in FLOOR_TARGETS:
        postal = _postal(summaries, name, topology)
        if postal is None:
            checks.append(FloorCheck(name, None, None))
        else:
            checks.append(
                FloorCheck(
                    name, postal.rps_vs_floor, postal.p99_vs_floor, postal.closed_p99_vs_floor
                )
            )
    return checks
