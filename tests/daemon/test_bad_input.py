"""Never misplace a frame: bad input files and odd first frames, with the real daemon
(in-process: real watcher, files and writer; events into memory).

Each output frame must either be the preparation of the right raw frame at the right
position, or have weight 0; every scan must end with readers reaching its end."""

from __future__ import annotations

import io
import logging
import shutil
from pathlib import Path

import h5py
import numpy as np
import pytest
from compare import check_never_misplaced, contents
from daemon_helpers import GEOMETRY

from flyprep.config import parse_config
from flyprep.events import FrameFailed, FrameMissing, ScanEnded
from flyprep.pipeline import prepare_scan
from flyprep.ptyd.reader import open_ptyd
from flyprep.sources.scan_dir import discover
from flyprep.cli.status import print_status

SIDE = 32
PREP = {"shape": 24}
CHUNK = 16


def reference(scan: Path, out: Path) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """data, weights and positions of the clean scan prepared offline."""
    config = parse_config({"geometry": dict(GEOMETRY), "prep": dict(PREP),
                           "output": {"chunk_frames": CHUNK}})
    prepare_scan(discover(scan), config, out)
    return contents(out)


def frames_of(n: int, *, seed: int = 0, dtype: str = "int32") -> np.ndarray:
    """n distinct raw frames (Poisson counts plus the frame's index in a corner)."""
    rng = np.random.default_rng(seed)
    out = rng.poisson(5, (n, SIDE, SIDE)).astype(dtype)
    out[:, 0, 0] = np.arange(n)
    return out


def ptypy_scan(scan: Path, frames: np.ndarray, *, num_frames: int | None = None,
               marker: bool = True) -> list[Path]:
    """PtyPy's layout: ccd/f_i.npy named in positions.txt, positions unique per frame."""
    (scan / "ccd").mkdir(parents=True)
    (scan / "flyprep-scan.toml").write_text(f"num_frames = {num_frames or len(frames)}\n")
    paths = []
    with open(scan / "positions.txt", "w") as pos:
        for i, frame in enumerate(frames):
            path = scan / f"ccd/f_{i:04d}.npy"
            np.save(path, frame)
            paths.append(path)
            pos.write(f"ccd/f_{i:04d}.npy {i * 1e-7:.6e} {-i * 2e-7:.6e}\n")
    if marker:
        (scan / "flyprep-scan.done").touch()
    return paths


def stack_scan(scan: Path, frames: np.ndarray, per_file: int, *, names: str = "file",
               extra: str = "", marker: bool = True) -> list[Path]:
    """HDF5 stacks of ``per_file`` frames, named by file number (data_000001.h5, ...) or
    by first frame (``names="frame"``: data_000000.h5, data_000020.h5, ...)."""
    scan.mkdir(parents=True)
    (scan / "flyprep-scan.toml").write_text(f"num_frames = {len(frames)}\n{extra}")
    (scan / "positions.txt").write_text(
        "".join(f"{i * 1e-7:.6e} {-i * 2e-7:.6e}\n" for i in range(len(frames))))
    paths = []
    for k, first in enumerate(range(0, len(frames), per_file)):
        number = k + 1 if names == "file" else first
        path = scan / f"data_{number:06d}.h5"
        with h5py.File(path, "w") as f:
            f["/entry/data/data"] = frames[first:first + per_file]
        paths.append(path)
    if marker:
        (scan / "flyprep-scan.done").touch()
    return paths


def stack_case(tmp_path: Path, name: str, n: int, per_file: int, *, names: str = "file",
               extra: str = "") -> tuple[tuple[np.ndarray, ...], list[Path], Path]:
    """The reference of a clean stack scan, and the same scan in a staging directory
    (its files, to be spoilt, then the directory to move into the watched root)."""
    frames = frames_of(n)
    stack_scan(tmp_path / "clean", frames, per_file, names=names)
    ref = reference(tmp_path / "clean", tmp_path / "ref.ptyd")
    staging = tmp_path / "staging" / name
    return ref, stack_scan(staging, frames, per_file, names=names, extra=extra), staging


def settings(**watch: object) -> dict[str, dict]:
    return {"watch": {"frame_timeout_s": 3.0, **watch}, "prep": dict(PREP),
            "output": {"chunk_frames": CHUNK}}


def garbage(path: Path) -> None:
    path.write_bytes(b"\x89HDF\r\n\x1a\n but then nothing of the kind " * 20)


@pytest.mark.parametrize("names", ["file", "frame"])
def test_an_unreadable_first_stack_never_shifts_the_frames_after_it(
        inprocess_daemon, daemon_dirs, tmp_path, names):
    """10 stacks of 20 frames, the first garbage (the issue: 180 frames were written with
    another frame's data). Names that count frames place the rest exactly; names that
    count files leave the rest unplaceable: weight 0, never another frame."""
    root, out, _ = daemon_dirs
    ref, paths, staging = stack_case(tmp_path, "scan_stack", 200, 20, names=names)
    garbage(paths[0])
    with inprocess_daemon(**settings()) as d:
        staging.rename(root / "scan_stack")
        info = d.wait_state("scan_stack", ("complete",), timeout_s=60)
    good = check_never_misplaced(out / "scan_stack.ptyd", ref)
    assert not good[:20].any()
    if names == "frame":
        assert good[20:].all()
        assert (info["frames_failed"], info["frames_missing"]) == (20, 0)
    else:
        assert not good.any()
        assert info["frames_failed"] == 200
    assert open_ptyd(out / "scan_stack.ptyd").state == "complete"
    failed = d.sink.of_kind(FrameFailed)
    assert failed[0].path == str(root / "scan_stack" / paths[0].name)  # the file, not the dir


def test_a_declared_stack_length_places_the_frames_after_an_unreadable_stack(
        inprocess_daemon, daemon_dirs, tmp_path):
    root, out, _ = daemon_dirs
    ref, paths, staging = stack_case(tmp_path, "scan_decl", 200, 20,
                                     extra="frames_per_file = 20\n")
    garbage(paths[0])
    garbage(paths[5])
    with inprocess_daemon(**settings()) as d:
        staging.rename(root / "scan_decl")
        info = d.wait_state("scan_decl", ("complete",), timeout_s=60)
    good = check_never_misplaced(out / "scan_decl.ptyd", ref)
    assert np.flatnonzero(~good).tolist() == list(range(20)) + list(range(100, 120))
    assert info["frames_failed"] == 40
    # one event and one log line per bad file, with its range
    failed = d.sink.of_kind(FrameFailed)
    assert [(e.index, e.count, Path(e.path).name) for e in failed] == [
        (0, 20, "data_000001.h5"), (100, 20, "data_000006.h5")]


@pytest.mark.parametrize("odd", ["shape", "float64", "uint16"])
def test_one_odd_first_frame_is_quarantined_and_the_scan_takes_the_others(
        inprocess_daemon, daemon_dirs, tmp_path, odd):
    """Frame 0 of 100x100, or float64, or uint16, then 99 good 32x32 int32 frames: the
    scan's type is what the first frames agree on; frame 0 alone fails (before: 99
    frames failed)."""
    root, out, _ = daemon_dirs
    frames = frames_of(100)
    ref = reference(_written(ptypy_scan, tmp_path / "clean", frames), tmp_path / "ref.ptyd")
    staging = tmp_path / "staging" / "scan_odd"
    paths = ptypy_scan(staging, frames)
    bad = {"shape": np.zeros((100, 100), np.int32), "float64": frames[0].astype(np.float64),
           "uint16": frames[0].astype(np.uint16)}[odd]
    np.save(paths[0], bad)
    with inprocess_daemon(**settings()) as d:
        staging.rename(root / "scan_odd")
        info = d.wait_state("scan_odd", ("complete",), timeout_s=60)
    good = check_never_misplaced(out / "scan_odd.ptyd", ref)
    assert np.flatnonzero(~good).tolist() == [0]
    assert (info["frames_failed"], info["frames_missing"]) == (1, 0)
    [event] = d.sink.of_kind(FrameFailed)
    assert "the scan's frames are (32, 32) int32" in event.reason
    assert not (root / "scan_odd" / "ccd" / "f_0000.npy").exists()  # quarantined: moved
    assert (root / "scan_odd" / "flyprep-quarantine" / "ccd__f_0000.npy").exists()


def test_a_declared_frame_type_decides_at_once(inprocess_daemon, daemon_dirs, tmp_path):
    root, out, _ = daemon_dirs
    frames = frames_of(40)
    staging = tmp_path / "staging" / "scan_typed"
    paths = ptypy_scan(staging, frames)
    for p in paths[:2]:  # two odd frames agree with each other, not with the settings
        np.save(p, np.zeros((8, 8), np.int32))
    with open(staging / "flyprep-scan.toml", "a") as f:
        f.write(f"frame_shape = [{SIDE}, {SIDE}]\nframe_dtype = \"int32\"\n")
    with inprocess_daemon(**settings()) as d:
        staging.rename(root / "scan_typed")
        info = d.wait_state("scan_typed", ("complete",), timeout_s=60)
    assert (info["frames_failed"], info["frames_done"]) == (2, 40)
    events = d.sink.of_kind(FrameFailed)
    assert [(e.index, e.count) for e in events] == [(0, 1), (1, 1)]  # one event per file
    assert "as the scan's settings declare" in events[0].reason


def test_bad_files_of_every_kind_name_the_file_and_status_keeps_failed_apart_from_missing(
        inprocess_daemon, daemon_dirs, tmp_path, caplog):
    root, out, _ = daemon_dirs
    frames = frames_of(48)
    staging = tmp_path / "staging" / "scan_mixed"
    paths = ptypy_scan(staging, frames)
    paths[3].write_bytes(b"random bytes, no numpy magic" * 7)
    paths[9].write_bytes(b"")
    paths[20].write_bytes(paths[20].read_bytes()[:-64])  # truncated
    paths[30].unlink()  # never written: missing
    with caplog.at_level(logging.WARNING, logger="flyprep"):
        with inprocess_daemon(**settings()) as d:
            staging.rename(root / "scan_mixed")
            info = d.wait_state("scan_mixed", ("complete",), timeout_s=60)
    assert (info["frames_failed"], info["frames_missing"]) == (3, 1)
    [ended] = d.sink.of_kind(ScanEnded)
    assert (ended.frames_failed, ended.frames_missing) == (3, 1)
    failed = {e.index: e for e in d.sink.of_kind(FrameFailed)}
    assert sorted(failed) == [3, 9, 20]
    assert "not a .npy file" in failed[3].reason and "allow_pickle" not in failed[3].reason
    assert "empty" in failed[9].reason
    assert "truncated" in failed[20].reason
    for i, e in failed.items():
        assert e.path == str(root / "scan_mixed" / f"ccd/f_{i:04d}.npy")
    [missing] = d.sink.of_kind(FrameMissing)
    assert missing.index == 30
    lines = [r.getMessage() for r in caplog.records if "f_0003.npy" in r.getMessage()
             and "frame 3 failed" in r.getMessage()]
    assert len(lines) == 1


def test_default_patterns_take_the_ptypy_layouts_npy_frames(tmp_path):
    """No frame_patterns in the config: PtyPy's .npy frames are read (before: the scan
    failed with 'no frame of the scan arrived')."""
    from daemon_helpers import InProcessDaemon, daemon_settings

    root, out, sockets = tmp_path / "root", tmp_path / "out", tmp_path / "s"
    for p in (root, out, sockets):
        p.mkdir()
    data = daemon_settings(root, out, sockets, **settings())
    del data["watch"]["frame_patterns"]
    with InProcessDaemon(data) as d:
        ptypy_scan(root / "scan_default", frames_of(20))
        info = d.wait_state("scan_default", ("complete",), timeout_s=60)
    assert info["frames_failed"] == info["frames_missing"] == 0


def test_files_matching_no_pattern_are_said_once_and_named_when_no_frame_arrives(
        tmp_path, caplog):
    from daemon_helpers import InProcessDaemon, daemon_settings

    root, out, sockets = tmp_path / "root", tmp_path / "out", tmp_path / "s"
    for p in (root, out, sockets):
        p.mkdir()
    data = daemon_settings(root, out, sockets, **settings(frame_patterns=["*.h5"]))
    with caplog.at_level(logging.WARNING, logger="flyprep"):
        with InProcessDaemon(data) as d:
            ptypy_scan(root / "scan_npy", frames_of(20))
            info = d.wait_state("scan_npy", ("failed",), timeout_s=60)
            shown = io.StringIO()
            print_status(d.daemon.status(), endpoint="x", file=shown)
    assert "20 file(s) match no frame pattern, never read: ccd/f_0000.npy" in shown.getvalue()
    assert info["files_unmatched"] == 20
    assert len(info["unmatched_files"]) == 5
    assert "ccd/f_0000.npy" in info["error"] and "matching no pattern" in info["error"]
    said = [r for r in caplog.records if "matches none of watch.frame_patterns" in r.getMessage()]
    assert len(said) == 1


def test_a_calibration_map_replaced_under_the_same_name_is_a_new_preparation(
        inprocess_daemon, daemon_dirs, tmp_path):
    """Chunks prepared with the old dark are not continued with the new one: at the
    restart they are set aside and the whole scan is prepared with the new dark."""
    root, out, _ = daemon_dirs
    dark = tmp_path / "dark.npy"
    np.save(dark, np.full((SIDE, SIDE), 1, np.int32))
    frames = frames_of(64)
    staging = tmp_path / "staging" / "scan_dark"
    ptypy_scan(staging, frames, marker=False)
    for p in sorted((staging / "ccd").iterdir())[40:]:
        p.rename(tmp_path / p.name)  # the rest comes after the restart
    cfg = settings()
    cfg["prep"] = {**PREP, "dark": str(dark)}
    with inprocess_daemon(**cfg) as d:
        staging.rename(root / "scan_dark")
        d.wait_state("scan_dark", ("acquiring",))
        from daemon_helpers import wait_for
        wait_for(lambda: (d.scan("scan_dark") or {}).get("chunks_written", 0) >= 2, 30,
                 "two chunks")
    np.save(dark, np.full((SIDE, SIDE), 3, np.int32))  # same name, new contents
    for name in sorted(p.name for p in tmp_path.glob("f_*.npy")):
        (tmp_path / name).rename(root / "scan_dark" / "ccd" / name)
    (root / "scan_dark" / "flyprep-scan.done").touch()
    with inprocess_daemon(**cfg) as d:
        info = d.wait_state("scan_dark", ("complete",), timeout_s=60)
    assert info["resumed_at_frame"] is None  # nothing kept: prepared again from frame 0
    assert list(out.glob("scan_dark.ptyd.chunk*.orphaned-*"))
    config = parse_config({"geometry": dict(GEOMETRY), "prep": {**PREP, "dark": str(dark)},
                           "output": {"chunk_frames": CHUNK}})
    prepare_scan(discover(root / "scan_dark"), config, tmp_path / "ref.ptyd")
    from compare import assert_same_ptyd
    assert_same_ptyd(out / "scan_dark.ptyd", tmp_path / "ref.ptyd")


def _written(make, scan: Path, frames: np.ndarray) -> Path:
    make(scan, frames)
    return scan


def test_reference_helpers_see_a_misplaced_frame(tmp_path):
    """check_never_misplaced fails on a shifted frame (so the tests above can fail)."""
    frames = frames_of(32)
    scan = _written(ptypy_scan, tmp_path / "a", frames)
    ref = reference(scan, tmp_path / "ref.ptyd")
    shifted = tmp_path / "b"
    ptypy_scan(shifted, np.concatenate([frames[1:2], frames[1:]]))
    reference(shifted, tmp_path / "shifted.ptyd")
    with pytest.raises(AssertionError, match="frame 0 holds another frame's data"):
        check_never_misplaced(tmp_path / "shifted.ptyd", ref)
    shutil.rmtree(shifted)


def test_a_wrong_shaped_first_stack_votes_once_and_is_quarantined_whole(
        inprocess_daemon, daemon_dirs, tmp_path):
    """A stack's frames share one header: its 20 frames are one vote, not 20, so the
    scan's type is the other stacks'; the odd stack fails as one event with its range."""
    root, out, _ = daemon_dirs
    ref, paths, staging = stack_case(tmp_path, "scan_wide", 100, 20)
    with h5py.File(paths[0], "w") as f:
        f["/entry/data/data"] = np.zeros((20, SIDE + 8, SIDE), np.int32)
    with inprocess_daemon(**settings()) as d:
        staging.rename(root / "scan_wide")
        info = d.wait_state("scan_wide", ("complete",), timeout_s=60)
    good = check_never_misplaced(out / "scan_wide.ptyd", ref)
    assert np.flatnonzero(~good).tolist() == list(range(20))
    assert info["frames_failed"] == 20
    [event] = d.sink.of_kind(FrameFailed)
    assert (event.index, event.count) == (0, 20) and "moved to" in event.reason


def test_a_finished_session_keeps_no_frame_tables_or_buffers(inprocess_daemon, daemon_dirs):
    """Finished scans stay in status (up to 200): they must not keep their LiveFrames,
    cached raw frames or chunk buffers."""
    import gc

    from flyprep.pipeline import ScanRun
    from flyprep.sources.live import LiveFrames

    root, _, _ = daemon_dirs
    with inprocess_daemon(**settings()) as d:
        stack_scan(root / "scan_mem", frames_of(60), 20)
        d.wait_state("scan_mem", ("complete",), timeout_s=60)
        [session] = [s for s in d.daemon._finished.values() if s.name == "scan_mem"] or \
            [s for s in d.daemon._sessions.values() if s.name == "scan_mem"]
        assert session.join(10)
        gc.collect()
        alive = [o for o in gc.get_objects() if isinstance(o, (LiveFrames, ScanRun))]
        assert alive == []
