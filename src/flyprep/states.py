"""The states of a scan, written once: what a master says of its scan, and the ends."""

from __future__ import annotations

import enum


class ScanState(str, enum.Enum):
    """What a ``.ptyd`` master says of its scan (``flyprep/status``: ``state``). A str,
    so it compares, serialises and prints as its value."""

    ACQUIRING = "acquiring"
    COMPLETE = "complete"
    ABORTED = "aborted"

    def __str__(self) -> str:
        return self.value

    def __format__(self, spec: str) -> str:
        return format(self.value, spec)

    @property
    def final(self) -> bool:
        """True once the scan is over (its file is final)."""
        return self is not ScanState.ACQUIRING


#: The states a scan ends in.
END_STATES = (ScanState.COMPLETE, ScanState.ABORTED)
