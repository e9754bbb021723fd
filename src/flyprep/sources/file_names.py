"""What the numbers in frame file names say: files numbered one by one
(``scan_000001.h5``, ``scan_000002.h5``) or by the first frame they hold
(``frames_000000.h5``, ``frames_000100.h5``). :class:`NameRule` learns which from the
files placed, and then tells the next file's name, a name missing between two files, and
the frame count of a file that cannot be read."""

from __future__ import annotations

import re
from collections.abc import Sequence
from pathlib import Path

_LAST_NUMBER = re.compile(r"^(.*?)(\d+)(\D*)$")


def name_number(path: Path) -> tuple[tuple[str, str, str], int, str] | None:
    """((directory, text before, text after), the last number in the name, its digits) of
    a frame file name, or None; the 5 of '.h5' is no frame number, the 12 of 'scan.000012'
    is."""
    stem, suffix = path.stem, path.suffix
    match = _LAST_NUMBER.match(stem)
    if match is None:
        if not suffix[1:].isdigit():
            return None
        stem, suffix = path.name, ""
        match = _LAST_NUMBER.match(stem)
        if match is None:
            return None
    head, digits, tail = match.groups()
    return (str(path.parent), head, tail + suffix), int(digits), digits


class NameRule:
    """Whether name numbers count frames (``number - first frame`` the same for every file
    placed), learnt from the files placed; not thread-safe."""

    def __init__(self) -> None:
        self.offset: int | None = None  # name number - first frame, if constant
        self.steps = 0  # files placed that confirmed it
        self.refuted = False

    @property
    def numbers_frames(self) -> bool:
        """Confirmed by at least one file and refuted by none."""
        return self.steps > 0 and not self.refuted

    def note(self, path: Path, start: int) -> None:
        """A readable file was placed at frame ``start``."""
        number = name_number(path)
        if number is None:
            return
        if self.offset is None:
            self.offset = number[1] - start
        elif number[1] - start == self.offset:
            self.steps += 1
        else:
            self.refuted = True

    def is_successor(self, last: Path | None, path: Path, next_index: int) -> bool:
        """True when ``path`` is certainly the file right after ``last`` (whose frames end
        before ``next_index``), as the names tell: the number one higher, or, when names
        number frames, the number of frame ``next_index``."""
        if last is None or last.parent != path.parent:
            return False
        mine, theirs = name_number(last), name_number(path)
        if mine is None or theirs is None or mine[0] != theirs[0]:
            return False
        if self.numbers_frames:
            return self.offset is not None and theirs[1] - self.offset == next_index
        return theirs[2] == f"{mine[1] + 1:0{len(mine[2])}d}"

    def missing_before(self, last: Path | None, last_count: int | None, path: Path,
                       next_index: int) -> Path | None:
        """The name of a frame file that should come between ``last`` (``last_count``
        frames) and ``path`` but does not exist (their numbers skip one), or None."""
        if last is None:
            return None
        mine, theirs = name_number(last), name_number(path)
        if mine is None or theirs is None or mine[0] != theirs[0]:
            return None
        confirmed = self.numbers_frames
        if not self.refuted and self.offset is not None and \
                theirs[1] - self.offset == next_index:
            return None  # its number is the frame it must start at
        if theirs[1] - mine[1] == 1 and not (confirmed and (last_count or 0) > 1):
            return None  # names number files: the next one
        expected = mine[1] + (last_count if confirmed and last_count else 1)
        if expected >= theirs[1]:
            return None
        _, head, tail = mine[0]
        return last.with_name(f"{head}{expected:0{len(mine[2])}d}{tail}")

    def would_count(self, path: Path, start: int,
                    readable: Sequence[tuple[Path, int | None]]) -> bool:
        """True when the names may tell the frame count of ``path`` (unreadable, at frame
        ``start``): numbers step by frame counts in at least one pair of files (placed
        before, or ``readable`` (file, frames or None) in name order), none contradicts
        it, and ``path``'s number agrees with ``start``."""
        if self.refuted:
            return False
        steps = self.steps
        for (p1, n), (p2, _) in zip(readable, readable[1:]):
            n1, n2 = name_number(p1), name_number(p2)
            if n is None or n1 is None or n2 is None or n1[0] != n2[0]:
                continue
            if n2[1] - n1[1] != n:
                return False
            steps += 1
        mine = name_number(path)
        if self.offset is not None and (mine is None or mine[1] - self.offset != start):
            return False
        return steps > 0

    def count_between(self, path: Path, start: int, successor: Path) -> int | None:
        """The frame count of ``path`` (at frame ``start``) its ``successor``'s name tells,
        when :meth:`would_count`; the rule is then confirmed once more."""
        mine, theirs = name_number(path), name_number(successor)
        if mine is None or theirs is None or mine[0] != theirs[0] or theirs[1] <= mine[1]:
            return None
        if self.offset is None:
            self.offset = mine[1] - start
        self.steps += 1
        return theirs[1] - mine[1]
