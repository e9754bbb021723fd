"""Chunks written in parts while they fill: the same output as whole chunks, written ahead,
never visible early, and nothing left behind when a scan stops mid-chunk."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any, Iterator

import h5py
import numpy as np
import pytest

from flyprep.config import parse_config
from flyprep.errors import OutputError, ScanInterrupted
from flyprep.pipeline import FrameItem, frame_item, run_scan
from flyprep.prep.chunk import PreparedPart
from flyprep.ptyd import PtydWriter, ScanMeta
from flyprep.ptyd.reader import open_ptyd
from flyprep.pipeline.resume import apply_resume, plan_resume
from flyprep.pipeline.frame_book import FrameBook, RawChunk

RAW = (40, 36)
NUM, CHUNK = 53, 12  # a short last chunk
FRAME_BYTES = 24 * 24 * 4  # prep.shape 24, int32


def raw_frame(i: int) -> np.ndarray:
    rng = np.random.default_rng(i)
    return rng.poisson(50, RAW).astype(np.int32) + i


def positions(n: int = NUM) -> np.ndarray:
    return np.stack([np.arange(n) * 1e-6, -np.arange(n) * 2e-6], 1)


def settings(compression: str = "none", **prep: Any) -> Any:
    return parse_config({"prep": {"shape": 24, **prep},
                         "output": {"chunk_frames": CHUNK, "compression": compression},
                         "geometry": {"energy": 6.2, "distance": 7.0, "psize": 1e-4}})


def frames(missing: set[int] = frozenset(), stop: int = NUM,
           start: int = 0) -> Iterator[FrameItem]:
    for i in range(start, stop):
        yield frame_item(i, None if i in missing else raw_frame(i), f"f{i:03d}.npy")


def run(out: Path, part_bytes: int, items: Any = None, **kw: Any) -> Path:
    cfg = kw.pop("config", None) or settings()
    out.parent.mkdir(parents=True, exist_ok=True)
    run_scan(frames() if items is None else items, num_frames=NUM, positions=positions(),
             config=cfg, output=out, allow_missing=True, part_bytes=part_bytes, **kw)
    return out


def contents(master: Path) -> dict[str, Any]:
    """Every dataset of every chunk file, which HDF5 chunks are allocated, provenance
    without its time, and the master's status."""
    out: dict[str, Any] = {}
    for path in sorted(master.parent.glob(master.name + ".chunk*")):
        with h5py.File(path, "r") as f:
            for name in ("data", "weights", "positions", "indices"):
                out[f"{path.name}/{name}"] = f[name][()]
            data = f["data"]
            out[f"{path.name}/allocated"] = sorted(
                data.id.get_chunk_info(k).chunk_offset for k in range(data.id.get_num_chunks()))
            prov = json.loads(f.attrs["flyprep"])
            del prov["written_at"]
            out[f"{path.name}/provenance"] = prov
    ptyd = open_ptyd(master)
    out["n_frames"] = ptyd.n_frames
    out["status"] = {k: v for k, v in ptyd.provenance.items()
                     if k not in ("generation", "updated", "created")}
    with h5py.File(master, "r") as f:
        out["missing_indices"] = f["flyprep/missing_indices"][()]
    return out


def assert_same(a: dict[str, Any], b: dict[str, Any]) -> None:
    assert a.keys() == b.keys()
    for key in a:
        if isinstance(a[key], np.ndarray):
            np.testing.assert_array_equal(a[key], b[key], err_msg=key)
            assert a[key].dtype == b[key].dtype, key
        else:
            assert a[key] == b[key], key


# -- FrameBook.release_part -----------------------------------------------------------

def test_release_part_hands_on_the_resolved_prefix_never_the_last_frame() -> None:
    book = FrameBook(num_frames=10, chunk_frames=5, buffer_chunks=1, positions=positions(10))
    assert book.release_part() is None
    book.add(0, raw_frame(0))
    book.add(2, raw_frame(2))
    part = book.release_part()
    assert (part.key, part.frame_start, part.chunk_frames, part.offset) == (0, 0, 5, 0)
    assert len(part.frames) == 1 and part.present.tolist() == [True]
    assert book.release_part() is None  # frame 1 is not resolved: 2 waits
    book.mark_missing([1])
    book.add(3, raw_frame(3))
    book.add(4, raw_frame(4))
    part = book.release_part()
    assert part.offset == 1 and part.present.tolist() == [False, True, True]
    assert part.frames[0] is None
    np.testing.assert_array_equal(part.frames[2], raw_frame(3))
    assert book.release_part() is None  # frame 4, the last, goes with the chunk
    raw = book.release()
    assert isinstance(raw, RawChunk) and raw.done == 4
    assert raw.present.tolist() == [True, False, True, True, True]
    assert raw.frames[:4] == (None,) * 4  # handed on: the book keeps no reference
    np.testing.assert_array_equal(raw.frames[4], raw_frame(4))
    np.testing.assert_array_equal(raw.positions, positions(10)[:5])
    assert book.missing_total == 1
    # The next chunk starts afresh.
    book.add(5, raw_frame(5))
    assert book.release_part().offset == 0


# -- run_scan: parts give the same output as whole chunks --------------------------------

@pytest.mark.parametrize("case", [
    {},
    {"prep": {"rebin": 2, "saturation": 70}},
    {"prep": {"center": None, "auto_center": True}},  # first chunk whole: centre of mass
    {"compression": "gzip"},
    {"compression": "bitshuffle-lz4"},
])
@pytest.mark.parametrize("part_frames", [1, 5])
def test_parts_write_the_same_scan_as_whole_chunks(tmp_path: Path, case: dict[str, Any],
                                                    part_frames: int) -> None:
    if case.get("compression") == "bitshuffle-lz4":
        pytest.importorskip("hdf5plugin")
    cfg = settings(case.get("compression", "none"), **case.get("prep", {}))
    missing = {0, 7, 12, 13, 30, 52}
    whole = run(tmp_path / "a" / "s.ptyd", 0, frames(missing), config=cfg)
    parted = run(tmp_path / "b" / "s.ptyd", part_frames * FRAME_BYTES, frames(missing),
                 config=cfg)
    assert_same(contents(whole), contents(parted))
    assert not list((tmp_path / "b").glob("*tmp*"))


def test_a_chunk_is_on_disk_before_its_last_frame_and_unseen_until_whole(tmp_path: Path) -> None:
    out = tmp_path / "s.ptyd"
    tmp = tmp_path / "s.ptyd.chunk00001.flyprep-tmp"
    seen: dict[str, Any] = {}

    def watching() -> Iterator[FrameItem]:
        for item in frames():
            if item.index == 2 * CHUNK - 1:  # chunk 1's last frame is about to come
                deadline = 200
                while not (tmp.exists() and tmp.stat().st_size >= 10 * FRAME_BYTES):
                    deadline -= 1
                    assert deadline, "the first 10 frames of chunk 1 were never written ahead"
                    time.sleep(0.01)
                seen["tmp_size"] = tmp.stat().st_size
                seen["published"] = open_ptyd(out).n_frames
            yield item

    run(out, 2 * FRAME_BYTES, watching())
    assert seen["tmp_size"] >= 10 * FRAME_BYTES
    assert seen["published"] == CHUNK  # chunk 1 not listed while it fills
    assert open_ptyd(out).n_frames == NUM and not tmp.exists()


def test_a_scan_stopped_mid_chunk_leaves_no_part_behind_and_resumes_the_same(
        tmp_path: Path) -> None:
    reference = contents(run(tmp_path / "ref" / "s.ptyd", 0))
    out = tmp_path / "run" / "s.ptyd"

    def interrupted() -> Iterator[FrameItem]:
        yield from frames(stop=2 * CHUNK + 7)
        raise ScanInterrupted("stopped")

    with pytest.raises(ScanInterrupted):
        run(out, 3 * FRAME_BYTES, interrupted())
    assert sorted(p.name for p in out.parent.iterdir()) == [
        "s.ptyd", "s.ptyd.chunk00000", "s.ptyd.chunk00001"]
    assert open_ptyd(out).state == "acquiring"
    plan = plan_resume(out, settings(), num_frames=NUM)
    assert plan is not None and plan.next_frame == 2 * CHUNK and not plan.finished
    mode = apply_resume(plan)
    assert mode.kind == "resume" and mode.state is not None
    run(out, 3 * FRAME_BYTES, frames(start=mode.state.next_frame), mode=mode,
        resolved=plan.resolved)
    assert_same(reference, contents(out))


def test_a_failed_run_mid_chunk_publishes_every_frame_as_aborted(tmp_path: Path) -> None:
    out = tmp_path / "s.ptyd"

    def failing() -> Iterator[FrameItem]:
        yield from frames(stop=CHUNK + 8)
        raise RuntimeError("detector gone")

    with pytest.raises(RuntimeError, match="detector gone"):
        run(out, 3 * FRAME_BYTES, failing())
    ptyd = open_ptyd(out)
    assert ptyd.state == "aborted" and ptyd.n_frames == NUM
    # the frames that arrived before the failure, written in parts, are all there
    with h5py.File(tmp_path / "s.ptyd.chunk00001", "r") as f:
        np.testing.assert_array_equal(f["weights"][:8].any(axis=(1, 2)), True)
        assert not f["weights"][8:].any()
    assert not list(tmp_path.glob("*tmp*"))


# -- PtydWriter.write_part ---------------------------------------------------------------

def part(key: int, start: int, offset: int, m: int, chunk: int = 10) -> PreparedPart:
    data = np.full((m, 8, 8), start + offset, np.int32)
    return PreparedPart(key, start, chunk, offset, data, np.zeros(m, bool))


def test_parts_out_of_order_are_refused_and_leave_nothing(tmp_path: Path) -> None:
    meta = ScanMeta(num_frames=30, shape=(8, 8), center=(4.0, 4.0))
    writer = PtydWriter(tmp_path / "s.ptyd", meta=meta, chunk_frames=10)
    with pytest.raises(OutputError, match="out of order"):
        writer.write_part(part(1, 10, 0, 3))
    writer.write_part(part(0, 0, 0, 3))
    assert (tmp_path / "s.ptyd.chunk00000.flyprep-tmp").exists()
    with pytest.raises(OutputError, match="does not continue chunk 0 at 3"):
        writer.write_part(part(0, 0, 4, 2))
    assert not list(tmp_path.iterdir()), "the refused part's chunk file is removed"


def test_append_mode_takes_whole_chunks_only(tmp_path: Path) -> None:
    meta = ScanMeta(num_frames=30, shape=(8, 8), center=(4.0, 4.0))
    writer = PtydWriter(tmp_path / "s.ptyd", meta=meta, chunk_frames=10, save="append")
    assert not writer.writes_parts
    with pytest.raises(OutputError, match="link mode"):
        writer.write_part(part(0, 0, 0, 3))
    # run_scan then writes whole chunks
    cfg = parse_config({"prep": {"shape": 24}, "output": {"chunk_frames": CHUNK, "save": "append"},
                        "geometry": {"energy": 6.2, "distance": 7.0, "psize": 1e-4}})
    run(tmp_path / "a.ptyd", FRAME_BYTES, config=cfg)
    assert open_ptyd(tmp_path / "a.ptyd").n_frames == NUM


# -- review findings ---------------------------------------------------------------------

@pytest.mark.parametrize("save", ["link", "append"])
def test_a_scan_failing_in_its_first_chunk_leaves_no_output(tmp_path: Path, save: str) -> None:
    """Parts of chunk 0 were stored, nothing was published: as with whole chunks, the scan
    fails without an output (a daemon retries it on its next start)."""
    cfg = parse_config({"prep": {"shape": 24}, "output": {"chunk_frames": CHUNK, "save": save},
                        "geometry": {"energy": 6.2, "distance": 7.0, "psize": 1e-4}})

    def failing() -> Iterator[FrameItem]:
        yield from frames(stop=CHUNK - 3)
        raise RuntimeError("detector gone")

    with pytest.raises(RuntimeError, match="detector gone"):
        run(tmp_path / "out" / "s.ptyd", 2 * FRAME_BYTES, failing(), config=cfg)
    assert list((tmp_path / "out").iterdir()) == []


def test_verify_expects_the_filling_chunk_of_an_acquiring_scan(tmp_path: Path) -> None:
    from flyprep.ptyd.verify import verify

    out = tmp_path / "s.ptyd"
    findings: list[set[str]] = []

    def watching() -> Iterator[FrameItem]:
        for item in frames():
            if item.index == CHUNK + 9:  # chunk 1 is being written in parts
                filling = tmp_path / "s.ptyd.chunk00001.flyprep-tmp"
                deadline = time.monotonic() + 5
                while not filling.exists():  # the writer thread stores parts
                    assert time.monotonic() < deadline, "chunk 1's parts never written"
                    time.sleep(0.01)
                findings.append({f.rule for f in verify(out)})
            yield item

    run(out, 2 * FRAME_BYTES, watching())
    assert "7-atomic-writes" not in findings[0]
    (tmp_path / "s.ptyd.chunk00009.flyprep-tmp").write_bytes(b"")
    assert "7-atomic-writes" in {f.rule for f in verify(out)}  # complete: a leftover


def test_a_part_that_cannot_be_prepared_leaves_its_frames_to_the_chunk(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """If preparing a part fails (out of memory, say), the run fails as any other, and
    its frames are not lost from the book: the aborted output still has every frame that
    arrived, and num_frames frames in all."""
    from flyprep.pipeline import ChunkPreparer as Preparer

    real_part = Preparer.part
    calls = {"n": 0}

    def failing_part(self: Any, raw: Any) -> Any:
        calls["n"] += 1
        if calls["n"] == 4:  # the first part of chunk 1 (frames 12-14)
            raise MemoryError("no memory for this part")
        return real_part(self, raw)

    monkeypatch.setattr(Preparer, "part", failing_part)
    out = tmp_path / "s.ptyd"
    with pytest.raises(MemoryError):
        run(out, 3 * FRAME_BYTES, frames())
    ptyd = open_ptyd(out)
    assert ptyd.state == "aborted" and ptyd.n_frames == NUM
    with h5py.File(tmp_path / "s.ptyd.chunk00001", "r") as f:
        arrived = f["weights"][()].any(axis=(1, 2))
    # frames 12-14 had arrived when their part failed: they are in the chunk
    assert arrived[:3].all() and not arrived[3:].any()
