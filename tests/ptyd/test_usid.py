"""The h5USID view of a prepared scan: USID's layout as pyUSID itself checks it, the frames
read through the virtual dataset exactly as in the .ptyd, a lost chunk file detected (not
read as zeros), --copy equal to the view, unfinished scans refused unless asked."""

from __future__ import annotations

import os
import warnings
from pathlib import Path

import h5py
import numpy as np
import pytest

from flyprep.cli.main import main
from flyprep.errors import OutputError, PtydError
from flyprep.prep.chunk import PreparedChunk
from flyprep.ptyd import PtydWriter, open_ptyd
from flyprep.ptyd.format import ScanMeta
from flyprep.ptyd.usid import DATA, WEIGHTS, check_usid, is_usid_view, plan_usid, write_usid

SIDE = 12
META = ScanMeta(num_frames=45, shape=(SIDE, SIDE), center=(5.5, 6.0), psize=(75e-6, 75e-6),
                energy=6.2, distance=7.0, label="usid test")
MISSING = (7, 30)


def chunk(key: int, start: int, n: int, rng: np.random.Generator) -> PreparedChunk:
    """Frames of distinct random pixels (so that any mix-up of pixels or frames shows)."""
    idx = np.arange(start, start + n)
    data = rng.integers(0, 1000, (n, SIDE, SIDE)).astype(np.int32)
    weights = rng.random((n, SIDE, SIDE)) > 0.1
    miss = np.isin(idx, MISSING)
    data[miss], weights[miss] = 0, False
    return PreparedChunk(key=key, frame_start=start, data=data, weights=weights,
                         positions=np.stack([np.sin(idx) * 1e-6, np.cos(idx) * 2e-6], 1),
                         missing=miss, sources=tuple(f"/det/f{i:05d}.h5" for i in idx))


def write_scan(path: Path, *, frames: int = 45, save: str = "link", close: bool = True) -> Path:
    rng = np.random.default_rng(3)
    writer = PtydWriter(path, meta=META, chunk_frames=20, save=save)
    for key, start in enumerate(range(0, frames, 20)):
        writer.write_chunk(chunk(key, start, min(20, frames - start), rng))
    if close:
        writer.close()
    else:
        writer.publish()
    return path


def frames_of(master: Path) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    data, weights, positions = [], [], []
    for c in open_ptyd(master).iter_chunks():
        data.append(c.data)
        weights.append(c.weights)
        positions.append(c.positions)
    return np.concatenate(data), np.concatenate(weights), np.concatenate(positions)


@pytest.mark.parametrize("save", ["link", "append"])
def test_the_view_reads_exactly_the_frames_of_the_ptyd(tmp_path: Path, save: str) -> None:
    master = write_scan(tmp_path / "scan.ptyd", save=save)
    (tmp_path / "view").mkdir()
    out = write_usid(plan_usid(master), tmp_path / "view" / "scan_usid.h5")
    data, weights, positions = frames_of(master)
    with h5py.File(out, "r") as f:
        main_data, main_weights = f[DATA], f[WEIGHTS]
        assert main_data.is_virtual and main_weights.is_virtual
        assert main_data.shape == (45, SIDE * SIDE) and main_data.dtype == data.dtype
        np.testing.assert_array_equal(main_data[()], data.reshape(45, -1))
        np.testing.assert_array_equal(main_weights[()], weights.reshape(45, -1))
        np.testing.assert_array_equal(f[main_data.attrs["Position_Values"]][()],
                                      positions.astype(np.float32))
        measurement = f["Measurement_000"]
        assert measurement.attrs["source"] == str(master.absolute())
        assert list(measurement.attrs["missing_indices"]) == list(MISSING)
        assert measurement.attrs["flyprep_version"] and measurement.attrs["machine_id"]
    assert check_usid(out) == [] and is_usid_view(out) and not is_usid_view(master)
    assert not [p for p in out.parent.iterdir() if p.name != out.name]  # no temporary left


def test_pyusid_takes_both_main_datasets_and_their_sparse_positions(tmp_path: Path) -> None:
    """Positions off any grid: USID's layout for sparse sampling (each index column counts
    the frames, the values are the positions). pyUSID opens it, its values are the scan's,
    and it says it has no N-dimensional form (it cannot reshape sparse positions)."""
    hdf_utils = pytest.importorskip("pyUSID.io.hdf_utils")
    import dask
    from pyUSID import USIDataset

    master = write_scan(tmp_path / "scan.ptyd")
    out = write_usid(plan_usid(master), tmp_path / "scan_usid.h5")
    data, weights, positions = frames_of(master)
    with h5py.File(out, "r") as f, warnings.catch_warnings(), \
            dask.config.set(scheduler="synchronous"):
        warnings.simplefilter("ignore")  # "does not have an N-dimensional form"
        for name in (DATA, WEIGHTS):
            assert hdf_utils.check_if_main(f[name], verbose=True), name
        main = USIDataset(f[DATA])
        assert main.pos_dim_labels == ["Y", "X"] and main.spec_dim_labels == ["Column", "Row"]
        assert main.data_descriptor == "Intensity (counts)"
        for column, label in enumerate(("Y", "X")):
            np.testing.assert_array_equal(main.get_pos_values(label),
                                          positions[:, column].astype(np.float32))
        np.testing.assert_array_equal(np.asarray(main[()]), data.reshape(45, -1))
        np.testing.assert_array_equal(USIDataset(f[WEIGHTS])[()], weights.reshape(45, -1))
        np.testing.assert_array_equal(main.get_spec_values("Column"),
                                      ((np.arange(SIDE) - 6.0) * 75e-6).astype(np.float32))
        with pytest.raises(ValueError, match="dependent dimensions"):
            main.get_n_dim_form()


def test_a_raster_scan_has_an_n_dimensional_form_in_pyusid(tmp_path: Path) -> None:
    """Positions on a 5 x 9 raster, x fastest: grid indices, and pyUSID's N-dimensional
    form (fastest first: X, Y, Column, Row) holds the frames where they belong."""
    pytest.importorskip("pyUSID")
    import dask
    from pyUSID import USIDataset

    rng = np.random.default_rng(5)
    frame = np.arange(45)
    y, x = (frame // 9) * 1e-6, (frame % 9) * 2e-6
    writer = PtydWriter(tmp_path / "grid.ptyd", meta=META, chunk_frames=20)
    for key, start in enumerate(range(0, 45, 20)):
        n, part = min(20, 45 - start), slice(start, start + 20)
        writer.write_chunk(PreparedChunk(
            key=key, frame_start=start, data=rng.integers(0, 99, (n, SIDE, SIDE)).astype(
                np.int32), weights=np.ones((n, SIDE, SIDE), bool),
            positions=np.stack([y[part], x[part]], 1), missing=np.zeros(n, bool),
            sources=("f",) * n))
    writer.close()
    out = write_usid(plan_usid(tmp_path / "grid.ptyd"), tmp_path / "grid_usid.h5")
    data, _, _ = frames_of(tmp_path / "grid.ptyd")
    with h5py.File(out, "r") as f, dask.config.set(scheduler="synchronous"):
        main = USIDataset(f[DATA])  # dask's own thread pool would outlive the test
        assert main.n_dim_labels == ["X", "Y", "Column", "Row"]
        assert list(main.pos_dim_sizes) == [9, 5]
        np.testing.assert_array_equal(main.get_n_dim_form(),
                                      data.reshape(5, 9, SIDE, SIDE).transpose(1, 0, 3, 2))
        np.testing.assert_allclose(main.get_pos_values("X"), x[:9], rtol=1e-6)
        np.testing.assert_allclose(main.get_pos_values("Y"), y[::9], rtol=1e-6)


def test_a_lost_chunk_file_is_told_not_read_as_zeros(tmp_path: Path) -> None:
    master = write_scan(tmp_path / "scan.ptyd")
    out = write_usid(plan_usid(master), tmp_path / "scan_usid.h5")
    (tmp_path / "scan.ptyd.chunk00001").rename(tmp_path / "elsewhere")
    findings = check_usid(out)
    assert {f.level for f in findings} == {"error"} and len(findings) == 2  # data, weights
    assert "scan.ptyd.chunk00001: the file is gone: frames 20-39 would read as zeros" in \
        str(findings[0])
    assert main(["verify", str(out)]) == 1
    with pytest.raises(PtydError, match=r"dangling links \[1\] lie before resolved chunks"):
        write_usid(plan_usid(master), tmp_path / "again_usid.h5")
    assert not (tmp_path / "again_usid.h5").exists()


def test_copy_equals_the_view_and_stands_alone(tmp_path: Path) -> None:
    master = write_scan(tmp_path / "scan.ptyd")
    view = write_usid(plan_usid(master), tmp_path / "view_usid.h5")
    copy = tmp_path / "copy_usid.h5"
    assert main(["export-usid", str(master), "-o", str(copy), "--copy"]) == 0
    with h5py.File(copy, "r") as c, h5py.File(view, "r") as v:
        for name in (DATA, WEIGHTS):
            np.testing.assert_array_equal(c[name][()], v[name][()])
    for chunk_file in tmp_path.glob("scan.ptyd.chunk*"):
        chunk_file.unlink()
    with h5py.File(copy, "r") as c, h5py.File(view, "r") as v:
        assert not c[DATA].is_virtual
        for name in (DATA, WEIGHTS):
            for label in ("Position_Indices", "Position_Values", "Spectroscopic_Indices",
                          "Spectroscopic_Values"):
                np.testing.assert_array_equal(c[c[name].attrs[label]][()],
                                              v[v[name].attrs[label]][()])
    assert check_usid(copy) == [] and main(["verify", str(copy)]) == 0
    assert main(["verify", str(view)]) == 1  # its chunk files are gone


def test_a_scan_still_acquiring_is_refused_unless_asked(tmp_path: Path) -> None:
    master = write_scan(tmp_path / "scan.ptyd", frames=40, close=False)
    plan = plan_usid(master)
    assert plan.state == "acquiring" and plan.n_frames == 40
    with pytest.raises(OutputError, match=r"still acquiring: frames 40-44 of 45 are not "
                                          r"written yet \(export it anyway with "
                                          r"--allow-incomplete\)"):
        write_usid(plan, tmp_path / "scan_usid.h5")
    assert main(["export-usid", str(master)]) == 3
    assert main(["export-usid", str(master), "--allow-incomplete"]) == 0
    out = tmp_path / "scan_usid.h5"
    with h5py.File(out, "r") as f:
        assert f[DATA].shape == (40, SIDE * SIDE)
    findings = check_usid(out)
    assert [f.level for f in findings] == ["warning"] and "acquiring" in str(findings[0])


def test_the_view_resolves_its_chunks_from_any_working_directory(tmp_path: Path,
                                                                 monkeypatch: pytest.MonkeyPatch
                                                                 ) -> None:
    for name in ("data", "views"):
        (tmp_path / name).mkdir()
    master = write_scan(tmp_path / "data" / "scan.ptyd")
    out = write_usid(plan_usid(master), tmp_path / "views" / "scan_usid.h5")
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)
    data, _, _ = frames_of(master)
    with h5py.File(os.path.relpath(out, elsewhere), "r") as f:
        np.testing.assert_array_equal(f[DATA][()], data.reshape(45, -1))
    assert check_usid(out) == []
