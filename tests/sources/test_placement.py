"""HDF5 stacks are placed only where they certainly belong: an unreadable file whose frame
count is unknown never shifts the files after it (issue: 180 of 200 frames misplaced)."""

from __future__ import annotations

from pathlib import Path

import h5py
import numpy as np

import pytest

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


# ---- found in review: each of these misplaced or lost frames before its fix


def test_a_missing_stack_whose_step_equals_a_stack_length_is_still_a_gap(tmp_path: Path) -> None:
    """Names number files (f_2 after f_1 says so), 2-frame stacks; f_3 never written: f_4
    is not placed at f_3's frames even though its number steps by 2."""
    clock = Clock()
    paths = stacks(tmp_path / "s", [f"f_{k + 1}.h5" for k in range(4)], 2, bad=set())
    paths[2].unlink()
    lf = live(tmp_path / "s", clock)
    for p in (paths[0], paths[1], paths[3]):
        lf.add_file(p)
    clock.t += 20
    lf.refresh()
    assert all(i == v for i, v in values(lf, 8).items())
    assert values(lf, 8) == {0: 0, 1: 1, 2: 2, 3: 3}


def test_names_counting_frames_take_an_unfinished_file_as_the_successor(tmp_path: Path) -> None:
    """data_000020 garbage; data_000040 finishes while data_000030 is still written: the
    garbage file holds 10 frames (not 20), and data_000030 goes to 30."""
    clock = Clock()
    paths = stacks(tmp_path / "s", [f"data_{k * 10:06d}.h5" for k in range(6)], 10, bad={2})
    lf = live(tmp_path / "s", clock)
    for p in paths[:3]:
        lf.add_file(p)
    lf.add_file(paths[4])
    clock.t += 1
    lf.add_file(paths[3])
    lf.add_file(paths[5])
    assert values(lf, 60) == {i: i for i in range(60) if not 20 <= i < 30}


@pytest.mark.parametrize("declared", [None, 10])
def test_a_restart_after_the_session_quarantined_a_stack_places_the_later_ones(
        tmp_path: Path, declared: int | None) -> None:
    """The session moved f_3 away (wrong type); after a restart f_4 and f_5 keep their
    places at once: the quarantine list holds f_3's whole range."""
    clock = Clock()
    paths = stacks(tmp_path / "s", [f"f_{k + 1}.h5" for k in range(5)], 10, bad=set())
    lf = live(tmp_path / "s", clock, frames_per_file=declared)
    for p in paths:
        lf.add_file(p)
    for i in range(20):
        lf.consume(i)
    lf.quarantine_file(paths[2], "frame is (5, 5) int32, the scan's frames are ...")
    again = live(tmp_path / "s", Clock(), frames_per_file=declared)
    again.start_at(20)
    for p in (paths[0], paths[1], paths[3], paths[4]):
        again.add_file(p)
    assert values(again, 50) == {i: i for i in range(30, 50)}
    assert all(again.failure(i) is not None for i in range(20, 30))


def test_a_gap_blocker_stays_missing_after_a_restart(tmp_path: Path) -> None:
    clock = Clock()
    paths = stacks(tmp_path / "s", [f"f_{k + 1}.h5" for k in range(4)], 3, bad=set())
    paths[2].unlink()
    lf = live(tmp_path / "s", clock)
    lf.add_file(paths[0])
    lf.add_file(paths[1])
    lf.add_file(paths[3])
    clock.t += 20
    lf.refresh()  # f_3's count is unknown: every frame from 6 on fails
    again = live(tmp_path / "s", clock, frames_per_file=3)
    for p in (paths[0], paths[1], paths[3]):
        again.add_file(p)
    assert all(again.failure(i) is not None for i in range(6, 12))


def test_a_readable_hdf5_file_without_the_frame_dataset_is_not_a_frame_file(
        tmp_path: Path) -> None:
    """A dark or mask next to the frames (dark.h5 sorts before data_...) is ignored, not
    taken for an unreadable frame file that would hold every later frame back."""
    clock = Clock()
    paths = stacks(tmp_path / "s", [f"data_{k + 1:06d}.h5" for k in range(3)], 4, bad=set())
    with h5py.File(tmp_path / "s" / "dark.h5", "w") as f:
        f["/data"] = np.zeros((4, 4))
    lf = live(tmp_path / "s", clock)
    lf.add_file(tmp_path / "s" / "dark.h5")
    for p in paths:
        lf.add_file(p)
    assert values(lf, 12) == {i: i for i in range(12)}
    assert any("not a frame file" in why for _, why in lf.ignored)


def test_names_that_count_frames_need_no_directory_listing(tmp_path: Path, monkeypatch) -> None:
    """Once names are known to number frames, a file whose number is the next frame is
    placed at once: no listing of the scan directory per file (thousands of files)."""
    import flyprep.sources.live as live_module

    clock = Clock()
    paths = stacks(tmp_path / "s", [f"data_{k * 5:06d}.h5" for k in range(6)], 5, bad=set())
    lf = live(tmp_path / "s", clock)
    for p in paths[:3]:
        lf.add_file(p)
    listings = []
    real = live_module.os.listdir
    monkeypatch.setattr(live_module.os, "listdir", lambda d: listings.append(d) or real(d))
    for p in paths[3:]:
        lf.add_file(p)
    assert values(lf, 30) == {i: i for i in range(30)}
    assert listings == []
