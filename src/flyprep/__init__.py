"""flyprep: on-the-fly preparation of ptychography scans into PtyPy ``.ptyd`` files."""

from __future__ import annotations

__all__ = ["__version__"]


def __getattr__(name: str) -> str:
    # The version is looked up when asked for: importlib.metadata costs a tenth of a
    # second, which every command and the daemon's control process would pay.
    if name == "__version__":
        from importlib.metadata import PackageNotFoundError, version

        try:
            found = version("flyprep")
        except PackageNotFoundError:  # a source tree that was never installed
            found = "0.0.0+unknown"
        globals()["__version__"] = found
        return found
    raise AttributeError(f"module 'flyprep' has no attribute {name!r}")
