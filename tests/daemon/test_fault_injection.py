"""Randomized fault injection over both layouts, with the real daemon: corrupt,
truncated, zero-byte, wrong-shape and missing files at random positions, in scans moved
in whole and in scans written live. In every output each frame is the preparation of the
right raw frame at the right position, or has weight 0; every scan ends, and a reader
reaches its end.

Known limit, not injected: in the HDF5 layout a *first* stack that is never written
cannot be noticed (nothing tells that file numbering did not start at the first file
seen); every later missing file is noticed by the gap in the names."""

from __future__ import annotations

import os
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

import h5py
import numpy as np
import pytest
from compare import check_never_misplaced, contents
from daemon_helpers import GEOMETRY

from flyprep.config import parse_config
from flyprep.pipeline import prepare_scan
from flyprep.ptyd.reader import open_ptyd
from flyprep.sources.scan_dir import discover

SIDE = 24
CHUNK = 12
#: Seeds per layout and delivery; more by hand: FLYPREP_FAULT_SEEDS=50 pytest this file.
SEEDS = int(os.environ.get("FLYPREP_FAULT_SEEDS", "2"))
FAULTS = ("corrupt", "truncated", "empty", "shape", "missing")


@dataclass
class Plan:
    """One scan: its frames, how its files are cut and named, and what goes wrong."""

    name: str
    layout: str
    frames: np.ndarray
    per_file: int = 1
    names: str = "file"  # hdf5: "file" (data_000001, ...) or "frame" (data_000000, data_000008)
    declare: bool = False  # hdf5: frames_per_file in the scan file
    faults: dict[int, str] = field(default_factory=dict)  # file number -> fault

    @property
    def n_files(self) -> int:
        return -(-len(self.frames) // self.per_file)

    def file_name(self, k: int) -> str:
        if self.layout == "ptypy":
            return f"ccd/f_{k:04d}.npy"
        number = k + 1 if self.names == "file" else k * self.per_file
        return f"data_{number:06d}.h5"


def make_plan(rng: np.random.Generator, name: str, layout: str) -> Plan:
    n = int(rng.integers(40, 90))
    frames = rng.poisson(6, (n, SIDE, SIDE)).astype(np.int32)
    frames[:, 0, 0] = np.arange(n)  # every frame distinct
    plan = Plan(name, layout, frames)
    if layout == "hdf5":
        plan.per_file = int(rng.choice([4, 6, 8]))
        plan.names = str(rng.choice(["file", "frame"]))
        plan.declare = bool(rng.random() < 0.5)
    for k in range(plan.n_files):
        if rng.random() < 0.15:
            fault = str(rng.choice(FAULTS))
            if not (layout == "hdf5" and k == 0 and fault == "missing"):  # the known limit
                plan.faults[k] = fault
    return plan


def file_bytes(plan: Plan, k: int, tmp: Path) -> bytes | None:
    """The bytes file ``k`` is written with (None: never written)."""
    fault = plan.faults.get(k)
    if fault == "missing":
        return None
    if fault == "empty":
        return b""
    if fault == "corrupt":
        return np.random.default_rng(k).bytes(700)
    first = k * plan.per_file
    block = plan.frames[first:first + plan.per_file]
    if fault == "shape":
        block = np.zeros((len(block), SIDE + 3, SIDE - 2), np.int32)
    path = tmp / f"{plan.name}_file_{k}"  # writers of several scans run side by side
    if plan.layout == "ptypy":
        np.save(path.with_suffix(".npy"), block[0])
        path = path.with_suffix(".npy")
    else:
        with h5py.File(path, "w") as f:
            f["/entry/data/data"] = block
    data = path.read_bytes()
    path.unlink()
    return data[: len(data) * 2 // 3] if fault == "truncated" else data


def scan_file_text(plan: Plan) -> str:
    text = f"num_frames = {len(plan.frames)}\n"
    return text + (f"frames_per_file = {plan.per_file}\n" if plan.declare else "")


def positions_line(plan: Plan, i: int) -> str:
    yx = f"{i * 1e-7:.6e} {-i * 3e-7:.6e}"
    return f"ccd/f_{i:04d}.npy {yx}\n" if plan.layout == "ptypy" else f"{yx}\n"


def write_clean(plan: Plan, scan: Path) -> None:
    """The scan without faults: what the output is compared with."""
    (scan / "ccd").mkdir(parents=True)
    for k in range(plan.n_files):
        first = k * plan.per_file
        if plan.layout == "ptypy":
            np.save(scan / plan.file_name(k), plan.frames[k])
        else:
            with h5py.File(scan / plan.file_name(k), "w") as f:
                f["/entry/data/data"] = plan.frames[first:first + plan.per_file]
    (scan / "positions.txt").write_text(
        "".join(positions_line(plan, i) for i in range(len(plan.frames))))


def write_faulty(plan: Plan, scan: Path, tmp: Path, *, live: bool) -> None:
    """The scan with its faults, whole (to be moved in) or file by file as a detector
    writes (``live``: each file then its positions lines, a few ms apart)."""
    (scan / "ccd").mkdir(parents=True, exist_ok=True)
    (scan / "flyprep-scan.toml").write_text(scan_file_text(plan))
    positions = open(scan / "positions.txt", "w")
    if plan.layout == "hdf5":  # the stage positions are known up front
        positions.write("".join(positions_line(plan, i) for i in range(len(plan.frames))))
        positions.flush()
    for k in range(plan.n_files):
        data = file_bytes(plan, k, tmp)
        if data is not None:
            with open(scan / plan.file_name(k), "wb") as f:
                f.write(data)
        if plan.layout == "ptypy":
            positions.write(positions_line(plan, k))
            positions.flush()
        if live:
            time.sleep(0.004)
    positions.close()
    (scan / "flyprep-scan.done").touch()


def reference(plan: Plan, scan: Path, out: Path) -> tuple[np.ndarray, ...]:
    config = parse_config({"geometry": dict(GEOMETRY), "prep": {"shape": 16},
                           "output": {"chunk_frames": CHUNK}})
    prepare_scan(discover(scan), config, out)
    return contents(out)


@pytest.mark.parametrize("run", range(SEEDS))
@pytest.mark.parametrize("delivery", ["moved", "live"])
@pytest.mark.parametrize("layout", ["ptypy", "hdf5"])
def test_no_fault_ever_puts_a_frame_at_another_frames_place(
        inprocess_daemon, daemon_dirs, tmp_path, layout, delivery, run):
    root, out, _ = daemon_dirs
    seed = 1000 * run + {"ptypy": 11, "hdf5": 23}[layout] + (0 if delivery == "moved" else 100)
    rng = np.random.default_rng(seed)
    plans = [make_plan(rng, f"scan_{k}", layout) for k in range(3)]
    refs = {}
    for plan in plans:
        write_clean(plan, tmp_path / "clean" / plan.name)
        refs[plan.name] = reference(plan, tmp_path / "clean" / plan.name,
                                    tmp_path / f"{plan.name}.ref.ptyd")
    with inprocess_daemon(watch={"frame_timeout_s": 2.0, "quiet_window_s": 0.3},
                          prep={"shape": 16}, output={"chunk_frames": CHUNK}) as d:
        writers = []
        for plan in plans:
            if delivery == "moved":
                staging = tmp_path / "staging" / plan.name
                write_faulty(plan, staging, tmp_path, live=False)
                staging.rename(root / plan.name)
            else:
                writers.append(threading.Thread(
                    target=write_faulty, args=(plan, root / plan.name, tmp_path),
                    kwargs={"live": True}))
                writers[-1].start()
        for writer in writers:
            writer.join()
        for plan in plans:
            d.wait_state(plan.name, ("complete",), timeout_s=90)
    for plan in plans:
        where = f"seed {seed}, {plan.name}: {plan.layout} per_file={plan.per_file} " \
                f"names={plan.names} declared={plan.declare} faults={plan.faults}"
        master = out / f"{plan.name}.ptyd"
        ptyd = open_ptyd(master)
        assert ptyd.state == "complete" and ptyd.n_frames == len(plan.frames), where
        try:
            good = check_never_misplaced(master, refs[plan.name])
        except AssertionError as exc:
            raise AssertionError(f"{where}: {exc}") from None
        # every frame of a file that was written whole and in place is good where the
        # placement was certain (PtyPy's layout: always)
        if plan.layout == "ptypy":
            bad_files = set(plan.faults)
            assert all(good[i] == (i not in bad_files) for i in range(len(plan.frames))), where
