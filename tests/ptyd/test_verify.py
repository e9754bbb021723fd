"""`verify` reports each broken rule of the format; `flyprep verify` exits non-zero."""

import os

import h5py
import numpy as np

from flyprep.cli.main import main
from flyprep.ptyd import PtydWriter, verify
from flyprep.ptyd.tags import write_tagged

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


def test_missing_geometry_is_an_error(tmp_path, meta):
    path = scan(tmp_path, meta)
    with h5py.File(path, "r+") as f:
        del f["meta/energy"]
        del f["meta/psize"]
        write_tagged(f["meta"], "psize", None)
    findings = [f for f in verify(path) if f.level == "error"]
    assert [f.rule for f in findings] == ["meta-geometry"]
    assert findings[0].h5path == "/meta"
    assert findings[0].message.startswith("energy, psize missing or None")
    assert main(["verify", str(path)]) == 1


def test_unusable_geometry_value_is_a_geometry_error(tmp_path, meta):
    path = scan(tmp_path, meta)
    with h5py.File(path, "r+") as f:
        f["meta/distance"][()] = -7.0
    findings = verify(path)
    assert [(f.level, f.rule, f.h5path) for f in findings] == [
        ("error", "meta-geometry", "/meta/distance")]


def test_corrupt_chunk_file_is_an_error_naming_the_file(tmp_path, meta):
    path = scan(tmp_path, meta)
    last = tmp_path / "scan.ptyd.chunk00002"
    last.write_bytes(last.read_bytes()[:1000])
    findings = verify(path)
    assert [(f.level, f.rule, f.h5path) for f in findings] == [("error", "4-order", "/")]
    assert str(last) in findings[0].message and "not readable HDF5" in findings[0].message


def test_stale_chunk_files_beyond_the_last_link_warn(tmp_path, meta):
    path = scan(tmp_path, meta)
    chunk = (tmp_path / "scan.ptyd.chunk00002").read_bytes()
    for name in ("scan.ptyd.chunk00004", "scan.ptyd.chunk00003", "scan.ptyd.chunk00003.flyprep-tmp",
                 "scan.ptyd.chunkXYZ", "other.ptyd.chunk00005"):
        (tmp_path / name).write_bytes(chunk)
    findings = [f for f in verify(path) if f.rule == "stale-chunks"]
    assert [(f.level, f.h5path) for f in findings] == [("warning", "/chunks")]
    assert "['scan.ptyd.chunk00003', 'scan.ptyd.chunk00004']" in findings[0].message
    assert not [f for f in verify(path) if f.level == "error"]


def test_stale_chunks_use_the_first_links_name_pattern(fixture_ptyd, tmp_path):
    import shutil

    for src in fixture_ptyd.parent.iterdir():
        shutil.copy(src, tmp_path / src.name)
    master = tmp_path / fixture_ptyd.name
    assert "stale-chunks" not in {f.rule for f in verify(master)}
    shutil.copy(tmp_path / "sample.ptyd.part004", tmp_path / "sample.ptyd.part007")
    stale = [f for f in verify(master) if f.rule == "stale-chunks"]
    assert len(stale) == 1 and "sample.ptyd.part007" in stale[0].message


def test_links_declared_up_front_are_not_stale(tmp_path, meta):
    path = scan(tmp_path, meta)
    with h5py.File(path, "r+") as f:
        f["chunks"]["3"] = h5py.ExternalLink("scan.ptyd.chunk00003", "/")
    (tmp_path / "scan.ptyd.chunk00004").write_bytes(b"")
    findings = [f for f in verify(path) if f.rule == "stale-chunks"]
    assert len(findings) == 1 and "['scan.ptyd.chunk00004']" in findings[0].message


def test_while_acquiring_only_chunks_older_than_the_scan_are_stale(tmp_path, meta):
    path = scan(tmp_path, meta, chunks=((0, 0, 20),))
    first = tmp_path / "scan.ptyd.chunk00000"
    pending = tmp_path / "scan.ptyd.chunk00001"  # written, waiting for the next publication
    old = tmp_path / "scan.ptyd.chunk00002"  # from an earlier run
    pending.write_bytes(first.read_bytes())
    old.write_bytes(first.read_bytes())
    t = first.stat().st_mtime
    os.utime(pending, (t + 5, t + 5))
    os.utime(old, (t - 3600, t - 3600))
    findings = [f for f in verify(path) if f.rule == "stale-chunks"]
    assert len(findings) == 1 and "['scan.ptyd.chunk00002']" in findings[0].message
