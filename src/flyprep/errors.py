"""The exceptions flyprep raises: one base class, a few meaningful kinds."""

from __future__ import annotations

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


class ScanInterrupted(FlyprepError):
    """A scan was stopped before its end (the daemon is shutting down): what is written
    stays as it is, the master still says ``acquiring``, and a restart resumes it."""
