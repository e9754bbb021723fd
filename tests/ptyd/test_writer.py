"""PtydWriter: layout, tags, atomicity, provenance, ordering and failure behaviour."""

import json
import os
import subprocess
import sys
import textwrap

import h5py
import numpy as np
import pytest

from flyprep.errors import OutputError
from flyprep.ptyd import PtydWriter, open_ptyd, verify

from ptyd_helpers import make_chunk


def write_scan(path, meta, *, chunk=20, **kw):
    with PtydWriter(path, meta=meta, chunk_frames=chunk, **kw) as w:
        for key, start in enumerate(range(0, meta.num_frames, chunk)):
            w.write_chunk(make_chunk(key, start, min(chunk, meta.num_frames - start)))
    return w


def test_link_mode_layout_follows_ptypy(tmp_path, meta):
    path = tmp_path / "scan.ptyd"
    write_scan(path, meta)
    assert sorted(p.name for p in tmp_path.iterdir()) == [
        "scan.ptyd", "scan.ptyd.chunk00000", "scan.ptyd.chunk00001", "scan.ptyd.chunk00002"]
    with h5py.File(path, "r") as f:
        assert f.attrs["h5rw_version"] == "0.1"
        assert f["meta"].attrs["type"] == "dict" and f["chunks"].attrs["type"] == "dict"
        tags = {k: f["meta"][k].attrs["type"] for k in f["meta"]}
        assert tags["num_frames"] == "scalar" and f["meta/num_frames"].dtype == np.int64
        assert tags["shape"] == "array" and tags["center"] == "array" and tags["psize"] == "array"
        assert tags["energy"] == "scalar" and tags["label"] == "string"
        for key in ("0", "1", "2"):
            link = f["chunks"].get(key, getlink=True)
            assert isinstance(link, h5py.ExternalLink)
            assert link.filename == f"scan.ptyd.chunk0000{key}" and link.path == "/"
        chunk = f["chunks/0"]
        assert sorted(chunk.keys()) == ["data", "indices", "positions", "weights"]
        assert chunk["data"].chunks == (1, 16, 16)
        assert chunk["weights"].dtype == bool
    assert not [f for f in verify(path) if f.level == "error"]


def test_links_resolve_from_another_working_directory(tmp_path, meta, monkeypatch):
    path = tmp_path / "out" / "scan.ptyd"
    path.parent.mkdir()
    write_scan(path, meta)
    monkeypatch.chdir(tmp_path)
    assert open_ptyd("out/scan.ptyd").n_frames == 50


def test_provenance_on_master_and_chunks(tmp_path, meta):
    path = tmp_path / "scan.ptyd"
    write_scan(path, meta, params={"prep": {"rebin": 2}})
    ptyd = open_ptyd(path)
    prov = ptyd.provenance
    assert prov["state"] == "complete" and prov["format_version"] == 1
    assert prov["generation"] == 4  # three chunks, then the final publication
    assert prov["frames_missing"] == 0 and prov["frames_written"] == 50
    assert prov["params"] == {"prep": {"rebin": 2}}
    with h5py.File(tmp_path / "scan.ptyd.chunk00001", "r") as f:
        a = json.loads(f.attrs["flyprep"])
    assert (a["frame_start"], a["frame_stop"], a["chunk"]) == (20, 40, 1)
    assert a["source_dir"] == "/det/scan"
    assert a["sources"][0] == "f00020.h5" and len(a["sources"]) == 20
    assert a["params"] == {"prep": {"rebin": 2}}
    assert a["params_hash"] == prov["params_hash"] and len(a["params_hash"]) == 16
    assert a["flyprep_version"] and a["written_at"].endswith("Z")


def test_deferred_publication_coalesces(tmp_path, meta):
    path = tmp_path / "scan.ptyd"
    w = PtydWriter(path, meta=meta, chunk_frames=20)
    w.write_chunk(make_chunk(0, 0, 20))
    w.write_chunk(make_chunk(1, 20, 20), publish=False)
    assert [c.key for c in open_ptyd(path).chunks] == [0]
    w.publish()
    w.publish()  # nothing new: no new generation
    ptyd = open_ptyd(path)
    assert [c.key for c in ptyd.chunks] == [0, 1] and ptyd.provenance["generation"] == 2


def test_weights_are_deflated_masks_with_distinct_frames_kept(tmp_path):
    from flyprep.ptyd import ScanMeta
    from flyprep.prep.chunk import PreparedChunk

    meta = ScanMeta(num_frames=6, shape=(8, 8), center=(4.0, 4.0))
    weights = np.ones((6, 8, 8), bool)
    weights[:, 0, :] = False          # a shared mask ...
    weights[2] = False                # ... a missing frame ...
    weights[4, 5, 5] = False          # ... and a frame with one saturated pixel
    chunk = PreparedChunk(key=0, frame_start=0, data=np.arange(384, dtype=np.uint16).reshape(6, 8, 8),
                          weights=weights, positions=np.zeros((6, 2)),
                          missing=np.array([False, False, True, False, False, False]))
    with PtydWriter(tmp_path / "w.ptyd", meta=meta, chunk_frames=6) as w:
        w.write_chunk(chunk)
    with h5py.File(tmp_path / "w.ptyd.chunk00000", "r") as f:
        assert f["weights"].compression == "gzip" and f["weights"].dtype == bool
        np.testing.assert_array_equal(f["weights"][()], weights)
        expected = chunk.data.copy()
        expected[2] = 0  # a missing frame is left unwritten: it reads back as zeros
        np.testing.assert_array_equal(f["data"][()], expected)
        assert f["data"].compression is None and f["data"].chunks == (1, 8, 8)
        assert f["data"].id.get_num_chunks() == 5 and f["weights"].id.get_num_chunks() == 5


def test_master_is_replaced_not_modified(tmp_path, meta):
    """Each publication is a new inode: readers holding the old one are never disturbed."""
    path = tmp_path / "scan.ptyd"
    w = PtydWriter(path, meta=meta, chunk_frames=20)
    w.write_chunk(make_chunk(0, 0, 20))
    with h5py.File(path, "r") as held:  # a reader holding the master open, locking on
        inode = os.stat(path).st_ino
        w.write_chunk(make_chunk(1, 20, 20))
        assert os.stat(path).st_ino != inode
        assert list(held["chunks"].keys()) == ["0"]
    assert [c.key for c in open_ptyd(path).chunks] == [0, 1]


def test_master_appears_only_with_its_first_chunk(tmp_path, meta):
    path = tmp_path / "scan.ptyd"
    w = PtydWriter(path, meta=meta, chunk_frames=20)
    assert not path.exists()
    w.write_chunk(make_chunk(0, 0, 20))
    assert open_ptyd(path).chunks[0].key == 0


def test_missing_frames_recorded(tmp_path, meta):
    path = tmp_path / "scan.ptyd"
    with PtydWriter(path, meta=meta, chunk_frames=25) as w:
        w.write_chunk(make_chunk(0, 0, 25, missing=(3, 7)))
        w.write_chunk(make_chunk(1, 25, 25, missing=(49,)))
    ptyd = open_ptyd(path)
    assert ptyd.provenance["frames_missing"] == 3
    assert ptyd.provenance["missing_indices"] == [3, 7, 49]
    chunk = next(ptyd.iter_chunks())
    assert not chunk.weights[3].any() and chunk.weights[4].all()


def test_append_mode_is_one_file_published_at_the_end(tmp_path, meta):
    path = tmp_path / "scan.ptyd"
    w = PtydWriter(path, meta=meta, chunk_frames=20, save="append")
    w.write_chunk(make_chunk(0, 0, 20))
    assert not path.exists(), "append mode publishes only when the scan ends"
    w.write_chunk(make_chunk(1, 20, 20))
    w.write_chunk(make_chunk(2, 40, 10))
    w.close()
    assert [p.name for p in tmp_path.iterdir()] == ["scan.ptyd"]
    ptyd = open_ptyd(path)
    assert [c.file for c in ptyd.chunks] == [None, None, None]
    values = [int(frame[0, 0]) for _, frame, _, _ in ptyd.iter_frames()]
    assert values == list(range(50))


@pytest.mark.parametrize("compression", ["gzip", "lzf", "bitshuffle-lz4"])
def test_compression_round_trips(tmp_path, meta, compression):
    path = tmp_path / "scan.ptyd"
    write_scan(path, meta, compression=compression)
    values = [int(frame[3, 5]) for _, frame, _, _ in open_ptyd(path).iter_frames()]
    assert values == list(range(50))
    with h5py.File(tmp_path / "scan.ptyd.chunk00000", "r") as f:
        assert f["data"].compression is not None or f["data"]._filters


def test_chunks_out_of_order_are_refused(tmp_path, meta):
    w = PtydWriter(tmp_path / "scan.ptyd", meta=meta, chunk_frames=20)
    with pytest.raises(OutputError, match="out of order"):
        w.write_chunk(make_chunk(1, 20, 20))
    w.write_chunk(make_chunk(0, 0, 10))  # a short chunk ...
    with pytest.raises(OutputError, match="out of order|only the last"):
        w.write_chunk(make_chunk(1, 10, 20))  # ... may only be the last


def test_close_refuses_fewer_frames_than_num_frames(tmp_path, meta):
    w = PtydWriter(tmp_path / "scan.ptyd", meta=meta, chunk_frames=20)
    w.write_chunk(make_chunk(0, 0, 20))
    with pytest.raises(OutputError, match="20 frames written but meta/num_frames is 50"):
        w.close()


def test_exception_inside_publishes_aborted(tmp_path, meta):
    path = tmp_path / "scan.ptyd"
    with pytest.raises(RuntimeError):
        with PtydWriter(path, meta=meta, chunk_frames=20) as w:
            w.write_chunk(make_chunk(0, 0, 20))
            raise RuntimeError("detector died")
    ptyd = open_ptyd(path)
    assert ptyd.state == "aborted" and ptyd.n_frames == 20
    assert any(f.rule == "2-num-frames" for f in verify(path))


def test_existing_output_is_not_overwritten(tmp_path, meta):
    path = tmp_path / "scan.ptyd"
    path.write_bytes(b"precious")
    with pytest.raises(OutputError, match="exists already"):
        PtydWriter(path, meta=meta)
    assert path.read_bytes() == b"precious"


def test_full_disk_loses_nothing_already_written(tmp_path, meta):
    """A write that hits the size limit fails cleanly: published chunks and master intact,
    no temporary file left, a clear error naming the file."""
    script = textwrap.dedent(f"""
        import resource, signal, sys
        sys.path.insert(0, {str(os.path.dirname(__file__))!r})
        from ptyd_helpers import make_chunk
        from flyprep.ptyd import PtydWriter, ScanMeta
        from flyprep.errors import OutputError
        meta = ScanMeta(num_frames=400, shape=(64, 64), center=(32.0, 32.0))
        w = PtydWriter({str(tmp_path / 'scan.ptyd')!r}, meta=meta, chunk_frames=100)
        w.write_chunk(make_chunk(0, 0, 100, side=64))
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
        resource.setrlimit(resource.RLIMIT_FSIZE, (300_000, 300_000))
        try:
            w.write_chunk(make_chunk(1, 100, 100, side=64))
        except OutputError as exc:
            print("ERROR", exc)
    """)
    res = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=60)
    assert res.returncode == 0, res.stderr
    assert "ERROR" in res.stdout and "scan.ptyd.chunk00001" in res.stdout
    assert sorted(p.name for p in tmp_path.iterdir()) == ["scan.ptyd", "scan.ptyd.chunk00000"]
    ptyd = open_ptyd(tmp_path / "scan.ptyd")
    assert ptyd.n_frames == 100 and ptyd.state == "acquiring"


@pytest.mark.parametrize("save", ["link", "append"])
def test_output_files_get_the_configured_mode_and_group(tmp_path, meta, save):
    import grp
    import stat

    from flyprep.ptyd.writer import FileAccess

    group = grp.getgrgid(os.getgid()).gr_name
    path = tmp_path / "scan.ptyd"
    write_scan(path, meta, save=save, access=FileAccess(0o604, group))
    files = sorted(tmp_path.iterdir())
    assert len(files) == (4 if save == "link" else 1)
    for f in files:
        st = f.stat()
        assert stat.S_IMODE(st.st_mode) == 0o604 and st.st_gid == os.getgid(), f


def test_the_default_output_mode_is_0640_and_an_unknown_group_fails_the_chunk(tmp_path, meta):
    import stat

    from flyprep.ptyd.writer import FileAccess

    path = tmp_path / "a.ptyd"
    write_scan(path, meta)
    assert {stat.S_IMODE(f.stat().st_mode) for f in tmp_path.iterdir()} == {0o640}
    with pytest.raises(OutputError, match="no group named 'no-such-group-x'"):
        write_scan(tmp_path / "b.ptyd", meta, access=FileAccess(None, "no-such-group-x"))


def test_who_may_read_the_output_is_not_part_of_its_provenance():
    """An output's mode and group may change (or an upgrade add them) without making the
    chunks already written look mismatched on resume."""
    from flyprep.config import PrepareConfig
    from flyprep.pipeline.preparer import writer_params
    from flyprep.ptyd.format import params_hash

    plain = PrepareConfig()
    shared = PrepareConfig.model_validate({"output": {"file_mode": "0644", "group": "x"}})
    assert "file_mode" not in writer_params(plain, {})["output"]
    assert params_hash(writer_params(plain, {})) == params_hash(writer_params(shared, {}))
