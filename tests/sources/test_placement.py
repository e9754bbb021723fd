"""HDF5 stacks are placed only where they certainly belong: an unreadable file whose frame
count is unknown never shifts the files after it (issue: 180 of 200 frames misplaced)."""

from __future__ import annotations

from pathlib import Path

import h5py
import numpy as np

from flyprep.sources.live import LiveFrames

DATA = "/entry/data/data"


class Clock:
    def __init__(self) -> None:
        self.t = 100.0

    def __call__(self) -> float:
        return self.t


def stacks(scan: Path, names: list[str], per_file: int, *, bad: set[int]) -> list[Path]:
    """Files holding ``per_file`` frames valued by their global index; ``bad`` ones garbage."""
    scan.mkdir(parents=True, exist_ok=True)
    (scan / "positions.txt").write_text("".join(f"{i} {i}\n" for i in range(len(names) * per_file)))
    paths = []
    for k, name in enumerate(names):
        path = scan / name
        if k in bad:
            path.write_bytes(b"\x00garbage, no HDF5" * 50)
        else:
            with h5py.File(path, "w") as f:
                f[DATA] = np.stack([np.full((4, 4), k * per_file + j, np.int32)
                                    for j in range(per_file)])
        paths.append(path)
    return paths


def live(scan: Path, clock: Clock, **kw) -> LiveFrames:
    lf = LiveFrames(scan, layout="hdf5", positions_file="positions.txt", quarantine_dir="q",
                    read_retries=0, hold_timeout_s=10.0, clock=clock, **kw)
    lf.refresh()
    return lf


def values(lf: LiveFrames, n: int) -> dict[int, int]:
    """index -> the value of the frame placed there (its true index)."""
    out = {}
    for i in range(n):
        if lf.get(i) is not None:
            out[i] = int(lf.read(i, stop=n)[0, 0])
    return out


def test_a_garbage_first_stack_with_file_numbered_names_holds_every_later_frame_then_fails_them(
        tmp_path: Path) -> None:
    clock = Clock()
    paths = stacks(tmp_path / "s", [f"data_{k + 1:06d}.h5" for k in range(10)], 20, bad={0})
    lf = live(tmp_path / "s", clock)
    for path in paths:
        lf.add_file(path)
    assert values(lf, 200) == {}  # nothing guessed: frame 1 is not file 2's first frame
    assert lf.failure(0) is None  # not yet decided either
    clock.t += 10.0
    lf.refresh()
    assert values(lf, 200) == {}
    assert all(lf.failure(i) is not None for i in range(200))
    assert lf.failure(0).path == str(tmp_path / "s" / "data_000001.h5")
    assert "unreadable" in lf.failure(0).reason and "frame count is unknown" in lf.failure(0).reason
    assert (tmp_path / "s" / "q" / "data_000001.h5").exists()  # moved, never deleted


def test_a_garbage_first_stack_with_frame_numbered_names_is_placed_by_its_successor(
        tmp_path: Path) -> None:
    clock = Clock()
    paths = stacks(tmp_path / "s", [f"data_{k * 20:06d}.h5" for k in range(10)], 20, bad={0})
    lf = live(tmp_path / "s", clock)
    for path in paths:
        lf.add_file(path)
    assert values(lf, 200) == {i: i for i in range(20, 200)}
    assert sorted(lf.failed) == list(range(20))
    assert lf.failed[0].path == str(paths[0])


def test_a_garbage_stack_with_a_declared_length_is_placed_at_once(tmp_path: Path) -> None:
    clock = Clock()
    paths = stacks(tmp_path / "s", [f"data_{k + 1:06d}.h5" for k in range(10)], 20, bad={0, 4})
    lf = live(tmp_path / "s", clock, frames_per_file=20, num_frames=200)
    for path in paths:
        lf.add_file(path)
    good = {i: i for i in range(200) if not (i < 20 or 80 <= i < 100)}
    assert values(lf, 200) == good
    assert sorted(lf.failed) == list(range(20)) + list(range(80, 100))


def test_a_garbage_last_file_needs_no_count(tmp_path: Path) -> None:
    """Nothing follows it: its frames fail when the scan ends, the rest stay placed."""
    clock = Clock()
    paths = stacks(tmp_path / "s", [f"data_{k + 1:06d}.h5" for k in range(3)], 5, bad={2})
    lf = live(tmp_path / "s", clock)
    for path in paths:
        lf.add_file(path)
    assert values(lf, 15) == {i: i for i in range(10)}
    lf.finish()
    assert all(lf.failure(i) is not None for i in range(10, 15))


def test_a_restart_keeps_an_unresolved_stack_waiting_and_places_nothing_after_it(
        tmp_path: Path) -> None:
    clock = Clock()
    paths = stacks(tmp_path / "s", [f"d_{k + 1:02d}.h5" for k in range(4)], 3, bad={1})
    lf = live(tmp_path / "s", clock)
    lf.add_file(paths[0])
    lf.add_file(paths[1])  # garbage: moved to the quarantine, count unknown
    assert values(lf, 12) == {0: 0, 1: 1, 2: 2}
    # the daemon dies here; after the restart the later files come in any order
    again = live(tmp_path / "s", clock)
    for path in (paths[3], paths[2], paths[0]):
        again.add_file(path)
    assert values(again, 12) == {0: 0, 1: 1, 2: 2}  # d_03 is not placed at 3
    clock.t += 10.0
    again.refresh()
    assert values(again, 12) == {0: 0, 1: 1, 2: 2}
    assert all(again.failure(i) is not None for i in range(3, 12))


def test_frame_types_come_from_headers(tmp_path: Path) -> None:
    (tmp_path / "positions.txt").write_text("a.npy 0 0\nb.npy 0 0\n")
    np.save(tmp_path / "a.npy", np.zeros((7, 9), np.uint16))
    (tmp_path / "b.npy").write_bytes(b"junk")
    lf = LiveFrames(tmp_path, positions_file="positions.txt", quarantine_dir="q")
    lf.add_file(tmp_path / "a.npy")
    lf.add_file(tmp_path / "b.npy")
    assert lf.frame_type(0) == ((7, 9), np.dtype("<u2"))
    assert lf.frame_type(1) is None  # unreadable header: no vote
    assert lf.frame_type(2) is None  # not placed


def test_a_stack_never_written_is_noticed_by_the_gap_in_the_names(tmp_path: Path) -> None:
    """data_000003.h5 never comes: data_000004.h5 is not placed where data_000003's
    frames belong; with a declared length its frames go after the gap."""
    clock = Clock()
    paths = stacks(tmp_path / "s", [f"data_{k + 1:06d}.h5" for k in range(5)], 4, bad=set())
    paths[2].unlink()
    lf = live(tmp_path / "s", clock)
    for path in (paths[0], paths[1], paths[3], paths[4]):
        lf.add_file(path)
    assert values(lf, 20) == {i: i for i in range(8)}  # data_000004 waits for data_000003
    clock.t += 10.0
    lf.refresh()
    assert values(lf, 20) == {i: i for i in range(8)}  # its length is unknown: nothing after
    assert all(lf.failure(i) is not None for i in range(8, 20))

    declared = live(tmp_path / "s2", clock, frames_per_file=4)
    paths = stacks(tmp_path / "s2", [f"data_{k + 1:06d}.h5" for k in range(5)], 4, bad=set())
    paths[2].unlink()
    declared = live(tmp_path / "s2", clock, frames_per_file=4)
    for path in (paths[0], paths[1], paths[3], paths[4]):
        declared.add_file(path)
    clock.t += 10.0
    declared.refresh()
    assert values(declared, 20) == {i: i for i in range(20) if not 8 <= i < 12}
    assert all(declared.failure(i) is None for i in range(8, 12))  # missing, not failed


def test_a_late_stack_that_fills_a_gap_in_time_is_placed(tmp_path: Path) -> None:
    clock = Clock()
    paths = stacks(tmp_path / "s", [f"data_{k + 1:06d}.h5" for k in range(3)], 4, bad=set())
    lf = live(tmp_path / "s", clock)
    lf.add_file(paths[0])
    lf.add_file(paths[2])  # data_000002 not finished yet (exists: waits as unfinished)
    clock.t += 5.0
    lf.add_file(paths[1])
    assert values(lf, 12) == {i: i for i in range(12)}
