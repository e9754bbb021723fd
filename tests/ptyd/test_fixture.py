"""PtyPy's own link-mode output (tests/data/ptyd, written by PtyPy 0.9) must read; the copied
test vectors in tests/data must equal the shared fixtures (SHA256SUMS)."""

import hashlib
import shutil
from pathlib import Path

import numpy as np

from flyprep.ptyd import open_ptyd, verify

DATA = Path(__file__).resolve().parents[1] / "data"


def test_fixture_reads_92_frames_in_5_chunks_with_ptypy_meta(fixture_ptyd):
    ptyd = open_ptyd(fixture_ptyd)
    assert [c.key for c in ptyd.chunks] == [0, 1, 2, 3, 4]
    assert [c.n_frames for c in ptyd.chunks] == [20, 20, 20, 20, 12]
    assert [c.file for c in ptyd.chunks] == [f"sample.ptyd.part00{k}" for k in range(5)]
    assert ptyd.n_frames == 92
    m = ptyd.meta
    assert m.num_frames == 92 and m.shape == (128, 128) and m.center == (64.0, 64.0)
    assert m.psize == (172e-6, 172e-6) and m.energy == 6.2 and m.distance == 7.0
    assert m.label is None and m.version == 0.1
    assert ptyd.state is None  # not written by flyprep


def test_fixture_frames_iterate_in_order_with_their_positions(fixture_ptyd):
    ptyd = open_ptyd(fixture_ptyd)
    frames = list(ptyd.iter_frames())
    assert [f[0] for f in frames] == list(range(92))
    chunks = list(ptyd.iter_chunks())
    assert [c.frame_start for c in chunks] == [0, 20, 40, 60, 80]
    stored = np.concatenate([c.indices for c in chunks])
    assert np.array_equal(stored, np.arange(92))
    first = frames[0]
    assert first[1].shape == (128, 128) and first[1].dtype == np.int32
    assert int(first[1].sum()) == 93896600  # the known content of PtyPy's frame 0
    assert np.allclose(frames[1][2], [0.0, 1.62769946e-06])
    assert first[3] is not None and first[3].shape == (128, 128)


def test_fixture_passes_verify_with_only_chunking_warnings(fixture_ptyd):
    findings = verify(fixture_ptyd)
    assert not [f for f in findings if f.level == "error"]
    assert {f.rule for f in findings} == {"9-hdf5-chunking"}


def listed_sums(root: Path) -> dict[str, str]:
    """``root/SHA256SUMS`` (sha256sum's format) as {relative file name: hex digest}."""
    sums = {}
    for line in (root / "SHA256SUMS").read_text().splitlines():
        if line.strip():
            digest, name = line.split(maxsplit=1)
            sums[name.lstrip("*")] = digest  # '*': sha256sum's binary-mode marker
    return sums


def checksum_mismatches(root: Path) -> list[str]:
    """Files listed in ``root/SHA256SUMS`` that are absent or differ from their digest."""
    return sorted(name for name, digest in listed_sums(root).items()
                  if not (root / name).is_file()
                  or hashlib.sha256((root / name).read_bytes()).hexdigest() != digest)


def test_test_vectors_equal_the_shared_fixtures():
    """tests/data/{apx,ptyd} are copies of the shared fixtures, whose SHA256SUMS is copied
    along: every copied file is listed and has the listed digest."""
    stored = sorted(str(p.relative_to(DATA)) for d in ("apx", "ptyd")
                    for p in (DATA / d).rglob("*") if p.is_file())
    assert sorted(listed_sums(DATA)) == stored
    assert checksum_mismatches(DATA) == []


def test_checksum_check_catches_a_changed_copy(tmp_path):
    copy = tmp_path / "data"
    shutil.copytree(DATA, copy, ignore=shutil.ignore_patterns("__pycache__"))
    assert checksum_mismatches(copy) == []
    with open(copy / "ptyd" / "sample.ptyd.part002", "r+b") as fh:
        fh.seek(5000)
        byte = fh.read(1)
        fh.seek(5000)
        fh.write(bytes([byte[0] ^ 1]))
    (copy / "apx" / "fixture.csv").unlink()
    assert checksum_mismatches(copy) == ["apx/fixture.csv", "ptyd/sample.ptyd.part002"]
