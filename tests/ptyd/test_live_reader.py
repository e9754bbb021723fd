"""A writer process publishing while a PtyPy-style reader process polls, locking on."""

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

HERE = Path(__file__).parent


def _env() -> dict[str, str]:
    env = dict(os.environ)
    env.pop("HDF5_USE_FILE_LOCKING", None)  # HDF5's default: file locking on
    return env


@pytest.mark.parametrize("mode, missing_every", [("writer", None), ("run_scan", 97),
                                                 ("run_scan_parts", 97)])
def test_live_reader_sees_every_frame_once_in_place(tmp_path: Path, mode, missing_every) -> None:
    master = tmp_path / "live.ptyd"
    num_frames, chunk_frames = 1500, 15
    reader = subprocess.Popen(
        [sys.executable, str(HERE / "ptypy_poller.py"), str(master), "120"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=_env())
    ready = tmp_path / "live.ptyd.poller-ready"
    deadline = time.monotonic() + 60
    while not ready.exists():  # a loaded machine may take seconds to import h5py
        assert reader.poll() is None, reader.communicate()[1]
        assert time.monotonic() < deadline, "the poller never started"
        time.sleep(0.01)
    writer = subprocess.run(
        [sys.executable, str(HERE / "live_writer.py"), mode, str(master), str(num_frames),
         str(chunk_frames), "48"],
        capture_output=True, text=True, env=_env(), timeout=120)
    assert writer.returncode == 0, writer.stderr
    out, err = reader.communicate(timeout=150)
    assert reader.returncode == 0, err
    report = json.loads(out)

    assert report["n_errors"] == 0, report["errors"]
    assert report["num_frames"] == num_frames
    # One generation would mean the reader only met the finished file.
    assert len(report["generations"]) >= 2, "the reader must have seen the scan grow"
    seen = report["seen"]
    assert [s[0] for s in seen] == list(range(num_frames)), "every frame exactly once, in order"
    for gi, value, uniform, y, weighted in seen:
        missing = missing_every is not None and gi % missing_every == 5
        assert value == (0 if missing else gi + 1), f"frame {gi} at its own global index"
        assert weighted != missing, f"frame {gi}: zero weights exactly for missing frames"
        assert uniform, f"frame {gi} is not torn"
        assert abs(y - gi * 1e-6) < 1e-12, f"frame {gi} keeps its position"
    assert not list(tmp_path.glob("*flyprep-tmp")), "no temporary file left behind"
