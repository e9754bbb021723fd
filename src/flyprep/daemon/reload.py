"""What a configuration reload (SIGHUP) changes: a plan, computed apart from applying it.

Settings read when a scan starts (its preparation, output, limits per scan) take effect
for scans that start afterwards; running scans keep theirs. Settings of the parts built
once at start (the watcher, the sockets, the ``.apx`` streams, logging, metrics) change
only with a restart: a reload keeps them as they were and says so.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from ..config import DaemonConfig

#: Sections, or ``section.key``, that a reload cannot change.
RESTART_ONLY = ("watch", "bus", "apx", "log", "metrics", "limits.max_pending_files")


@dataclass(frozen=True)
class ReloadPlan:
    """The configuration to run with, the keys it changes, the keys left for a restart."""

    config: DaemonConfig
    changed: list[str]
    need_restart: list[str]


def _flat(data: Any, prefix: str = "") -> dict[str, Any]:
    if isinstance(data, dict):
        out: dict[str, Any] = {}
        for key, value in data.items():
            out.update(_flat(value, f"{prefix}{key}."))
        return out
    return {prefix.rstrip("."): data}


def _restart_only(key: str) -> bool:
    return any(key == r or key.startswith(r + ".") for r in RESTART_ONLY)


def plan_reload(old: DaemonConfig, new: DaemonConfig) -> ReloadPlan:
    """Run with ``new``, except for what only a restart may change (kept from ``old``)."""
    before, after = _flat(old.model_dump(mode="json")), _flat(new.model_dump(mode="json"))
    differ = sorted(k for k in before.keys() | after.keys() if before.get(k) != after.get(k))
    changed = [k for k in differ if not _restart_only(k)]
    need_restart = [k for k in differ if _restart_only(k)]
    update: dict[str, Any] = {s: getattr(old, s) for s in RESTART_ONLY if "." not in s}
    limits = new.limits.model_copy(update={"max_pending_files": old.limits.max_pending_files})
    config = new.model_copy(update={**update, "limits": limits})
    return ReloadPlan(config, changed, need_restart)
