"""`verify` reports each broken rule of the format; `flyprep verify` exits non-zero."""

import h5py
import numpy as np

from flyprep.cli import main
from flyprep.ptyd import PtydWriter, verify

from ptyd_helpers import make_chunk


def scan(tmp_path, meta, chunks=((0, 0, 20), (1, 20, 20), (2, 40, 10))):
    path = tmp_path / "scan.ptyd"
    w = PtydWriter(path, meta=meta, chunk_frames=20)
    for key, start, n in chunks:
        w.write_chunk(make_chunk(key, start, n))
    if sum(c[2] for c in chunks) == meta.num_frames:
        w.close()
    return path


def rules(path):
    return {f.rule for f in verify(path) if f.level == "error"}


def test_good_file_has_no_findings(tmp_path, meta):
    assert verify(scan(tmp_path, meta)) == []


def test_missing_middle_chunk_is_an_ordering_error(tmp_path, meta):
    path = scan(tmp_path, meta)
    (tmp_path / "scan.ptyd.chunk00001").unlink()
    findings = [f for f in verify(path) if f.level == "error"]
    assert {f.rule for f in findings} >= {"4-order", "2-num-frames"}
    assert any("gaps" in f.message or "shift" in f.message for f in findings)
    assert main(["verify", str(path)]) == 1


def test_missing_first_chunk(tmp_path, meta):
    path = scan(tmp_path, meta)
    (tmp_path / "scan.ptyd.chunk00000").unlink()
    assert "3-first-chunk" in rules(path)


def test_untagged_meta(tmp_path, meta):
    path = scan(tmp_path, meta)
    with h5py.File(path, "r+") as f:
        del f["meta/num_frames"].attrs["type"]
    assert rules(path) == {"1-type-tags"}


def test_chunk_with_different_datasets(tmp_path, meta):
    path = scan(tmp_path, meta)
    with h5py.File(tmp_path / "scan.ptyd.chunk00002", "r+") as f:
        del f["weights"]
    assert "4-same-datasets" in rules(path)


def test_wrong_frame_shape_and_indices(tmp_path, meta):
    path = scan(tmp_path, meta)
    with h5py.File(tmp_path / "scan.ptyd.chunk00001", "r+") as f:
        f["indices"][0] = 999
    assert "4-order" in rules(path)
    with h5py.File(tmp_path / "scan.ptyd.chunk00002", "r+") as f:
        del f["data"]
        f["data"] = np.zeros((10, 8, 8), np.int32)
    assert "layout" in rules(path)


def test_more_frames_than_num_frames(tmp_path, meta):
    path = scan(tmp_path, meta)
    with h5py.File(path, "r+") as f:
        f["meta/num_frames"][()] = 30
    assert "2-num-frames" in rules(path)


def test_non_bare_links_and_leftovers_warn(tmp_path, meta):
    path = scan(tmp_path, meta)
    with h5py.File(path, "r+") as f:
        del f["chunks/2"]
        f["chunks/2"] = h5py.ExternalLink(str(tmp_path / "scan.ptyd.chunk00002"), "/")
    (tmp_path / "scan.ptyd.chunk00003.flyprep-tmp").write_bytes(b"")
    warnings = {f.rule for f in verify(path) if f.level == "warning"}
    assert warnings == {"6-bare-links", "7-atomic-writes"}
    assert main(["verify", str(path)]) == 0


def test_unfinished_scan_is_fine_until_it_claims_completion(tmp_path, meta):
    path = scan(tmp_path, meta, chunks=((0, 0, 20),))
    assert rules(path) == set()
