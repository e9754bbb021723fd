"""LiveFrames: finished frame files of a running scan placed at their global index, read
with retries, quarantined when unreadable, and placed the same way after a restart."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import h5py
import numpy as np
import pytest

import flyprep.sources.live as live_module
from flyprep.errors import InputError
from flyprep.sources.live import LiveFrames
from flyprep.sources.quarantine import QUARANTINE_LIST

DATA = "/entry/data/data"
SHAPE = (4, 5)


class Clock:
    """A monotonic clock the test moves by hand."""

    def __init__(self) -> None:
        self.t = 100.0

    def __call__(self) -> float:
        return self.t


class Sleeps:
    """Records the delays asked for; runs an optional action instead of sleeping."""

    def __init__(self, action: Any = None) -> None:
        self.calls: list[float] = []
        self.action = action

    def __call__(self, seconds: float) -> None:
        self.calls.append(seconds)
        if self.action is not None:
            self.action(len(self.calls))


def make(scan: Path, **kw: Any) -> LiveFrames:
    kw.setdefault("positions_file", "positions.txt")
    kw.setdefault("quarantine_dir", "q")
    kw.setdefault("sleep", Sleeps())
    kw.setdefault("retry_delay_s", 0.25)
    return LiveFrames(scan, **kw)


def frame(value: float) -> np.ndarray:
    return np.full(SHAPE, value, np.float32)


def npy(path: Path, value: float) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    np.save(path, frame(value))
    return path


def h5(path: Path, first: float, n: int | None = None, *,
       positions: Any = None, pos_dataset: str = "/entry/pos") -> Path:
    """An HDF5 frame file: one 2-D frame (n None) or a stack of n frames valued first + k."""
    data = frame(first) if n is None else np.stack([frame(first + k) for k in range(n)])
    with h5py.File(path, "w") as f:
        f[DATA] = data
        if positions is not None:
            f[pos_dataset] = np.asarray(positions, np.float64)
    return path


def append(path: Path, text: str) -> None:
    with open(path, "a") as f:
        f.write(text)


def placed(lf: LiveFrames) -> dict[int, tuple[str, int | None]]:
    """index -> (file name, slot) of every placed frame."""
    return {i: (f.path.name, f.slot) for i, f in sorted(lf._frames.items())}


def entries(scan: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in (scan / "q" / QUARANTINE_LIST).read_text().splitlines()]


# ---- PtyPy's layout: the positions file names each frame's file


def test_ptypy_files_finished_before_their_line_wait(tmp_path: Path) -> None:
    pos = tmp_path / "positions.txt"
    pos.write_text("ccd/f0.npy 1 2\n")
    lf = make(tmp_path)
    f0, f1, f2 = (npy(tmp_path / "ccd" / f"f{k}.npy", k) for k in range(3))
    lf.add_file(f0)
    assert lf.layout == "ptypy"
    lf.add_file(f2)
    lf.add_file(f1)
    assert placed(lf) == {0: ("f0.npy", None)}
    assert lf.pending == 3  # one placed, two waiting for their lines
    append(pos, "ccd/f1.npy 3 4\nccd/f2")  # line 3 is half written
    lf.add_file(pos)  # the positions file is reported like any other file
    assert placed(lf) == {0: ("f0.npy", None), 1: ("f1.npy", None)}
    append(pos, ".npy 5 6\n")
    assert lf.refresh() == 1
    assert placed(lf) == {0: ("f0.npy", None), 1: ("f1.npy", None), 2: ("f2.npy", None)}
    assert lf.pending == 3
    np.testing.assert_array_equal(lf.position(2), [5, 6])
    assert lf.expected_path(1) == f1
    assert lf.expected_path(3) is None
    np.testing.assert_array_equal(lf.read(2, stop=3), frame(2))
    assert lf.files_seen == 3


def test_ptypy_files_before_the_positions_file_exists(tmp_path: Path) -> None:
    """Layout 'auto' is decided by the first positions line; files wait until then."""
    lf = make(tmp_path)
    f1 = npy(tmp_path / "f1.npy", 1)
    f0 = npy(tmp_path / "f0.npy", 0)
    lf.add_file(f1)
    lf.add_file(f0)
    assert lf.layout is None
    assert lf.get(0) is None and lf.pending == 2
    (tmp_path / "positions.txt").write_text("f0.npy 0 0\nf1.npy 1e-6 2e-6\n")
    lf.refresh()
    assert lf.layout == "ptypy"
    assert placed(lf) == {0: ("f0.npy", None), 1: ("f1.npy", None)}
    assert lf.pending == 2


def test_ptypy_duplicate_name_first_line_counts(tmp_path: Path) -> None:
    (tmp_path / "positions.txt").write_text("a.npy 0 0\nb.npy 1 1\na.npy 2 2\nc.npy 3 3\n")
    lf = make(tmp_path)
    for name in ("a", "b", "c"):
        lf.add_file(npy(tmp_path / f"{name}.npy", ord(name)))
    assert placed(lf) == {0: ("a.npy", None), 1: ("b.npy", None), 3: ("c.npy", None)}
    assert lf.expected_path(2) == tmp_path / "a.npy"  # what the line says


def test_ptypy_file_reported_twice_is_ignored(tmp_path: Path) -> None:
    (tmp_path / "positions.txt").write_text("a.npy 0 0\n")
    lf = make(tmp_path)
    a = npy(tmp_path / "a.npy", 1)
    lf.add_file(a)
    lf.add_file(a)
    assert placed(lf) == {0: ("a.npy", None)}
    assert lf.ignored == [(str(a), "frame 0 is placed already")]


def test_ptypy_needs_a_positions_file(tmp_path: Path) -> None:
    with pytest.raises(InputError, match="PtyPy layout needs a positions file"):
        make(tmp_path, layout="ptypy", positions_file=None)
    with pytest.raises(InputError, match="no per-frame positions"):
        make(tmp_path, positions_file=None)


def test_ptypy_floor_and_start_at(tmp_path: Path) -> None:
    (tmp_path / "positions.txt").write_text("".join(f"f{k}.npy {k} 0\n" for k in range(5)))
    lf = make(tmp_path)
    files = [npy(tmp_path / f"f{k}.npy", k) for k in range(5)]
    lf.add_file(files[2])
    lf.add_file(files[3])
    lf.start_at(3)  # a resumed scan has frames 0..2 already
    assert placed(lf) == {3: ("f3.npy", None)}
    lf.add_file(files[0])
    assert lf.get(0) is None
    lf.consume(3)
    assert lf.floor == 4 and lf.pending == 0
    lf.add_file(files[3])  # reported again: handed on before, never placed again
    lf.add_file(files[4])
    assert placed(lf) == {4: ("f4.npy", None)}
    assert lf.ignored == []


# ---- HDF5 frame files


def test_hdf5_stacks_of_different_lengths(tmp_path: Path) -> None:
    (tmp_path / "positions.txt").write_text("".join(f"{k} {-k}\n" for k in range(8)))
    lf = make(tmp_path, units=1e-6)
    lf.add_file(h5(tmp_path / "data_000001.h5", 0, 3))
    lf.add_file(h5(tmp_path / "data_000002.h5", 3))  # a single 2-D frame
    lf.add_file(h5(tmp_path / "data_000003.h5", 4, 4))
    assert lf.layout == "hdf5"
    assert placed(lf) == {
        0: ("data_000001.h5", 0), 1: ("data_000001.h5", 1), 2: ("data_000001.h5", 2),
        3: ("data_000002.h5", None),
        4: ("data_000003.h5", 0), 5: ("data_000003.h5", 1), 6: ("data_000003.h5", 2),
        7: ("data_000003.h5", 3)}
    for i in range(8):
        np.testing.assert_array_equal(lf.read(i, stop=8), frame(i))
    np.testing.assert_allclose(lf.position(6), [6e-6, -6e-6])
    assert lf.position(8) is None


def test_hdf5_natural_name_order(tmp_path: Path) -> None:
    """frame_9 comes before frame_10 (digit runs compare as numbers)."""
    (tmp_path / "positions.txt").write_text("0 0\n")
    lf = make(tmp_path)
    lf.add_file(h5(tmp_path / "frame_9.h5", 9))
    lf.add_file(h5(tmp_path / "frame_10.h5", 10))
    assert placed(lf) == {0: ("frame_9.h5", None), 1: ("frame_10.h5", None)}


def test_hdf5_files_before_the_first_positions_line(tmp_path: Path) -> None:
    """Layout auto: 'y x' lines make it HDF5; early files are placed in name order."""
    pos = tmp_path / "positions.txt"
    lf = make(tmp_path)
    lf.add_file(h5(tmp_path / "d_2.h5", 2))
    lf.add_file(h5(tmp_path / "d_1.h5", 0, 2))
    assert lf.layout is None and lf.pending == 2
    pos.write_text("0 0\n")
    lf.add_file(pos)
    assert lf.layout == "hdf5"
    assert placed(lf) == {0: ("d_1.h5", 0), 1: ("d_1.h5", 1), 2: ("d_2.h5", None)}


def test_hdf5_finished_out_of_order_waits_for_the_unfinished_earlier_file(tmp_path: Path
                                                                          ) -> None:
    (tmp_path / "positions.txt").write_text("0 0\n")
    lf = make(tmp_path)
    f1 = h5(tmp_path / "data_000001.h5", 0, 2)  # exists, not finished yet
    f2 = h5(tmp_path / "data_000002.h5", 2, 3)
    lf.add_file(f2)
    assert placed(lf) == {}
    assert lf.pending == 1
    lf.add_file(f1)
    assert placed(lf) == {0: ("data_000001.h5", 0), 1: ("data_000001.h5", 1),
                          2: ("data_000002.h5", 0), 3: ("data_000002.h5", 1),
                          4: ("data_000002.h5", 2)}
    assert lf.pending == 5
    for i in range(5):
        np.testing.assert_array_equal(lf.read(i, stop=5), frame(i))


def test_hdf5_later_file_waits_for_unfinished_one_after_the_last_placed(tmp_path: Path
                                                                         ) -> None:
    (tmp_path / "positions.txt").write_text("0 0\n")
    lf = make(tmp_path)
    lf.add_file(h5(tmp_path / "data_000001.h5", 0))
    f2 = h5(tmp_path / "data_000002.h5", 1, 2)  # being written
    lf.add_file(h5(tmp_path / "data_000003.h5", 3))
    lf.add_file(h5(tmp_path / "data_000004.h5", 4))
    assert placed(lf) == {0: ("data_000001.h5", None)}
    lf.add_file(f2)
    assert placed(lf) == {0: ("data_000001.h5", None), 1: ("data_000002.h5", 0),
                          2: ("data_000002.h5", 1), 3: ("data_000003.h5", None),
                          4: ("data_000004.h5", None)}


def test_hdf5_successor_name_does_not_wait(tmp_path: Path) -> None:
    """The file named right after the last placed one is placed without waiting, even if
    an oddly named frame file in between is still open."""
    (tmp_path / "positions.txt").write_text("0 0\n")
    lf = make(tmp_path)
    lf.add_file(h5(tmp_path / "data_000001.h5", 0))
    h5(tmp_path / "data_000001b.h5", 99)  # sorts between 1 and 2, never finished
    lf.add_file(h5(tmp_path / "data_000002.h5", 1))
    assert placed(lf) == {0: ("data_000001.h5", None), 1: ("data_000002.h5", None)}


def test_hdf5_successor_is_placed_without_listing_the_directory(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    (tmp_path / "positions.txt").write_text("0 0\n")
    lf = make(tmp_path)
    lf.add_file(h5(tmp_path / "data_000009.h5", 0))
    listed: list[str] = []
    real = live_module.os.listdir
    monkeypatch.setattr(live_module.os, "listdir", lambda p: listed.append(p) or real(p))
    lf.add_file(h5(tmp_path / "data_000010.h5", 1))
    lf.add_file(h5(tmp_path / "data_000011.h5", 2))
    assert listed == []
    assert placed(lf) == {0: ("data_000009.h5", None), 1: ("data_000010.h5", None),
                          2: ("data_000011.h5", None)}


def test_hdf5_gap_in_names_with_no_predecessor_on_disk(tmp_path: Path) -> None:
    (tmp_path / "positions.txt").write_text("0 0\n")
    lf = make(tmp_path)
    lf.add_file(h5(tmp_path / "data_000001.h5", 0, 2))
    lf.add_file(h5(tmp_path / "data_000003.h5", 2))  # data_000002.h5 does not exist
    assert placed(lf) == {0: ("data_000001.h5", 0), 1: ("data_000001.h5", 1),
                          2: ("data_000003.h5", None)}


def test_hdf5_first_file_not_first_in_name_order(tmp_path: Path) -> None:
    (tmp_path / "positions.txt").write_text("0 0\n")
    lf = make(tmp_path)
    lf.add_file(h5(tmp_path / "data_000005.h5", 0))
    assert placed(lf) == {0: ("data_000005.h5", None)}


def test_hdf5_file_finished_after_a_later_one_was_placed_is_ignored(tmp_path: Path) -> None:
    (tmp_path / "positions.txt").write_text("0 0\n")
    lf = make(tmp_path)
    lf.add_file(h5(tmp_path / "data_000002.h5", 0))  # data_000001.h5 not on disk yet
    late = h5(tmp_path / "data_000001.h5", 1)
    lf.add_file(late)
    lf.add_file(tmp_path / "data_000002.h5")  # reported twice
    assert placed(lf) == {0: ("data_000002.h5", None)}
    assert [p for p, _ in lf.ignored] == [str(late), str(tmp_path / "data_000002.h5")]
    assert "name order" in lf.ignored[0][1]


def test_hdf5_ignored_and_excluded_names(tmp_path: Path) -> None:
    (tmp_path / "positions.txt").write_text("0 0\n")
    lf = make(tmp_path)
    lf.add_file(h5(tmp_path / "data_a.h5", 0))
    # unfinished files that are no frame files do not hold data_c.h5 back (names without
    # numbers: the directory is listed for earlier frame files)
    h5(tmp_path / ".data_b.h5", 50)
    h5(tmp_path / "data_b_master.h5", 51)
    for name in (".data_b.h5", "data_b_master.h5", "data_b.h5.tmp", "notes.txt"):
        path = tmp_path / name
        if not path.exists():
            path.write_text("x")
        lf.add_file(path)
    lf.add_file(h5(tmp_path / "data_c.h5", 1))
    assert placed(lf) == {0: ("data_a.h5", None), 1: ("data_c.h5", None)}
    assert lf.pending == 2
    assert not (tmp_path / "q").exists()


def test_hdf5_frame_patterns(tmp_path: Path) -> None:
    (tmp_path / "positions.txt").write_text("0 0\n")
    lf = make(tmp_path, frame_patterns=("*.nxs",))
    lf.add_file(h5(tmp_path / "scan_1.h5", 9))
    lf.add_file(h5(tmp_path / "scan_1.nxs", 0))
    assert placed(lf) == {0: ("scan_1.nxs", None)}


def test_hdf5_positions_file_is_no_frame_file(tmp_path: Path) -> None:
    """An HDF5 positions file that matches the frame pattern and sorts before the frame
    files does not hold them back, and is never placed as frames."""
    pos = tmp_path / "positions.h5"
    with h5py.File(pos, "w") as f:
        f["xy"] = np.array([[1.0, 2.0], [3.0, 4.0]])
    lf = make(tmp_path, positions_file="positions.h5", positions_dataset="xy")
    lf.add_file(pos)
    assert lf.layout == "hdf5"
    lf.add_file(h5(tmp_path / "scan_000001.h5", 0))
    lf.add_file(h5(tmp_path / "scan_000002.h5", 1))
    assert placed(lf) == {0: ("scan_000001.h5", None), 1: ("scan_000002.h5", None)}
    np.testing.assert_array_equal(lf.position(1), [3, 4])


def test_hdf5_positions_from_each_frame_file(tmp_path: Path) -> None:
    lf = make(tmp_path, positions_file=None, positions_dataset="/entry/pos", units=1e-6)
    assert lf.layout == "hdf5"
    lf.add_file(h5(tmp_path / "d_1.h5", 0, 2, positions=[[1, 2], [3, 4]]))
    lf.add_file(h5(tmp_path / "d_2.h5", 2, positions=[5, 6]))  # one frame: shape (2,)
    assert placed(lf) == {0: ("d_1.h5", 0), 1: ("d_1.h5", 1), 2: ("d_2.h5", None)}
    np.testing.assert_allclose(lf.position(1), [3e-6, 4e-6])
    np.testing.assert_allclose(lf.position(2), [5e-6, 6e-6])
    assert lf.refresh() == 0
    assert lf.position(3) is None


def test_hdf5_frame_file_with_wrong_positions_is_quarantined(tmp_path: Path) -> None:
    lf = make(tmp_path, positions_file=None, positions_dataset="/entry/pos", frames_per_file=2)
    lf.add_file(h5(tmp_path / "d_1.h5", 0, 2, positions=[[1, 2], [3, 4]]))
    lf.add_file(h5(tmp_path / "d_2.h5", 2, 2, positions=[[5, 6], [np.nan, 8]]))
    lf.add_file(h5(tmp_path / "d_3.h5", 4, positions=[9, 9]))
    assert placed(lf) == {0: ("d_1.h5", 0), 1: ("d_1.h5", 1), 4: ("d_3.h5", None)}
    assert sorted(lf.failed) == [2, 3]
    assert "positions dataset" in lf.failed[2].reason
    assert lf.failed[2].path == str(tmp_path / "d_2.h5")


def test_hdf5_unreadable_file_quarantined_with_the_declared_length(tmp_path: Path) -> None:
    (tmp_path / "positions.txt").write_text("0 0\n")
    sleeps = Sleeps()
    lf = make(tmp_path, sleep=sleeps, read_retries=2, frames_per_file=3)
    lf.add_file(h5(tmp_path / "data_000001.h5", 0, 3))
    bad = tmp_path / "data_000002.h5"
    bad.write_bytes(b"this is no HDF5 file" * 10)
    lf.add_file(bad)
    assert sleeps.calls == [0.25, 0.25]  # tried 1 + read_retries times
    lf.add_file(h5(tmp_path / "data_000003.h5", 6, 2))
    assert sorted(lf.failed) == [3, 4, 5]  # 3 frames per file, as declared
    assert "unreadable" in lf.failed[3].reason
    assert placed(lf) == {0: ("data_000001.h5", 0), 1: ("data_000001.h5", 1),
                          2: ("data_000001.h5", 2), 6: ("data_000003.h5", 0),
                          7: ("data_000003.h5", 1)}
    np.testing.assert_array_equal(lf.read(6, stop=8), frame(6))
    assert not bad.exists()
    moved = tmp_path / "q" / "data_000002.h5"
    assert moved.read_bytes() == b"this is no HDF5 file" * 10  # moved, never deleted
    moved_entry, range_entry = entries(tmp_path)
    assert moved_entry["file"] == range_entry["file"] == "data_000002.h5"
    assert moved_entry["moved_to"] == "data_000002.h5"
    assert (moved_entry["indices"], moved_entry["first"]) == ([], 3)
    assert range_entry["indices"] == [3, 4, 5]


def test_hdf5_file_readable_at_the_second_probe_is_placed(tmp_path: Path) -> None:
    (tmp_path / "positions.txt").write_text("0 0\n")
    path = tmp_path / "d_1.h5"
    path.write_bytes(b"\x89HDF still being flushed")
    sleeps = Sleeps(lambda n: h5(path, 0, 2))
    lf = make(tmp_path, sleep=sleeps)
    lf.add_file(path)
    assert sleeps.calls == [0.25]
    assert placed(lf) == {0: ("d_1.h5", 0), 1: ("d_1.h5", 1)}
    assert lf.failed == {}
    assert not (tmp_path / "q").exists()


def test_hdf5_restart_after_quarantine_keeps_indices(tmp_path: Path) -> None:
    (tmp_path / "positions.txt").write_text("0 0\n")
    lf = make(tmp_path, frames_per_file=2)
    f1 = h5(tmp_path / "data_000001.h5", 0, 2)
    lf.add_file(f1)
    bad = tmp_path / "data_000002.h5"
    bad.write_bytes(b"garbage!" * 4)
    lf.add_file(bad)
    f3 = h5(tmp_path / "data_000003.h5", 4, 3)
    lf.add_file(f3)
    assert sorted(lf.failed) == [2, 3]
    first = placed(lf)

    # a restart: a new LiveFrames sees the same files again (the bad one is gone)
    again = make(tmp_path)
    assert sorted(again.failed) == [2, 3]
    assert again.failed[2].reason.startswith("quarantined earlier: unreadable")
    again.add_file(f1)
    again.add_file(f3)
    assert placed(again) == first == {
        0: ("data_000001.h5", 0), 1: ("data_000001.h5", 1), 4: ("data_000003.h5", 0),
        5: ("data_000003.h5", 1), 6: ("data_000003.h5", 2)}
    # resumed past the first file; the watcher reports the files in any order
    third = make(tmp_path)
    third.start_at(2)
    third.add_file(f3)
    assert placed(third) == {}  # data_000001.h5 is not reported yet
    third.add_file(f1)
    assert placed(third) == {4: ("data_000003.h5", 0), 5: ("data_000003.h5", 1),
                             6: ("data_000003.h5", 2)}


def test_hdf5_read_failure_quarantines_rest_of_stack_and_restart_keeps_indices(
        tmp_path: Path) -> None:
    """As the session does it: frames 0, 1 read, frame 2 unreadable -> quarantine."""
    (tmp_path / "positions.txt").write_text("0 0\n")
    lf = make(tmp_path, read_retries=0)
    f1 = h5(tmp_path / "d_1.h5", 0, 4)
    lf.add_file(f1)
    for i in (0, 1):
        lf.read(i, stop=2)
        lf.consume(i)
    f1.write_bytes(b"damaged")
    with pytest.raises(InputError):
        lf.read(2, stop=4)
    target = lf.quarantine_file(f1, "unreadable frames")
    assert target == tmp_path / "q" / "d_1.h5"
    assert sorted(lf.failed) == [2, 3]
    assert entries(tmp_path)[0]["indices"] == [2, 3]
    again = make(tmp_path)
    again.add_file(h5(tmp_path / "d_2.h5", 4))
    assert placed(again) == {4: ("d_2.h5", None)}
    # the file is gone into the quarantine: none of its frames can be read any more
    assert sorted(again.failed) == [0, 1, 2, 3]


def test_ptypy_restart_after_quarantine(tmp_path: Path) -> None:
    (tmp_path / "positions.txt").write_text("a.npy 0 0\nb.npy 1 1\nc.npy 2 2\n")
    lf = make(tmp_path)
    b = npy(tmp_path / "b.npy", 1)
    lf.add_file(b)
    assert lf.quarantine_file(b, "broken") == tmp_path / "q" / "b.npy"
    assert lf.failed == {1: (str(b), f"broken; moved to {tmp_path / 'q' / 'b.npy'}")}
    again = make(tmp_path)
    assert again.failed == {1: (str(b), "quarantined earlier: broken")}
    a = npy(tmp_path / "a.npy", 0)
    b_again = npy(tmp_path / "b.npy", 1)  # written again: its frame stays failed
    c = npy(tmp_path / "c.npy", 2)
    for path in (a, b_again, c):
        again.add_file(path)
    assert placed(again) == {0: ("a.npy", None), 2: ("c.npy", None)}
    assert again.ignored == [(str(b_again), "frame 1 is placed already")]


def test_quarantine_list_only_leaves_the_file(tmp_path: Path) -> None:
    (tmp_path / "positions.txt").write_text("a.npy 0 0\nb.npy 1 1\n")
    lf = make(tmp_path)
    a = npy(tmp_path / "a.npy", 0)
    lf.add_file(a)
    assert lf.quarantine_file(a, "frame 0: not finished", move=False) is None
    assert a.exists()
    assert lf.failed == {0: (str(a), "frame 0: not finished")}
    assert lf.get(0) is None
    [entry] = entries(tmp_path)
    assert entry["moved_to"] is None and entry["indices"] == [0] and entry["file"] == "a.npy"
    # After a restart the file, finished meanwhile and still in place, is read after all.
    again = make(tmp_path)
    assert again.failed == {}
    again.add_file(a)
    assert placed(again) == {0: ("a.npy", None)}


def test_quarantine_never_overwrites(tmp_path: Path) -> None:
    (tmp_path / "positions.txt").write_text("sub/a.npy 0 0\n")
    lf = make(tmp_path)
    targets = []
    for k in range(3):
        path = npy(tmp_path / "sub" / "a.npy", k)
        targets.append(lf.quarantine_file(path, f"try {k}"))
    q = tmp_path / "q"
    assert [t.name for t in targets] == ["sub__a.npy", "sub__a.npy.1", "sub__a.npy.2"]
    for k, t in enumerate(targets):
        assert t.parent == q
        np.testing.assert_array_equal(np.load(t), frame(k))
    assert [e["reason"] for e in entries(tmp_path)] == ["try 0", "try 1", "try 2"]


def test_quarantine_list_with_a_broken_line_is_read(tmp_path: Path) -> None:
    q = tmp_path / "q"
    q.mkdir()
    (q / QUARANTINE_LIST).write_text(
        '{"file": "x.npy", "moved_to": "x.npy", "indices": [4], "reason": "r"}\n'
        "not json\n"
        '{"file": "y.npy", "moved_to": null, "indices": [7, 8], "reason": "s", '
        '"reserved": true}\n'
        '{"file": "z.npy", "moved_to": null, "indices": [9], "reason": "unfinished"}\n')
    lf = make(tmp_path)
    assert sorted(lf.failed) == [4, 7, 8]  # z.npy was only listed: read if finished now


# ---- reading


def test_read_retries_until_the_file_is_readable(tmp_path: Path) -> None:
    (tmp_path / "positions.txt").write_text("a.npy 0 0\n")
    a = npy(tmp_path / "a.npy", 7)
    lf = make(tmp_path)
    lf.add_file(a)
    a.write_bytes(b"\x93NUMPY truncated")  # rewritten by a slow writer
    sleeps = Sleeps(lambda n: npy(a, 7) if n == 1 else None)
    lf.sleep = sleeps
    np.testing.assert_array_equal(lf.read(0, stop=1), frame(7))
    assert sleeps.calls == [0.25]


def test_read_gives_up_after_the_retries(tmp_path: Path) -> None:
    (tmp_path / "positions.txt").write_text("a.npy 0 0\n")
    a = npy(tmp_path / "a.npy", 7)
    sleeps = Sleeps()
    lf = make(tmp_path, sleep=sleeps, read_retries=3, retry_delay_s=2.0)
    lf.add_file(a)
    a.write_bytes(b"garbage")
    with pytest.raises(InputError) as info:
        lf.read(0, stop=1)
    assert sleeps.calls == [2.0, 2.0, 2.0]
    assert str(a) in str(info.value)


def test_stack_read_in_one_slice(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    (tmp_path / "positions.txt").write_text("0 0\n")
    lf = make(tmp_path)
    lf.add_file(h5(tmp_path / "d_1.h5", 0, 2))
    lf.add_file(h5(tmp_path / "d_2.h5", 2, 6))
    calls: list[tuple[str, int, int]] = []
    real = live_module.read_stack_rows

    def counting(path: Path, dataset: str, lo: int, hi: int, rows: Any) -> Any:
        calls.append((Path(path).name, lo, hi))
        return real(path, dataset, lo, hi, rows)

    monkeypatch.setattr(live_module, "read_stack_rows", counting)
    # chunk [0, 4): d_1 frames 0..1 in one slice, then d_2 frames 0..1 in one slice
    for i in range(4):
        np.testing.assert_array_equal(lf.read(i, stop=4), frame(i))
        lf.consume(i)
    assert calls == [("d_1.h5", 0, 2), ("d_2.h5", 0, 2)]
    # chunk [4, 8): the rest of d_2 in one slice
    for i in range(4, 8):
        np.testing.assert_array_equal(lf.read(i, stop=8), frame(i))
    assert calls[2:] == [("d_2.h5", 2, 6)]


def test_stack_slice_stops_at_a_frame_not_placed(tmp_path: Path,
                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    (tmp_path / "positions.txt").write_text("0 0\n")
    lf = make(tmp_path)
    lf.add_file(h5(tmp_path / "d_1.h5", 0, 5))
    lf.fail(2, "wrong frame")
    calls: list[tuple[int, int]] = []
    real = live_module.read_stack_rows
    monkeypatch.setattr(live_module, "read_stack_rows", lambda p, d, lo, hi, rows: calls.append(
        (lo, hi)) or real(p, d, lo, hi, rows))
    for i in (0, 1, 3, 4):
        np.testing.assert_array_equal(lf.read(i, stop=5), frame(i))
    assert calls == [(0, 2), (3, 5)]


def test_once_rows_are_set_only_they_are_read_of_stacks_and_single_frames(
        tmp_path: Path) -> None:
    from flyprep.sources.rows import FrameRows

    (tmp_path / "positions.txt").write_text("0 0\n")
    lf = make(tmp_path)
    lf.add_file(h5(tmp_path / "d_1.h5", 0, 3))
    lf.add_file(h5(tmp_path / "d_2.h5", 3))  # one 2-D frame
    lf.add_file(h5(tmp_path / "d_3.h5", 4, 2))
    assert isinstance(lf.read(0, stop=6), np.ndarray)  # whole, before rows are set
    lf.rows = (1, SHAPE[0] - 1)
    for i in range(1, 6):
        got = lf.read(i, stop=6)
        if i < 3:  # the rest of d_1's slice, read whole before
            np.testing.assert_array_equal(got, frame(i))
            continue
        assert isinstance(got, FrameRows) and got.shape == SHAPE
        np.testing.assert_array_equal(got[1:SHAPE[0] - 1, :], frame(i)[1:-1])


def test_stack_shorter_than_placed_is_an_input_error(tmp_path: Path) -> None:
    (tmp_path / "positions.txt").write_text("0 0\n")
    lf = make(tmp_path, read_retries=1)
    path = h5(tmp_path / "d_1.h5", 0, 3)
    lf.add_file(path)
    h5(path, 0, 1)  # rewritten shorter
    np.testing.assert_array_equal(lf.read(0, stop=1), frame(0))
    with pytest.raises(InputError, match="frame not in the file"):
        lf.read(1, stop=3)


# ---- timing and what is wanted


def test_overdue_with_injected_clock(tmp_path: Path) -> None:
    (tmp_path / "positions.txt").write_text("".join(f"f{k}.npy {k} 0\n" for k in range(4)))
    clock = Clock()
    lf = make(tmp_path, clock=clock)
    lf.add_file(npy(tmp_path / "f0.npy", 0))
    assert not lf.overdue(1, 0.0)  # nothing after frame 1 yet
    clock.t = 105.0
    lf.add_file(npy(tmp_path / "f2.npy", 2))  # frame 1 has not come
    assert lf.get(1) is None
    clock.t = 114.9
    assert not lf.overdue(1, 10.0)
    clock.t = 115.0
    assert lf.overdue(1, 10.0)
    assert lf.overdue(0, 10.0)
    assert not lf.overdue(2, 10.0)  # nothing after frame 2
    lf.add_file(npy(tmp_path / "f3.npy", 3), arrived=50.0)  # an explicit arrival time
    assert lf.overdue(2, 65.0)
    assert not lf.overdue(2, 65.1)
    assert lf.get(3).arrived == 50.0 and lf.get(2).arrived == 105.0


def test_overdue_ignores_consumed_frames(tmp_path: Path) -> None:
    (tmp_path / "positions.txt").write_text("0 0\n")
    clock = Clock()
    lf = make(tmp_path, clock=clock)
    lf.add_file(h5(tmp_path / "d_1.h5", 0, 2))
    clock.t += 100
    assert lf.overdue(0, 10.0)
    lf.consume(0)
    lf.consume(1)
    assert not lf.overdue(0, 10.0)


def test_hdf5_floor_and_start_at(tmp_path: Path) -> None:
    (tmp_path / "positions.txt").write_text("0 0\n")
    lf = make(tmp_path)
    lf.start_at(2)
    lf.add_file(h5(tmp_path / "d_1.h5", 0, 3))
    lf.add_file(h5(tmp_path / "d_2.h5", 3))
    assert placed(lf) == {2: ("d_1.h5", 2), 3: ("d_2.h5", None)}
    np.testing.assert_array_equal(lf.read(2, stop=4), frame(2))
    lf.consume(2)
    lf.start_at(1)  # never lowers the floor
    assert lf.floor == 3
    assert placed(lf) == {3: ("d_2.h5", None)}


def test_unreadable_file_below_the_floor(tmp_path: Path) -> None:
    (tmp_path / "positions.txt").write_text("0 0\n")
    lf = make(tmp_path, frames_per_file=2)
    lf.start_at(3)
    lf.add_file(h5(tmp_path / "d_1.h5", 0, 2))
    bad = tmp_path / "d_2.h5"
    bad.write_bytes(b"garbage!" * 4)
    lf.add_file(bad)  # 2 frames per file: indices 2 (below the floor) and 3
    lf.add_file(h5(tmp_path / "d_3.h5", 4))
    assert placed(lf) == {4: ("d_3.h5", None)}
    assert sorted(lf.failed) == [3]  # frame 2 was handed on before
    assert entries(tmp_path)[1]["indices"] == [2, 3]  # the whole range is listed


def test_restart_after_unreadable_file_below_the_floor(tmp_path: Path) -> None:
    """A resumed scan (floor 4) finds an earlier file unreadable now: the quarantine list
    still tells a later restart how many frames it held, so later files keep their index."""
    (tmp_path / "positions.txt").write_text("0 0\n")
    lf = make(tmp_path, frames_per_file=2)
    lf.start_at(4)
    f1 = h5(tmp_path / "d_1.h5", 0, 2)
    lf.add_file(f1)
    bad = tmp_path / "d_2.h5"
    bad.write_bytes(b"garbage!" * 4)
    lf.add_file(bad)  # 2 frames per file: 2 and 3, both handed on before
    f3 = h5(tmp_path / "d_3.h5", 4, 2)
    lf.add_file(f3)
    assert placed(lf) == {4: ("d_3.h5", 0), 5: ("d_3.h5", 1)}
    again = make(tmp_path)
    again.start_at(4)
    again.add_file(f1)
    again.add_file(f3)
    assert placed(again) == {4: ("d_3.h5", 0), 5: ("d_3.h5", 1)}


def _three_stacks(tmp_path: Path) -> Path:
    scan = tmp_path / "scan"
    scan.mkdir()
    for k in (1, 2, 3):
        with h5py.File(scan / f"d_{k:02d}.h5", "w") as f:
            f["/entry/data/data"] = np.full((4, 8, 8), k, np.uint16)
    (scan / "positions.txt").write_text("".join(f"{i} {i}\n" for i in range(12)))
    return scan


def test_an_earlier_file_that_never_finishes_is_given_up_after_the_hold_timeout(tmp_path):
    """File 2 exists but is never reported finished; file 3 waits hold_timeout_s, then file
    2's frames fail (4, as declared per file), file 3 keeps its place after them."""
    scan = _three_stacks(tmp_path)
    now = [100.0]
    live = LiveFrames(scan, layout="hdf5", positions_file="positions.txt", frames_per_file=4,
                      quarantine_dir="q", hold_timeout_s=5.0, clock=lambda: now[0])
    live.refresh()
    live.add_file(scan / "d_01.h5")
    live.add_file(scan / "d_03.h5")  # d_02 exists, unfinished: d_03 waits
    assert [i for i in range(12) if live.get(i)] == [0, 1, 2, 3]
    now[0] += 4.9
    live.refresh()
    assert live.get(8) is None
    now[0] += 0.2
    live.refresh()
    assert sorted(live.failed) == [4, 5, 6, 7]
    assert "not finished within 5 s" in live.failed[4].reason
    assert [live.get(i).path.name for i in range(8, 12)] == ["d_03.h5"] * 4
    assert int(live.read(8, stop=12)[0, 0]) == 3
    listed = (scan / "q" / "quarantine.jsonl").read_text()
    assert "d_02.h5" in listed and (scan / "d_02.h5").exists()  # listed, not moved


def test_an_unfinished_file_of_unknown_length_fails_every_later_frame_instead_of_guessing(
        tmp_path):
    """The same without a declared length (names number files, not frames): nothing tells
    how many frames d_02 holds, so d_03's cannot be placed for certain: every frame from
    d_02's first on fails, none is placed at a guessed index."""
    scan = _three_stacks(tmp_path)
    now = [100.0]
    live = LiveFrames(scan, layout="hdf5", positions_file="positions.txt",
                      quarantine_dir="q", hold_timeout_s=5.0, clock=lambda: now[0])
    live.refresh()
    live.add_file(scan / "d_01.h5")
    live.add_file(scan / "d_03.h5")
    now[0] += 5.1
    live.refresh()
    assert [i for i in range(12) if live.get(i)] == [0, 1, 2, 3]
    assert all(live.failure(i) is not None for i in range(4, 12))
    assert live.failure(4).path == str(scan / "d_02.h5")
    assert "frame count is unknown" in live.failure(11).reason
    assert any("d_03.h5" in p for p, _ in live.ignored)
    # a restart keeps it so: d_01 placed, nothing after it
    again = LiveFrames(scan, layout="hdf5", positions_file="positions.txt",
                       quarantine_dir="q", hold_timeout_s=5.0, clock=lambda: now[0])
    again.refresh()
    for name in ("d_03.h5", "d_01.h5", "d_02.h5"):
        again.add_file(scan / name)
    assert [i for i in range(12) if again.get(i)] == [0, 1, 2, 3]
    assert again.failure(4) is not None and again.failure(3) is None


def test_what_is_kept_per_frame_handed_on_is_a_few_bytes(tmp_path):
    """A long scan must not grow the daemon: once handed on, a frame's file, name lookup
    and bookkeeping are dropped; its position (16 bytes) and a list slot remain."""
    import tracemalloc

    from flyprep.sources.live import LiveFrames

    n = 20_000
    (tmp_path / "positions.txt").write_text(
        "".join(f"ccd/diffraction_{i:06d}.npy {i * 1e-7:.6e} 0\n" for i in range(n)))
    ours = [tracemalloc.Filter(True, "*/flyprep/*")]  # not the interpreter's own caches

    def held() -> int:
        return sum(s.size for s in tracemalloc.take_snapshot().filter_traces(ours).statistics(
            "filename"))

    tracemalloc.start()
    try:
        live = LiveFrames(tmp_path, layout="auto", positions_file="positions.txt",
                          quarantine_dir="q")
        live.refresh()
        with_names = held()
        for i in range(n):
            live.add_file(tmp_path / f"ccd/diffraction_{i:06d}.npy", 0.0)
            live.consume(i)
        after = held()
    finally:
        tracemalloc.stop()
    assert live.pending == 0
    assert after / n < 48, f"{after / n:.0f} bytes kept per frame handed on"
    assert with_names / n > 120  # the lookup of frames still to come is what it dropped


def test_a_positions_file_rewritten_by_rename_keeps_placing_frames(tmp_path):
    """Some acquisition systems rewrite the whole positions file (temp + rename) at each
    update instead of appending: names already indexed stay, new ones are placed."""
    import os

    from flyprep.sources.live import LiveFrames

    (tmp_path / "ccd").mkdir()
    live = LiveFrames(tmp_path, layout="auto", positions_file="positions.txt",
                      quarantine_dir="q")

    def rewrite(n: int) -> None:
        tmp = tmp_path / ".positions.tmp"
        tmp.write_text("".join(f"ccd/f_{i}.npy {i} {-i}\n" for i in range(n)))
        os.replace(tmp, tmp_path / "positions.txt")

    for i in range(6):
        np.save(tmp_path / f"ccd/f_{i}.npy", np.full((4, 4), i, np.int32))
    rewrite(3)
    for i in range(3):
        live.add_file(tmp_path / f"ccd/f_{i}.npy")
    live.consume(0)
    rewrite(6)
    for i in range(3, 6):
        live.add_file(tmp_path / f"ccd/f_{i}.npy")
    live.refresh()
    assert [live.get(i).path.name for i in range(1, 6)] == [f"f_{i}.npy" for i in range(1, 6)]
    assert live.position(5).tolist() == [5.0, -5.0]
    assert int(live.read(4, stop=6)[0, 0]) == 4
