"""A writer process publishing while a PtyPy-style reader process polls, locking on."""

import json
import os
import subprocess
import sys
from pathlib import Path

HERE = Path(__file__).parent


def _env() -> dict[str, str]:
    env = dict(os.environ)
    env.pop("HDF5_USE_FILE_LOCKING", None)  # HDF5's default: file locking on
    return env


def test_live_reader_sees_every_frame_once_in_place(tmp_path: Path) -> None:
    master = tmp_path / "live.ptyd"
    num_frames, chunk_frames = 1500, 15
    reader = subprocess.Popen(
        [sys.executable, str(HERE / "ptypy_poller.py"), str(master), "120"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=_env())
    writer = subprocess.run(
        [sys.executable, str(HERE / "live_writer.py"), str(master), str(num_frames),
         str(chunk_frames), "48"],
        capture_output=True, text=True, env=_env(), timeout=120)
    assert writer.returncode == 0, writer.stderr
    out, err = reader.communicate(timeout=150)
    assert reader.returncode == 0, err
    report = json.loads(out)

    assert report["n_errors"] == 0, report["errors"]
    assert report["num_frames"] == num_frames
    assert report["polls"] > 5, "the reader must really have polled while the writer wrote"
    seen = report["seen"]
    assert [s[0] for s in seen] == list(range(num_frames)), "every frame exactly once, in order"
    assert all(value == gi for gi, value, _, _ in seen), "each frame at its own global index"
    assert all(uniform for _, _, uniform, _ in seen), "no torn frame"
    assert all(abs(y - gi * 1e-6) < 1e-12 for gi, _, _, y in seen), "positions follow frames"
    assert not list(tmp_path.glob("*flyprep-tmp")), "no temporary file left behind"
