"""A scan's quarantine: files that cannot be read are moved into one directory of the scan
(or only listed there, when they are left in place), never deleted, and every one is
listed in ``quarantine.jsonl`` with the frames it held, so that a restart fails the same
frames again without waiting for them."""

from __future__ import annotations

import json
import logging
import os
import time
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)

#: The list of a quarantine directory, one JSON object per line.
QUARANTINE_LIST = "quarantine.jsonl"


class Quarantine:
    """The quarantine directory ``directory`` of the scan in ``scan_dir``."""

    def __init__(self, scan_dir: Path, directory: str) -> None:
        self.scan_dir = Path(scan_dir)
        self.directory = self.scan_dir / directory
        #: entries in the list: those read at a restart and those added since
        self.listed = 0

    @property
    def listing(self) -> Path:
        """The list (``quarantine.jsonl``)."""
        return self.directory / QUARANTINE_LIST

    def rel(self, path: Path) -> str:
        """``path`` as the list names it: relative to the scan directory."""
        try:
            return Path(path).relative_to(self.scan_dir).as_posix()
        except ValueError:
            return Path(path).name

    def put(self, path: Path, reason: str, indices: list[int], *, move: bool,
            reserved: bool, **extra: Any) -> Path | None:
        """List ``path`` (then move it in, with ``move`` and when it exists); returns where
        it went, None if it stays where it is. Listed first: a file moved but never listed
        would let a restart place the files after it too early. An OSError is logged and
        the file stays."""
        target = None
        try:
            target = self._target_for(path) if move and path.exists() else None
            self.record(path, target, indices, reason, reserved=reserved or target is not None,
                        **extra)
            if target is not None:
                os.replace(path, target)
        except OSError as exc:
            log.error("%s: could not quarantine (%s); it stays where it is", path, exc)
            target = None
        return target

    def record(self, path: Path, target: Path | None, indices: list[int], reason: str, *,
               reserved: bool, **extra: Any) -> None:
        """Append an entry to the list (read again at a restart)."""
        self.directory.mkdir(parents=True, exist_ok=True)
        entry = {"file": self.rel(path), "moved_to": None if target is None else target.name,
                 "indices": indices, "reason": reason, "time": time.time(),
                 "reserved": bool(reserved), **extra}
        with open(self.listing, "a") as f:
            f.write(json.dumps(entry) + "\n")
        self.listed += 1

    def entries(self) -> list[dict[str, Any]]:
        """Every entry of the list, in order; lines that are not entries are logged and
        skipped."""
        try:
            lines = self.listing.read_text().splitlines()
        except FileNotFoundError:
            return []
        except OSError as exc:
            log.warning("%s: unreadable (%s)", self.listing, exc)
            return []
        found = []
        for lineno, line in enumerate(lines, 1):
            try:
                entry = json.loads(line)
                if not isinstance(entry, dict) or "file" not in entry:
                    raise ValueError("no file")
            except ValueError:
                log.warning("%s: line %d is not a quarantine entry", self.listing, lineno)
                continue
            found.append(entry)
        self.listed = len(found)
        return found

    def _target_for(self, path: Path) -> Path:
        """Where ``path`` goes in the directory: a name not taken yet."""
        self.directory.mkdir(parents=True, exist_ok=True)
        base = self.directory / self.rel(path).replace("/", "__")
        target, k = base, 1
        while target.exists():
            target = base.with_name(f"{base.name}.{k}")
            k += 1
        return target
