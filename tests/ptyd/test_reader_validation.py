"""The reader refuses broken files with one typed error naming file, HDF5 path and reason."""

import h5py
import numpy as np
import pytest

from flyprep.errors import PtydError
from flyprep.ptyd import PtydWriter, open_ptyd
from flyprep.ptyd.tags import write_tagged

from ptyd_helpers import make_chunk


def good_file(tmp_path, meta):
    path = tmp_path / "scan.ptyd"
    with PtydWriter(path, meta=meta, chunk_frames=25) as w:
        w.write_chunk(make_chunk(0, 0, 25))
        w.write_chunk(make_chunk(1, 25, 25))
    return path


def rewrite_meta(path, **changes):
    with h5py.File(path, "r+") as f:
        for key, value in changes.items():
            if key in f["meta"]:
                del f["meta"][key]
            if value is not ...:
                write_tagged(f["meta"], key, value)


def expect(path, h5path, reason):
    with pytest.raises(PtydError) as info:
        open_ptyd(path)
    err = info.value
    assert err.path == str(path) and err.h5path == h5path
    assert reason in err.reason
    assert str(path) in str(err) and h5path in str(err)


def test_untagged_meta_is_refused(tmp_path, meta):
    path = good_file(tmp_path, meta)
    with h5py.File(path, "r+") as f:
        del f["meta/energy"].attrs["type"]
    expect(path, "/meta/energy", "no 'type' attribute")


def test_num_frames_missing_none_or_float_is_refused(tmp_path, meta):
    path = good_file(tmp_path, meta)
    rewrite_meta(path, num_frames=None)
    expect(path, "/meta/num_frames", "missing or None")
    rewrite_meta(path, num_frames=...)
    expect(path, "/meta/num_frames", "missing or None")
    rewrite_meta(path, num_frames=np.float64(50.0))
    expect(path, "/meta/num_frames", "integer")


def test_non_square_shape_is_refused(tmp_path, meta):
    path = good_file(tmp_path, meta)
    rewrite_meta(path, shape=np.array([16, 32]))
    expect(path, "/meta/shape", "square")


def test_missing_groups_and_bad_keys(tmp_path, meta):
    path = good_file(tmp_path, meta)
    with h5py.File(path, "r+") as f:
        f["chunks"]["first"] = h5py.SoftLink("/chunks/0")
    expect(path, "/chunks/first", "integers")
    with h5py.File(path, "r+") as f:
        del f["chunks"]
    expect(path, "/chunks", "missing")
    with h5py.File(path, "r+") as f:
        del f["meta"]
    expect(path, "/meta", "missing")


def test_not_hdf5_and_absent(tmp_path):
    bad = tmp_path / "junk.ptyd"
    bad.write_bytes(b"not an hdf5 file at all")
    expect(bad, "/", "not a readable HDF5 file")
    expect(tmp_path / "absent.ptyd", "/", "not found")


def test_dangling_links_are_skipped_like_ptypy(tmp_path, meta):
    path = good_file(tmp_path, meta)
    with h5py.File(path, "r+") as f:
        f["chunks"]["2"] = h5py.ExternalLink("scan.ptyd.chunk00002", "/")
    ptyd = open_ptyd(path)
    assert [c.key for c in ptyd.chunks] == [0, 1] and ptyd.dangling == [2]
    assert ptyd.n_frames == 50


def test_chunk_with_wrong_positions_shape(tmp_path, meta):
    path = good_file(tmp_path, meta)
    with h5py.File(tmp_path / "scan.ptyd.chunk00001", "r+") as f:
        del f["positions"]
        f["positions"] = np.zeros((25, 3))
    ptyd = open_ptyd(path)
    with pytest.raises(PtydError, match=r"chunks/1/positions.*\(25, 3\)"):
        list(ptyd.iter_chunks())


# -- chunk files that exist but HDF5 cannot read --------------------------------------------

def truncate(path):
    size = path.stat().st_size
    with open(path, "r+b") as fh:
        fh.truncate(size // 2)


@pytest.mark.parametrize("key", [0, 1])
def test_existing_but_corrupt_chunk_file_is_refused_not_skipped(tmp_path, meta, key):
    path = good_file(tmp_path, meta)
    chunk = tmp_path / f"scan.ptyd.chunk{key:05d}"
    truncate(chunk)
    with pytest.raises(PtydError) as info:
        open_ptyd(path)
    err = info.value
    assert err.path == str(chunk) and err.h5path == "/"
    assert "chunk file is not readable HDF5" in err.reason and str(chunk) in str(err)


def test_garbage_at_a_declared_link_is_refused_a_missing_file_is_dangling(tmp_path, meta):
    path = good_file(tmp_path, meta)
    with h5py.File(path, "r+") as f:
        f["chunks"]["2"] = h5py.ExternalLink("scan.ptyd.chunk00002", "/")
    assert open_ptyd(path).dangling == [2]  # no file: a legal dangling link
    (tmp_path / "scan.ptyd.chunk00002").write_bytes(b"half a chunk")
    with pytest.raises(PtydError, match="chunk00002:/: chunk file is not readable HDF5"):
        open_ptyd(path)


def test_corrupt_chunk_is_found_next_to_the_master_from_any_directory(tmp_path, meta, monkeypatch):
    path = good_file(tmp_path, meta)
    truncate(tmp_path / "scan.ptyd.chunk00001")
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)
    with pytest.raises(PtydError) as info:
        open_ptyd(path)
    assert info.value.path == str(tmp_path / "scan.ptyd.chunk00001")


# -- gaps: a key before a resolved chunk that does not resolve ------------------------------

def refused_numbering(ptyd, keys):
    for numbering in (lambda: ptyd.n_frames, ptyd.iter_chunks, ptyd.iter_frames):
        with pytest.raises(PtydError) as info:
            numbering()  # refused at the call, before anything is iterated
        err = info.value
        assert err.path == str(ptyd.path) and err.h5path == "/chunks"
        assert keys in err.reason and "shift" in err.reason


def test_dangling_link_before_a_resolved_chunk_opens_but_frames_are_refused(tmp_path, meta):
    path = good_file(tmp_path, meta)
    (tmp_path / "scan.ptyd.chunk00000").unlink()
    ptyd = open_ptyd(path)  # opens, so that inspect and verify can report it
    assert ptyd.dangling == [0] and ptyd.gaps == [0] and [c.key for c in ptyd.chunks] == [1]
    refused_numbering(ptyd, "dangling links [0]")


def test_missing_key_before_a_resolved_chunk_is_a_gap_too(tmp_path, meta):
    path = good_file(tmp_path, meta)
    with h5py.File(path, "r+") as f:
        del f["chunks/0"]
    ptyd = open_ptyd(path)
    assert ptyd.gaps == [0] and ptyd.dangling == []
    refused_numbering(ptyd, "missing keys [0]")


def test_dangling_links_after_the_last_chunk_are_no_gap(tmp_path, meta):
    path = good_file(tmp_path, meta)
    with h5py.File(path, "r+") as f:
        f["chunks"]["2"] = h5py.ExternalLink("scan.ptyd.chunk00002", "/")
        f["chunks"]["3"] = h5py.ExternalLink("scan.ptyd.chunk00003", "/")
    ptyd = open_ptyd(path)
    assert ptyd.gaps == [] and ptyd.n_frames == 50
    assert [i for i, *_ in ptyd.iter_frames()] == list(range(50))


# -- meta values PtyPy cannot use -----------------------------------------------------------

@pytest.mark.parametrize("key, value, reason", [
    ("energy", np.float64(0.0), "greater than 0"),
    ("energy", np.float64(-6.2), "greater than 0"),
    ("energy", np.float64(np.inf), "finite"),
    ("energy", "6.2", "expected a number"),
    ("distance", np.float64(np.nan), "finite"),
    ("distance", np.float64(-1.0), "greater than 0"),
    ("psize", np.array([1e-4, 0.0]), "entry 1: Input should be greater than 0"),
    ("psize", np.array([np.inf, 1e-4]), "entry 0: Input should be a finite number"),
    ("psize", np.array([-1e-4]), "greater than 0"),
    ("center", np.array([np.nan, 8.0]), "entry 0: Input should be a finite number"),
    ("center", np.array([8.0, -np.inf]), "finite"),
    ("center", "middle", "expected numbers"),
])
def test_bad_geometry_values_are_refused(tmp_path, meta, key, value, reason):
    path = good_file(tmp_path, meta)
    rewrite_meta(path, **{key: value})
    expect(path, f"/meta/{key}", reason)


def test_absent_geometry_still_opens(tmp_path, meta):
    path = good_file(tmp_path, meta)
    rewrite_meta(path, energy=None, distance=..., psize=None, center=np.array([-3.0, 20.0]))
    m = open_ptyd(path).meta
    assert m.energy is None and m.distance is None and m.psize is None
    assert m.center == (-3.0, 20.0)  # a centre outside the frame is legal


# -- chunk data that does not match meta/shape -----------------------------------------------

@pytest.mark.parametrize("shape", [(25, 8, 8), (25, 16, 17), (25, 256), (25, 1, 16, 16)])
def test_chunk_data_must_be_frames_of_meta_shape(tmp_path, meta, shape):
    path = good_file(tmp_path, meta)
    with h5py.File(tmp_path / "scan.ptyd.chunk00001", "r+") as f:
        del f["data"]
        f["data"] = np.zeros(shape, np.int32)
    expect(path, "/chunks/1/data", f"shape {shape}, expected (n, 16, 16) from meta/shape (16, 16)")


def test_append_mode_chunk_data_is_checked_too(tmp_path, meta):
    path = tmp_path / "scan.ptyd"
    with h5py.File(path, "w") as f:
        write_tagged(f, "meta", {"num_frames": np.int64(4), "shape": np.array([16, 16]),
                                 "energy": np.float64(6.2)})
        chunks = f.create_group("chunks")
        chunks.attrs["type"] = "dict"
        chunks["0/data"] = np.zeros((4, 16, 8), np.int32)
        chunks["0/positions"] = np.zeros((4, 2))
    expect(path, "/chunks/0/data", "shape (4, 16, 8)")
