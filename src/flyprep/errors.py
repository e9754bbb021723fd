"""The exceptions flyprep raises: one base class, a few meaningful kinds."""

from __future__ import annotations

import errno
import os


class FlyprepError(Exception):
    """Base of every error flyprep raises on purpose."""


class ConfigError(FlyprepError):
    """A configuration value is missing, malformed or inconsistent."""


class InputError(FlyprepError):
    """An input file (frame, positions, geometry) cannot be used; names the file."""

    def __init__(self, path: str | os.PathLike[str], reason: str) -> None:
        self.path = os.fspath(path)
        self.reason = reason
        super().__init__(f"{self.path}: {reason}")


class PtydError(FlyprepError):
    """A ``.ptyd`` file breaks the format contract; names the file and the HDF5 path."""

    def __init__(self, path: str | os.PathLike[str], h5path: str, reason: str) -> None:
        self.path = os.fspath(path)
        self.h5path = h5path
        self.reason = reason
        super().__init__(f"{self.path}:{h5path}: {reason}")


class OutputError(FlyprepError):
    """Prepared data could not be written (disk full, permissions, existing output)."""


class DiskFull(OutputError):
    """A write met a full disk or quota. What is published stays as it was (the master
    still ``acquiring``): the scan is written again from its files once there is space."""


#: OS errors that mean "no space": the scan waits for space instead of failing.
NO_SPACE = frozenset({errno.ENOSPC, errno.EDQUOT})


def is_disk_full(exc: BaseException) -> bool:
    """True when ``exc`` or an error it was raised from is a full disk or quota."""
    seen: set[int] = set()
    current: BaseException | None = exc
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        if isinstance(current, DiskFull) or (isinstance(current, OSError)
                                             and current.errno in NO_SPACE):
            return True
        current = current.__cause__ or current.__context__
    return False


class ScanInterrupted(FlyprepError):
    """A scan was stopped before its end (the daemon is shutting down): what is written
    stays as it is, the master still says ``acquiring``, and a restart resumes it."""
