"""CPU time and memory of the servers under test, from /proc (Linux only).

The gateway may run as one ``gateway serve`` process (writer in-process) or as a supervisor
with ``gateway http`` and ``gateway writer`` children: processes are told apart by their
command line, so the same code reports either layout.
"""

from __future__ import annotations

import os
from collections import defaultdict
from pathlib import Path

CLK_TCK = os.sysconf("SC_CLK_TCK")
IN_PROCESS = "gateway (writer in-process)"


def _stat(pid: int) -> list[str]:
    """Fields of /proc/<pid>/stat after the command name (which may hold spaces): [0] is state."""
    text = Path(f"/proc/{pid}/stat").read_text()
    return text[text.rindex(")") + 2:].split()


def cmdline(pid: int) -> str:
    return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace").strip()


def cpu_seconds(pid: int, waited_children: bool = False) -> float:
    """utime + stime, plus cutime + cstime (children that exited and were waited for) if asked;
    0 for a process that is gone."""
    try:
        fields = _stat(pid)
    except (FileNotFoundError, ProcessLookupError):
        return 0.0
    ticks = int(fields[11]) + int(fields[12])
    if waited_children:
        ticks += int(fields[13]) + int(fields[14])
    return ticks / CLK_TCK


def rss_bytes(pid: int) -> int:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    except (FileNotFoundError, ProcessLookupError):
        pass
    return 0  # gone, or a zombie


def descendants(pid: int) -> list[int]:
    """Every live descendant of ``pid``, from the parent ids in /proc/*/stat."""
    children: dict[int, list[int]] = defaultdict(list)
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                children[int(_stat(int(entry.name))[1])].append(int(entry.name))
            except (FileNotFoundError, ProcessLookupError):
                continue
    found, todo = [], [pid]
    while todo:
        kids = children.get(todo.pop(), [])
        found += kids
        todo += kids
    return found


def role(cmd: str) -> str:
    if "gateway http" in cmd:
        return "gateway"
    if "gateway writer" in cmd:
        return "writer"
    return "other gateway process"


def gateway_roles(root: int) -> dict[str, list[int]]:
    """The gateway's processes by role: ``gateway`` (HTTP), ``writer``, ``supervisor``; a lone
    ``gateway serve`` is ``gateway (writer in-process)``."""
    roles: dict[str, list[int]] = defaultdict(list)
    for pid in descendants(root):
        try:
            roles[role(cmdline(pid))].append(pid)
        except (FileNotFoundError, ProcessLookupError):
            continue
    if "gateway" in roles:
        roles["supervisor"].append(root)
    elif "writer" in roles:
        roles["gateway"].append(root)
    else:
        roles[IN_PROCESS].append(root)
    return dict(roles)


def gateway_rss(root: int) -> int:
    return rss_bytes(root) + sum(rss_bytes(pid) for pid in descendants(root))


def postmaster_pid(pgdata: Path) -> int:
    """The first line of postmaster.pid."""
    return int((pgdata / "postmaster.pid").read_text().split()[0])


def cpu_snapshot(gateway: int, redis: int | None, postgres: int | None) -> dict[str, float | None]:
    """CPU seconds so far by role; Redis and PostgreSQL are None when they are not ours (external).
    PostgreSQL is the postmaster with its exited backends plus every live backend."""
    snap: dict[str, float | None] = {name: sum(cpu_seconds(p) for p in pids)
                                     for name, pids in gateway_roles(gateway).items()}
    snap["Redis"] = None if redis is None else cpu_seconds(redis)
    snap["PostgreSQL"] = None if postgres is None else (
        cpu_seconds(postgres, waited_children=True) + sum(cpu_seconds(p) for p in descendants(postgres)))
    return snap


def cpu_used(before: dict[str, float | None], after: dict[str, float | None]) -> dict[str, float | None]:
    """CPU seconds per role between two snapshots (None stays None: not measured)."""
    used: dict[str, float | None] = {}
    for name in after.keys() | before.keys():
        a, b = after.get(name, 0.0), before.get(name, 0.0)
        used[name] = None if a is None or b is None else a - b
    return used
