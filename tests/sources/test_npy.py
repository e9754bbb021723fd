"""read_npy: the same arrays and the same failures as np.load, for every kind of file."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import pytest

from flyprep.sources.npy import read_npy

CASES = [
    np.arange(256 * 256, dtype=np.int32).reshape(256, 256),
    np.arange(12, dtype=">u2").reshape(3, 4),  # big-endian
    np.linspace(0, 1, 30, dtype=np.float64).reshape(5, 6),
    np.asfortranarray(np.arange(20, dtype=np.int16).reshape(4, 5)),  # goes to np.load
    np.zeros((0, 7), np.uint8),
    np.arange(5, dtype=np.int64),
    np.array(3.5),
    np.zeros((2, 3), dtype=[("a", "<i4"), ("b", "<f8")]),
]


@pytest.mark.parametrize("arr", CASES, ids=lambda a: f"{a.dtype.str}{a.shape}")
def test_same_array_as_np_load(tmp_path: Path, arr: np.ndarray) -> None:
    path = tmp_path / "a.npy"
    np.save(path, arr)
    got = read_npy(path)
    want = np.load(path, allow_pickle=False)
    assert got.dtype == want.dtype and got.shape == want.shape
    np.testing.assert_array_equal(got, want)
    assert got.flags.writeable  # like np.load's result


@pytest.mark.parametrize("version", [(1, 0), (2, 0), (3, 0)])
def test_every_format_version(tmp_path: Path, version: tuple[int, int]) -> None:
    arr = np.arange(64, dtype=np.uint16).reshape(8, 8)
    buf = io.BytesIO()
    np.lib.format.write_array(buf, arr, version=version)
    path = tmp_path / "v.npy"
    path.write_bytes(buf.getvalue())
    np.testing.assert_array_equal(read_npy(path), arr)


def test_header_parsed_once_for_a_scan_of_frames(tmp_path: Path) -> None:
    from flyprep.sources import npy

    npy._parse_header.cache_clear()
    for i in range(20):
        np.save(tmp_path / f"f{i}.npy", np.full((16, 16), i, np.int32))
        assert read_npy(tmp_path / f"f{i}.npy")[0, 0] == i
    info = npy._parse_header.cache_info()
    assert (info.misses, info.hits) == (1, 19)


@pytest.mark.parametrize("cut", [0, 5, 60, 128, 1000])
def test_truncated_files_fail_like_np_load(tmp_path: Path, cut: int) -> None:
    path = tmp_path / "t.npy"
    np.save(path, np.arange(1024, dtype=np.int32))
    data = path.read_bytes()
    path.write_bytes(data[:cut])
    with pytest.raises((ValueError, OSError, EOFError)):
        np.load(path, allow_pickle=False)
    with pytest.raises((ValueError, OSError, EOFError)):
        read_npy(path)


def test_not_npy_and_missing_and_pickles(tmp_path: Path) -> None:
    (tmp_path / "junk.npy").write_bytes(b"not a numpy file at all" * 10)
    with pytest.raises(ValueError, match="not a .npy file") as err:
        read_npy(tmp_path / "junk.npy")
    assert "allow_pickle" not in str(err.value)  # numpy's advice is wrong for junk
    (tmp_path / "empty.npy").write_bytes(b"")
    with pytest.raises(ValueError, match="empty"):
        read_npy(tmp_path / "empty.npy")
    with pytest.raises(FileNotFoundError):
        read_npy(tmp_path / "absent.npy")
    np.save(tmp_path / "obj.npy", np.array([{"a": 1}], dtype=object), allow_pickle=True)
    with pytest.raises(ValueError, match="holds Python objects"):
        read_npy(tmp_path / "obj.npy")


def test_a_header_padded_to_an_odd_length_still_gives_an_aligned_array(tmp_path: Path) -> None:
    """Other writers may pad the header to any length; np.load's result is aligned."""
    arr = np.arange(48, dtype=np.float64).reshape(6, 8)
    header = "{'descr': '<f8', 'fortran_order': False, 'shape': (6, 8), }"
    header += " " * (61 - 10 - len(header)) + "\n"  # data at offset 61: not 8-aligned
    raw = b"\x93NUMPY\x01\x00" + len(header).to_bytes(2, "little") + header.encode() \
        + arr.tobytes()
    path = tmp_path / "odd.npy"
    path.write_bytes(raw)
    got = read_npy(path)
    np.testing.assert_array_equal(got, arr)
    assert got.flags.aligned


def test_a_file_larger_than_its_header_declares_is_refused_unread(tmp_path: Path) -> None:
    """A 2 GB sparse file behind a valid 128x128 header: refused, nothing allocated."""
    import tracemalloc

    path = tmp_path / "sparse.npy"
    np.save(path, np.zeros((128, 128), np.int32))
    with open(path, "r+b") as f:
        f.truncate(2 << 30)  # sparse: no disk used
    tracemalloc.start()
    try:
        with pytest.raises(ValueError, match=r"the file is 2147483648 bytes, its header "
                                             r"declares 65664"):
            read_npy(path)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < 1 << 20


def test_a_truncated_file_says_so_with_both_sizes(tmp_path: Path) -> None:
    path = tmp_path / "t.npy"
    np.save(path, np.zeros((16, 16), np.int32))
    path.write_bytes(path.read_bytes()[:-100])
    with pytest.raises(ValueError, match=r"truncated: the file is 1052 bytes, its header "
                                         r"declares 1152"):
        read_npy(path)


def test_header_alone_is_read_and_checked(tmp_path: Path) -> None:
    from flyprep.sources.npy import read_npy_header

    path = tmp_path / "h.npy"
    np.save(path, np.zeros((100, 100), np.uint16))
    header = read_npy_header(path)
    assert (header.shape, header.dtype, header.offset) == ((100, 100), np.dtype("<u2"), 128)
    with open(path, "ab") as f:
        f.write(b"x")
    with pytest.raises(ValueError, match="its header declares"):
        read_npy_header(path)
