"""How far an ``.apx`` file has been streamed, kept durably beside it, so that a restarted
streamer goes on where the last one stopped instead of sending every readout again.

The state of ``astropix.apx`` is the hidden file ``.astropix.apx.flyprep-stream`` in the
same directory: ``{"offset": ..., "dev": ..., "ino": ...}``, replaced atomically (written,
fsynced, renamed). It counts only for the same file (device and inode): a file replaced
since is streamed from its start.
"""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path

log = logging.getLogger(__name__)

SUFFIX = ".flyprep-stream"


def state_path(apx: str | os.PathLike[str]) -> Path:
    """Where the stream state of ``apx`` is kept."""
    apx = Path(apx)
    return apx.with_name(f".{apx.name}{SUFFIX}")


def load_offset(apx: str | os.PathLike[str]) -> int | None:
    """The offset streamed up to (a record boundary), if the state is there and is this
    file's; None otherwise."""
    path = state_path(apx)
    try:
        state = json.loads(path.read_text())
        st = os.stat(apx)
    except FileNotFoundError:
        return None
    except (OSError, ValueError) as exc:
        log.warning("%s: stream state unreadable (%s); streaming the file from its start",
                    path, exc)
        return None
    if not isinstance(state, dict) or (state.get("dev"), state.get("ino")) != (st.st_dev,
                                                                             st.st_ino):
        log.warning("%s: stream state is for another file; streaming %s from its start",
                    path, apx)
        return None
    offset = state.get("offset")
    return offset if isinstance(offset, int) and 0 <= offset <= st.st_size else None


def save_offset(apx: str | os.PathLike[str], offset: int) -> None:
    """Keep ``offset`` durably as the state of ``apx``; an OSError is logged (the next
    start then sends some records again, never loses one)."""
    path = state_path(apx)
    tmp = path.with_name(path.name + ".tmp")
    try:
        st = os.stat(apx)
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
        try:
            os.write(fd, json.dumps({"offset": offset, "dev": st.st_dev,
                                     "ino": st.st_ino}).encode())
            os.fsync(fd)
        finally:
            os.close(fd)
        os.replace(tmp, path)
    except OSError as exc:
        log.warning("%s: stream state not saved (%s)", path, exc)
