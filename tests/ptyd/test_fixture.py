"""PtyPy's own link-mode output (tests/data/ptyd, written by PtyPy 0.9) must read."""

import numpy as np

from flyprep.ptyd import open_ptyd, verify


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
