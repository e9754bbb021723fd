"""Crash-safe resume: reconcile decisions on real interrupted outputs, then resume."""

import os
import random
import signal
import subprocess
import sys
import textwrap
import time

import h5py
import numpy as np
import pytest
from ptyd_helpers import make_chunk

from flyprep.errors import OutputError
from flyprep.ptyd import OutputMode, PtydWriter, ScanMeta, open_ptyd, verify
from flyprep.ptyd.format import params_hash
from flyprep.ptyd.resume import plan_reconcile, reconcile

CHUNK = 10
PARAMS = {"prep": {"rebin": 1}}
HASH = params_hash(PARAMS)
MISSING = (3, 27)  # frames filled as missing, in chunks 0 and 2


def chunks(meta, first=0):
    for key, start in enumerate(range(0, meta.num_frames, CHUNK)):
        if key >= first:
            yield make_chunk(key, start, min(CHUNK, meta.num_frames - start), missing=MISSING)


def write_partial(path, meta, n_chunks, **kw):
    """Write ``n_chunks`` chunks and stop as a crash would: no close, no abort."""
    w = PtydWriter(path, meta=meta, chunk_frames=CHUNK, params=kw.pop("params", PARAMS), **kw)
    for chunk in chunks(meta):
        if chunk.key >= n_chunks:
            break
        w.write_chunk(chunk)
    return w


def do_reconcile(path, meta, params_hash=HASH):
    return reconcile(path, chunk_format=".chunk%05d", meta=meta, chunk_frames=CHUNK,
                     params_hash=params_hash)


def finish(path, meta, state):
    with PtydWriter(path, mode=OutputMode.resuming(state), meta=meta, chunk_frames=CHUNK, params=PARAMS) as w:
        for chunk in chunks(meta, state.next_key):
            w.write_chunk(chunk)


def snapshot(path):
    ptyd = open_ptyd(path)
    frames = list(ptyd.iter_frames())
    with h5py.File(path, "r") as f:
        links = [f["chunks"].get(k, getlink=True).filename for k in sorted(f["chunks"], key=int)]
        missing = f["flyprep/missing_indices"][()].tolist()
    return {"meta": ptyd.meta.model_dump(), "links": links, "missing": missing,
            "state": ptyd.state, "n": len(frames),
            "data": np.stack([fr[1] for fr in frames]),
            "positions": np.stack([fr[2] for fr in frames]),
            "weights": np.stack([fr[3] for fr in frames])}


def assert_same(a, b):
    assert a.keys() == b.keys()
    for k in a:
        if isinstance(a[k], np.ndarray):
            np.testing.assert_array_equal(a[k], b[k], err_msg=k)
        else:
            assert a[k] == b[k], k


@pytest.fixture
def reference(tmp_path_factory, meta):
    path = tmp_path_factory.mktemp("ref") / "scan.ptyd"
    with PtydWriter(path, meta=meta, chunk_frames=CHUNK, params=PARAMS) as w:
        for chunk in chunks(meta):
            w.write_chunk(chunk)
    return snapshot(path)


def names(tmp_path):
    return sorted(p.name for p in tmp_path.iterdir())


def resume_and_check(path, meta, state, reference):
    finish(path, meta, state)
    assert_same(snapshot(path), reference)
    assert not [f for f in verify(path) if f.level in ("error", "warning")]


def test_tmp_chunk_and_tmp_master_are_removed(tmp_path, meta, reference):
    path = tmp_path / "scan.ptyd"
    write_partial(path, meta, 3)
    (tmp_path / "scan.ptyd.chunk00003.flyprep-tmp").write_bytes(b"\x89HDF half a chunk")
    (tmp_path / "scan.ptyd.flyprep-tmp").write_bytes(b"half a master")
    old_gen = open_ptyd(path).provenance["generation"]
    state = do_reconcile(path, meta)
    assert (state.next_key, state.next_frame, state.finished) == (3, 30, False)
    assert state.chunk_files == tuple(f"scan.ptyd.chunk0000{k}" for k in range(3))
    assert set(state.removed_tmp) == {"scan.ptyd.chunk00003.flyprep-tmp", "scan.ptyd.flyprep-tmp"}
    assert state.orphaned == () and state.missing_indices == MISSING
    assert state.generation == old_gen + 1
    ptyd = open_ptyd(path)
    assert ptyd.state == "acquiring" and ptyd.provenance["generation"] == old_gen + 1
    assert ptyd.n_frames == 30 and ptyd.provenance["missing_indices"] == list(MISSING)
    assert not [n for n in names(tmp_path) if n.endswith(".flyprep-tmp")]
    resume_and_check(path, meta, state, reference)


def test_chunk_written_but_master_not_published(tmp_path, meta, reference):
    path = tmp_path / "scan.ptyd"
    w = write_partial(path, meta, 2)
    w.write_chunk(next(chunks(meta, 2)), publish=False)  # crash before the publication
    assert open_ptyd(path).n_frames == 20
    state = do_reconcile(path, meta)
    assert (state.next_key, state.next_frame) == (3, 30)
    assert open_ptyd(path).n_frames == 30
    resume_and_check(path, meta, state, reference)


def test_deleted_master_is_rebuilt_from_chunk_provenance(tmp_path, meta, reference):
    path = tmp_path / "scan.ptyd"
    write_partial(path, meta, 3)
    path.unlink()
    state = do_reconcile(path, meta)
    assert (state.next_key, state.next_frame) == (3, 30)
    assert state.missing_indices == MISSING  # from the masks, checked against provenance
    assert state.generation == 1
    resume_and_check(path, meta, state, reference)


def test_corrupt_last_chunk_is_moved_aside(tmp_path, meta, reference):
    path = tmp_path / "scan.ptyd"
    write_partial(path, meta, 3)
    last = tmp_path / "scan.ptyd.chunk00002"
    last.write_bytes(last.read_bytes()[:500])
    state = do_reconcile(path, meta)
    assert (state.next_key, state.next_frame) == (2, 20)
    [(old, new, reason)] = state.orphaned
    assert old == last.name and new == "scan.ptyd.chunk00002.orphaned-0"
    assert "not readable HDF5" in reason and (tmp_path / new).exists()
    assert open_ptyd(path).n_frames == 20 and state.missing_indices == (3,)
    resume_and_check(path, meta, state, reference)


def test_gap_keeps_prefix_and_orphans_later_chunks(tmp_path, meta, reference):
    path = tmp_path / "scan.ptyd"
    write_partial(path, meta, 4)
    (tmp_path / "scan.ptyd.chunk00001").unlink()
    state = do_reconcile(path, meta)
    assert (state.next_key, state.next_frame) == (1, 10)
    assert [(o[0], o[1]) for o in state.orphaned] == [
        ("scan.ptyd.chunk00002", "scan.ptyd.chunk00002.orphaned-0"),
        ("scan.ptyd.chunk00003", "scan.ptyd.chunk00003.orphaned-0")]
    assert all("missing chunk 1" in o[2] for o in state.orphaned)
    # A second crash and reconcile does not overwrite the first orphans.
    (tmp_path / "scan.ptyd.chunk00002").write_bytes(b"junk")
    again = do_reconcile(path, meta)
    assert again.orphaned[0][1] == "scan.ptyd.chunk00002.orphaned-1"
    resume_and_check(path, meta, again, reference)
    assert (tmp_path / "scan.ptyd.chunk00003.orphaned-0").exists()


def test_chunk_with_other_params_ends_the_prefix(tmp_path, meta, reference):
    path = tmp_path / "scan.ptyd"
    write_partial(path, meta, 3)
    other = tmp_path / "other.ptyd"
    write_partial(other, meta, 3, params={"prep": {"rebin": 2}})
    os.replace(tmp_path / "other.ptyd.chunk00001", tmp_path / "scan.ptyd.chunk00001")
    state = do_reconcile(path, meta)
    assert (state.next_key, state.next_frame) == (1, 10)
    assert "params_hash" in state.orphaned[0][2]
    assert [o[0] for o in state.orphaned] == ["scan.ptyd.chunk00001", "scan.ptyd.chunk00002"]
    resume_and_check(path, meta, state, reference)


def test_without_params_hash_chunks_must_agree_with_chunk_0(tmp_path, meta):
    path = tmp_path / "scan.ptyd"
    write_partial(path, meta, 3)
    write_partial(tmp_path / "other.ptyd", meta, 3, params={"x": 1})
    os.replace(tmp_path / "other.ptyd.chunk00002", tmp_path / "scan.ptyd.chunk00002")
    state = do_reconcile(path, meta, params_hash=None)
    assert state.next_key == 2 and state.params_hash == HASH
    with pytest.raises(OutputError, match="params_hash"):
        PtydWriter(path, mode=OutputMode.resuming(state), meta=meta, chunk_frames=CHUNK, params={"x": 1})


def test_wrong_provenance_or_shape_is_not_kept(tmp_path, meta):
    path = tmp_path / "scan.ptyd"
    write_partial(path, meta, 3)
    with h5py.File(tmp_path / "scan.ptyd.chunk00001", "r+") as f:
        f.attrs["flyprep"] = f.attrs["flyprep"].replace('"chunk":1', '"chunk":7')
    plan = plan_reconcile(path, chunk_format=".chunk%05d", meta=meta, chunk_frames=CHUNK,
                          params_hash=HASH)
    assert plan.next_key == 1 and "provenance says chunk 7" in plan.orphans[0][1]
    small = ScanMeta(num_frames=50, shape=(8, 8), center=(4.0, 4.0))
    plan = plan_reconcile(path, chunk_format=".chunk%05d", meta=small, chunk_frames=CHUNK,
                          params_hash=HASH)
    assert plan.next_key == 0 and "'data' has shape" in plan.orphans[0][1]
    assert names(tmp_path)[:1] == ["scan.ptyd"]  # planning touched nothing


def test_nothing_valid_removes_master_and_starts_over(tmp_path, meta, reference):
    path = tmp_path / "scan.ptyd"
    write_partial(path, meta, 2)
    (tmp_path / "scan.ptyd.chunk00000").unlink()
    state = do_reconcile(path, meta)
    assert state.next_key == 0 and state.master_removed and not path.exists()
    assert state.generation == 2, "the generation goes on from the removed master's"
    assert state.orphaned[0][1] == "scan.ptyd.chunk00001.orphaned-0"
    resume_and_check(path, meta, state, reference)


def test_complete_scan_is_finished(tmp_path, meta):
    path = tmp_path / "scan.ptyd"
    with write_partial(path, meta, 5):
        pass
    before = {p.name: p.stat().st_mtime_ns for p in tmp_path.iterdir()}
    state = do_reconcile(path, meta)
    assert state.finished and state.next_frame == 50 and state.orphaned == ()
    assert {p.name: p.stat().st_mtime_ns for p in tmp_path.iterdir()} == before
    with pytest.raises(OutputError, match="finished"):
        PtydWriter(path, mode=OutputMode.resuming(state), meta=meta, chunk_frames=CHUNK, params=PARAMS)


def test_complete_master_with_a_lost_chunk_resumes(tmp_path, meta, reference):
    path = tmp_path / "scan.ptyd"
    with write_partial(path, meta, 5):
        pass
    (tmp_path / "scan.ptyd.chunk00004").unlink()
    state = do_reconcile(path, meta)
    assert not state.finished and state.next_key == 4
    assert open_ptyd(path).state == "acquiring"
    resume_and_check(path, meta, state, reference)


def test_all_chunks_without_master_just_closes(tmp_path, meta, reference):
    path = tmp_path / "scan.ptyd"
    write_partial(path, meta, 5)
    path.unlink()
    state = do_reconcile(path, meta)
    assert not state.finished and state.next_frame == 50
    resume_and_check(path, meta, state, reference)


CHILD = textwrap.dedent("""
    import sys
    from pathlib import Path
    sys.path.insert(0, sys.argv[2])
    from flyprep.ptyd import PtydWriter, ScanMeta
    from ptyd_helpers import make_chunk
    meta = ScanMeta(num_frames=120, shape=(64, 64), center=(32.0, 32.0), psize=(1e-4, 1e-4),
                    energy=6.2, distance=7.0, label="kill")
    print("ready", flush=True)
    with PtydWriter(Path(sys.argv[1]), meta=meta, chunk_frames=10,
                    params={"prep": {"rebin": 1}}) as w:
        for key, start in enumerate(range(0, 120, 10)):
            w.write_chunk(make_chunk(key, start, 10, side=64, missing=(3, 27)))
            print(f"chunk {key}", flush=True)
    print("done", flush=True)
""")


def test_kill_9_at_random_moments_then_resume(tmp_path):
    meta = ScanMeta(num_frames=120, shape=(64, 64), center=(32.0, 32.0), psize=(1e-4, 1e-4),
                    energy=6.2, distance=7.0, label="kill")
    ref_path = tmp_path / "ref" / "scan.ptyd"
    ref_path.parent.mkdir()
    t0 = time.perf_counter()
    with PtydWriter(ref_path, meta=meta, chunk_frames=CHUNK, params=PARAMS) as w:
        for key, start in enumerate(range(0, 120, CHUNK)):
            w.write_chunk(make_chunk(key, start, CHUNK, side=64, missing=MISSING))
    duration = time.perf_counter() - t0
    reference = snapshot(ref_path)
    helpers = os.path.dirname(__file__)
    rng = random.Random(20240611)
    outcomes = []
    for run in range(5):
        path = tmp_path / f"run{run}" / "scan.ptyd"
        path.parent.mkdir()
        child = subprocess.Popen([sys.executable, "-c", CHILD, str(path), helpers],
                                 stdout=subprocess.PIPE, text=True)
        assert child.stdout.readline().strip() == "ready"
        # Kill a random fraction of one chunk's write time after a random chunk (at most
        # the 8th of 12): the kill lands inside a chunk or master write, or between them,
        # but always mid-scan.
        after = rng.randrange(0, 8)
        for key in range(after + 1):
            assert child.stdout.readline().strip() == f"chunk {key}"
        time.sleep(rng.uniform(0.0, duration / 12))
        os.kill(child.pid, signal.SIGKILL)
        child.wait(timeout=10)
        child.stdout.close()
        state = reconcile(path, chunk_format=".chunk%05d", meta=meta, chunk_frames=CHUNK,
                          params_hash=HASH)
        outcomes.append(state.next_key)
        assert after < state.next_key < 12 and not state.finished, (after, state.next_key)
        if not state.finished:
            with PtydWriter(path, mode=OutputMode.resuming(state), meta=meta, chunk_frames=CHUNK,
                                   params=PARAMS) as w:
                for key, start in enumerate(range(0, 120, CHUNK)):
                    if key >= state.next_key:
                        w.write_chunk(make_chunk(key, start, CHUNK, side=64, missing=MISSING))
        assert_same(snapshot(path), reference)
        assert not [f for f in verify(path) if f.level in ("error", "warning")]
        assert not [n for n in os.listdir(path.parent) if "orphaned" in n or "tmp" in n]
    print("kill outcomes (next_key per run):", outcomes)
    assert len(outcomes) == 5
