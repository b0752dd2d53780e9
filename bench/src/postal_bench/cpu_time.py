"""CPU seconds used by a process and by the whole machine, read from Linux's /proc.

A benchmark on a 2-core machine runs its load generator, a proxy and the server side by side;
to say which one was the bottleneck it compares the CPU each used during a measurement with the
measurement's wall time. Elsewhere than Linux these return None and the report says "-".
"""

from __future__ import annotations

import os
from pathlib import Path

PROC = Path("/proc")


def _ticks_per_second() -> int:
    try:
        return os.sysconf("SC_CLK_TCK")
    except (ValueError, OSError, AttributeError):
        return 100


def _cpu_of(stat: str) -> float:
    """User + system seconds from a /proc/<pid>/stat line."""
    # The command name (field 2) is in parentheses and may hold spaces: split after it.
    fields = stat.rpartition(")")[2].split()
    utime, stime = int(fields[11]), int(fields[12])  # fields 14 and 15 of proc(5)
    return (utime + stime) / _ticks_per_second()


def process_cpu(pid: int | None) -> float | None:
    """User + system CPU seconds of process `pid` so far (its waited-for children excluded)."""
    if pid is None:
        return None
    try:
        stat = (PROC / str(pid) / "stat").read_text()
    except OSError:
        return None
    return _cpu_of(stat)


def tree_cpu(pid: int | None) -> float | None:
    """User + system CPU seconds of process `pid` and of every living descendant of it (a
    server and its worker processes), None when `pid` is gone or /proc cannot be read.

    A descendant that exited meanwhile takes its CPU with it (only a waited-for child's is
    added to its parent's, in fields proc(5) does not sum here): measure while they run.
    """
    own = process_cpu(pid)
    if pid is None or own is None:
        return None
    parents: dict[int, int] = {}
    seconds: dict[int, float] = {}
    for entry in PROC.glob("[0-9]*"):
        try:
            stat = (entry / "stat").read_text()
            child = int(entry.name)
            parents[child] = int(stat.rpartition(")")[2].split()[1])
            seconds[child] = _cpu_of(stat)
        except (OSError, ValueError, IndexError):
            continue  # gone meanwhile, or not readable
    total = own
    below = [child for child, parent in parents.items() if parent == pid]
    while below:
        child = below.pop()
        total += seconds[child]
        below.extend(grandchild for grandchild, parent in parents.items() if parent == child)
    return total


def machine_cpu() -> float | None:
    """CPU seconds every core spent busy (not idle, not waiting for I/O) since boot."""
    try:
        first = (PROC / "stat").read_text().splitlines()[0].split()
    except (OSError, IndexError):
        return None
    if first[0] != "cpu":
        return None
    ticks = [int(value) for value in first[1:9]]  # user nice system idle iowait irq softirq steal
    busy = sum(ticks) - ticks[3] - ticks[4]
    return busy / _ticks_per_second()


def processes_named(name: str) -> float | None:
    """User + system CPU seconds of every running process whose command name is `name`
    (e.g. "postgres": the server and its backends), None when /proc cannot be read."""
    if not PROC.is_dir():
        return None
    total = 0.0
    for entry in PROC.glob("[0-9]*"):
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue  # gone meanwhile
        command = stat[stat.find("(") + 1 : stat.rfind(")")]
        if command == name:
            total += _cpu_of(stat)
    return total
