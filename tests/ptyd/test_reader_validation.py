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
