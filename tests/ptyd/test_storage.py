"""Frames written as finished HDF5 chunks are exactly what HDF5's own filters write."""

import h5py
import numpy as np
import pytest

from flyprep.ptyd.storage import DataStorage


@pytest.mark.parametrize("dtype", ["int32", "uint16", "float32"])
def test_bitshuffle_chunks_equal_hdf5_filter_output(tmp_path, dtype):
    pytest.importorskip("bitshuffle")
    rng = np.random.default_rng(1)
    frames = (rng.poisson(4, (5, 64, 48)) * (rng.random((5, 64, 48)) < 0.4)).astype(dtype)
    fast = DataStorage("bitshuffle-lz4")
    assert fast._bitshuffle is not None
    slow = DataStorage("bitshuffle-lz4")
    slow._bitshuffle = None  # HDF5 runs the plugin filter itself
    with h5py.File(tmp_path / "s.h5", "w") as f:
        a = fast.write(f, "fast", frames)
        b = slow.write(f, "slow", frames)
        assert a._filters == b._filters
        for i in range(5):
            assert a.id.read_direct_chunk((i, 0, 0)) == b.id.read_direct_chunk((i, 0, 0))
    with h5py.File(tmp_path / "s.h5", "r") as f:
        np.testing.assert_array_equal(f["fast"][()], frames)


def test_uncompressed_direct_chunks_read_back(tmp_path):
    frames = np.arange(2 * 3 * 4, dtype=np.int32).reshape(2, 3, 4)
    with h5py.File(tmp_path / "u.h5", "w") as f:
        d = DataStorage("none").write(f, "data", frames[:, :, :])
        assert d.chunks == (1, 3, 4) and d.compression is None
    with h5py.File(tmp_path / "u.h5", "r") as f:
        np.testing.assert_array_equal(f["data"][()], frames)


def test_unknown_compression_is_refused():
    from flyprep.errors import OutputError

    with pytest.raises(OutputError, match="unknown compression 'zip'"):
        DataStorage("zip")
