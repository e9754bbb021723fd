"""The daemon in-process (real watcher, files, writer; events into memory): how scans end,
frames that never come, settings, limits, restarts, AstroPix files."""

from __future__ import annotations

import io
import json
import time
from pathlib import Path

import h5py
import numpy as np
from daemon_helpers import master_state, wait_for

from flyprep.events import ApxReadouts, ChunkWritten, FrameMissing, ScanEnded
from flyprep.ptyd.reader import open_ptyd
from flyprep.sim.simulate import simulate_scan
from flyprep.cli.status import print_status


def _ptypy_scan(scan_dir: Path, n: int, *, skip: set[int] = frozenset(), num_frames: int | None = None,
                marker: bool = False, side: int = 64) -> None:
    """A PtyPy-layout scan written by hand (frames in ``skip`` are never written)."""
    (scan_dir / "ccd").mkdir(parents=True)
    if num_frames is not None:
        (scan_dir / "flyprep-scan.toml").write_text(f"num_frames = {num_frames}\n")
    rng = np.random.default_rng(0)
    with open(scan_dir / "positions.txt", "w") as pos:
        for i in range(n):
            if i not in skip:
                np.save(scan_dir / f"ccd/f_{i:03d}.npy", rng.poisson(3, (side, side)).astype(np.int32))
            pos.write(f"ccd/f_{i:03d}.npy {i * 1e-7:.6e} {i * 2e-7:.6e}\n")
    if marker:
        (scan_dir / "flyprep-scan.done").touch()


def test_a_frame_that_never_comes_is_missing_after_the_frame_timeout(inprocess_daemon, daemon_dirs):
    root, out, _ = daemon_dirs
    with inprocess_daemon(watch={"frame_timeout_s": 1.0, "quiet_window_s": 0.2}) as d:
        _ptypy_scan(root / "scan_gap", 50, skip={5}, num_frames=50)
        d.wait_state("scan_gap", ("complete",))
        missing = d.sink.of_kind(FrameMissing)
        assert [(e.index, e.scan) for e in missing] == [(5, "scan_gap")]
        assert "not finished within 1 s" in missing[0].reason
        assert missing[0].path.endswith("ccd/f_005.npy")
    f = open_ptyd(out / "scan_gap.ptyd")
    chunk = next(f.iter_chunks())
    assert not chunk.weights[5].any() and chunk.weights[6].all()
    assert chunk.positions[5].tolist() == [5e-7, 1e-6]  # its position from the file
    assert f.state == "complete"


def test_inactivity_ends_the_scan_aborted_and_readers_still_reach_the_end(inprocess_daemon,
                                                                         daemon_dirs):
    root, out, _ = daemon_dirs
    with inprocess_daemon(watch={"inactivity_timeout_s": 1.0}) as d:
        _ptypy_scan(root / "scan_idle", 30, num_frames=70)
        info = d.wait_state("scan_idle", ("aborted",))
        assert info["end_reason"] == "no new file for 1 s"
        # scan.ended is emitted just after the state is set (the status may say aborted first)
        ended = wait_for(lambda: d.sink.of_kind(ScanEnded), 10, "scan.ended")
        assert ended[0].state == "aborted" and ended[0].frames_missing == 40
    f = open_ptyd(out / "scan_idle.ptyd")
    assert f.state == "aborted" and f.n_frames == 70 == f.meta.num_frames
    weights = np.concatenate([c.weights for c in f.iter_chunks()])
    assert weights[:30].reshape(30, -1).all(axis=1).all() and not weights[30:].any()


def test_a_scan_without_a_frame_count_fails_clearly_and_the_daemon_goes_on(inprocess_daemon,
                                                                          daemon_dirs):
    root, out, _ = daemon_dirs
    with inprocess_daemon() as d:
        _ptypy_scan(root / "scan_nocount", 10, marker=True)
        info = d.wait_state("scan_nocount", ("failed",))
        assert "number of frames was known" in info["error"]
        shown = io.StringIO()
        print_status(d.daemon.status(), endpoint="x", file=shown)
        assert "  scan_nocount: failed" in shown.getvalue()
        assert "    error: " in shown.getvalue() and "num_frames in flyprep-scan.toml" in shown.getvalue()
        assert "num_frames in flyprep-scan.toml" in info["error"]
        assert not (out / "scan_nocount.ptyd").exists()
        _ptypy_scan(root / "scan_ok", 10, num_frames=10, marker=True)
        d.wait_state("scan_ok", ("complete",))


def test_a_bad_scan_file_fails_that_scan_naming_file_and_key(inprocess_daemon, daemon_dirs):
    root, _, _ = daemon_dirs
    staging = root.parent / "staging" / "scan_badtoml"
    _ptypy_scan(staging, 5, marker=True)
    (staging / "flyprep-scan.toml").write_text("num_frames = -3\n")
    with inprocess_daemon() as d:
        staging.rename(root / "scan_badtoml")
        info = d.wait_state("scan_badtoml", ("failed",))
        assert "flyprep-scan.toml" in info["error"] and "num_frames = -3" in info["error"]


def test_hdf5_frames_with_their_own_positions(inprocess_daemon, daemon_dirs):
    root, out, _ = daemon_dirs
    with inprocess_daemon(watch={"positions_file": ""},
                          input={"positions_dataset": "/entry/positions"}) as d:
        scan = root / "scan_perframe"
        scan.mkdir()
        (scan / "flyprep-scan.toml").write_text("num_frames = 25\n")
        rng = np.random.default_rng(1)
        for k in range(5):  # 5 stacks of 5 frames, each with its positions
            with h5py.File(scan / f"data_{k:03d}.h5", "w") as f:
                f["/entry/data/data"] = rng.poisson(2, (5, 64, 64)).astype(np.uint16)
                f["/entry/positions"] = np.arange(10 * k, 10 * k + 10, dtype=float).reshape(5, 2)
        (scan / "flyprep-scan.done").touch()
        d.wait_state("scan_perframe", ("complete",))
    f = open_ptyd(out / "scan_perframe.ptyd")
    positions = np.concatenate([c.positions for c in f.iter_chunks()])
    np.testing.assert_array_equal(positions, np.arange(50, dtype=float).reshape(25, 2))


def test_scans_beyond_max_scans_wait_their_turn(inprocess_daemon, daemon_dirs):
    root, out, _ = daemon_dirs
    with inprocess_daemon(limits={"max_scans": 1}, watch={"inactivity_timeout_s": 30}) as d:
        _ptypy_scan(root / "scan_1", 20, num_frames=40)  # stays open: half its frames
        wait_for(lambda: (s := d.scan("scan_1")) and s["frames_done"] == 20, 20, "scan_1 taking")
        _ptypy_scan(root / "scan_2", 10, num_frames=10, marker=True)
        d.wait_state("scan_2", ("queued",), timeout_s=10)  # has files, no free slot
        time.sleep(0.3)
        assert d.scan("scan_2")["state"] == "queued" and d.scan("scan_1")["state"] == "acquiring"
        (root / "scan_1" / "flyprep-scan.done").touch()
        d.wait_state("scan_1", ("complete",))
        d.wait_state("scan_2", ("complete",))
    assert master_state(out / "scan_2.ptyd") == "complete"


def test_a_restart_leaves_finished_scans_alone_and_moves_aside_chunks_of_other_settings(
        inprocess_daemon, daemon_dirs):
    root, out, _ = daemon_dirs
    _ptypy_scan(root / "scan_done", 30, num_frames=30, marker=True)
    _ptypy_scan(root / "scan_open", 45, num_frames=90)
    with inprocess_daemon() as d:
        d.wait_state("scan_done", ("complete",))
        wait_for(lambda: master_state(out / "scan_open.ptyd") == "acquiring", 20, "scan_open")
        wait_for(lambda: d.scan("scan_open")["frames_written"] == 40, 20, "a whole chunk")
    done_before = (out / "scan_done.ptyd").stat().st_mtime_ns
    # Restart with another ROI: the kept chunks no longer fit and are moved aside.
    with inprocess_daemon(prep={"shape": 32}) as d:
        info = d.wait_state("scan_done", ("complete",))
        assert info["end_reason"] == "finished before this start"
        for i in range(45, 90):
            np.save(root / "scan_open" / f"ccd/f_{i:03d}.npy", np.ones((64, 64), np.int32))
        with open(root / "scan_open" / "positions.txt", "a") as pos:
            pos.writelines(f"ccd/f_{i:03d}.npy 0 0\n" for i in range(45, 90))
        (root / "scan_open" / "flyprep-scan.done").touch()
        d.wait_state("scan_open", ("complete",))
    assert (out / "scan_done.ptyd").stat().st_mtime_ns == done_before
    f = open_ptyd(out / "scan_open.ptyd")
    assert f.meta.shape == (32, 32) and f.n_frames == 90
    assert any(".orphaned-" in p.name for p in out.iterdir())


def test_apx_files_are_followed_and_their_readouts_reported(inprocess_daemon, daemon_dirs):
    root, _, _ = daemon_dirs
    with inprocess_daemon(apx={"follow": True}) as d:
        seen_while_written: list[int] = []

        def on_frame(i: int) -> None:  # the .apx is closed only after the last frame
            if i == 119:
                seen_while_written.append(sum(e.n_readouts for e in d.sink.of_kind(ApxReadouts)))

        result = simulate_scan(root / "scan_apx", num_frames=120, frame_side=64, rate_hz=100,
                               apx=True, readouts_per_frame=25, on_frame=on_frame)
        assert seen_while_written[0] > 1000  # streamed while the DAQ was still writing
        d.wait_state("scan_apx", ("complete",))
        batches = wait_for(
            lambda: (b := d.sink.of_kind(ApxReadouts)) and
            sum(e.n_readouts for e in b) == result.apx_records and b, 20, "all readouts")
        ids = [(e.first_readout, e.last_readout) for e in batches]
        assert ids[0][0] == 0 and ids[-1][1] == result.apx_records - 1
        assert all(a[1] + 1 == b[0] for a, b in zip(ids, ids[1:]))  # none twice, none lost
        assert all(e.scan == "scan_apx" for e in batches)
        files = wait_for(lambda: [f["state"] for f in d.daemon.status()["apx"]["files"].values()]
                         == ["finished"], 20, "the .apx file finished with its scan")
        assert files


def test_chunk_events_carry_latency_and_status_shows_progress(inprocess_daemon, daemon_dirs):
    root, _, _ = daemon_dirs
    with inprocess_daemon() as d:
        simulate_scan(root / "scan_ev", num_frames=100, frame_side=64, rate_hz=0)
        d.wait_state("scan_ev", ("complete",))
        chunks = d.sink.of_kind(ChunkWritten)
        assert [(c.key, c.frame_start, c.n_frames) for c in chunks] == [(0, 0, 40), (1, 40, 40),
                                                                      (2, 80, 20)]
        assert all(c.latency_s is not None and 0 <= c.latency_s < 30 for c in chunks)
        status = d.daemon.status()
        json.dumps(status)  # what the control socket sends
        scan = d.scan("scan_ev")
        assert scan["frames_written"] == 100 and scan["chunks_written"] == 3
        assert status["uptime_s"] > 0 and time.time() > 0


def test_the_polling_observer_for_network_file_systems(inprocess_daemon, daemon_dirs):
    root, out, _ = daemon_dirs
    with inprocess_daemon(watch={"observer": "polling", "poll_interval_s": 0.1,
                                 "quiet_window_s": 0.3, "frame_timeout_s": 30}) as d:
        result = simulate_scan(root / "scan_nfs", layout="hdf5", num_frames=60, frame_side=64,
                               rate_hz=300, frames_per_file=20)
        d.wait_state("scan_nfs", ("complete",))
        assert d.scan("scan_nfs")["frames_missing"] == 0
    f = open_ptyd(out / "scan_nfs.ptyd")
    assert f.n_frames == result.frames_written == 60


def test_an_output_directory_inside_a_watched_root_is_not_a_scan(inprocess_daemon, daemon_dirs):
    root, _, _ = daemon_dirs
    with inprocess_daemon(output={"directory": str(root / "prepared")}) as d:
        _ptypy_scan(root / "scan_in", 10, num_frames=10, marker=True)
        d.wait_state("scan_in", ("complete",))
        assert (root / "prepared" / "scan_in.ptyd").exists()
        time.sleep(0.3)  # the output's own files were seen by the watcher meanwhile
        assert [s["scan"] for s in d.daemon.status()["scans"]] == ["scan_in"]


# -- found by review: each of these was a real failure ---------------------------------------


def test_at_the_end_every_finished_frame_is_still_prepared_only_gaps_are_missing(
        inprocess_daemon, daemon_dirs):
    root, out, _ = daemon_dirs
    with inprocess_daemon() as d:  # frame_timeout_s 60: frame 5 is not timed out
        _ptypy_scan(root / "scan_endgap", 50, skip={5, 6, 30}, num_frames=60, marker=True)
        info = d.wait_state("scan_endgap", ("complete",))
        assert info["frames_missing"] == 13  # 5, 6, 30 and 50..59
        missing = [(e.index, e.count) for e in d.sink.of_kind(FrameMissing)]
        assert missing == [(5, 2), (30, 1), (50, 10)]  # runs, one event each
    weights = np.concatenate([c.weights for c in open_ptyd(out / "scan_endgap.ptyd").iter_chunks()])
    has = weights.reshape(60, -1).any(axis=1)
    assert np.flatnonzero(~has).tolist() == [5, 6, 30, *range(50, 60)]


def test_a_restart_after_the_last_chunk_but_before_the_final_master_finishes_it(
        inprocess_daemon, daemon_dirs):
    root, out, _ = daemon_dirs
    _ptypy_scan(root / "scan_last", 50, num_frames=50)  # 40 + 10: the last chunk is short
    with inprocess_daemon() as d:
        d.wait_state("scan_last", ("complete",))
    # As if the daemon died after the last chunk file, before any later master: every
    # chunk is on disk, no final master.
    (out / "scan_last.ptyd").unlink()
    with inprocess_daemon() as d:
        info = d.wait_state("scan_last", ("complete",))
        assert info["resumed_at_frame"] == 50
    f = open_ptyd(out / "scan_last.ptyd")
    assert f.state == "complete" and f.n_frames == 50


def test_a_malformed_hdf5_frame_file_is_quarantined_not_fatal(inprocess_daemon, daemon_dirs):
    root, out, _ = daemon_dirs
    staging = root.parent / "staging" / "scan_group"
    staging.mkdir(parents=True)
    # the detector writes 5 frames per file: said, so that d_2's range is certain
    (staging / "flyprep-scan.toml").write_text("num_frames = 20\nframes_per_file = 5\n")
    (staging / "positions.txt").write_text("".join(f"{i} {i}\n" for i in range(20)))
    for k in range(4):
        with h5py.File(staging / f"d_{k}.h5", "w") as f:
            if k == 2:
                f.create_group("/entry/data/data")  # a group where the frames should be
            else:
                f["/entry/data/data"] = np.ones((5, 64, 64), np.uint16)
    (staging / "flyprep-scan.done").touch()
    with inprocess_daemon() as d:
        staging.rename(root / "scan_group")
        info = d.wait_state("scan_group", ("complete",))
        assert info["frames_failed"] == 5 and info["error"] is None
    listed = (root / "scan_group" / "flyprep-quarantine" / "quarantine.jsonl").read_text()
    assert "d_2.h5" in listed and "'/entry/data/data' is not a dataset" in listed
    weights = np.concatenate([c.weights for c in open_ptyd(out / "scan_group.ptyd").iter_chunks()])
    assert np.flatnonzero(~weights.reshape(20, -1).any(axis=1)).tolist() == list(range(10, 15))


def test_same_named_scans_in_two_roots_never_share_an_output(tmp_path, daemon_dirs):
    from daemon_helpers import InProcessDaemon, daemon_settings

    root, out, sockets = daemon_dirs
    other = tmp_path / "root2"
    other.mkdir()
    data = daemon_settings(root, out, sockets)
    data["watch"]["roots"] = [str(root), str(other)]
    with InProcessDaemon(data) as d:
        _ptypy_scan(root / "scan_0042", 30, num_frames=60)  # stays open
        wait_for(lambda: (s := d.scan("scan_0042")) and s["state"] == "acquiring", 20, "first")
        _ptypy_scan(other / "scan_0042", 10, num_frames=10, marker=True)
        failed = wait_for(lambda: [s for s in d.daemon.status()["scans"]
                                   if s["state"] == "failed"], 20, "the second refused")
        assert failed[0]["directory"] == str(other / "scan_0042")
        assert "already being written by another scan" in failed[0]["error"]
        assert "{root}" in failed[0]["error"]
    data["output"]["name"] = "{root}-{scan}.ptyd"
    with InProcessDaemon(data) as d:
        (other / "scan_0042" / "flyprep-scan.done").touch()
        wait_for(lambda: master_state(out / "root2-scan_0042.ptyd") == "complete", 20, "named")


def test_a_whole_chunk_is_written_without_waiting_for_the_next_frame(inprocess_daemon,
                                                                    daemon_dirs):
    root, out, _ = daemon_dirs
    with inprocess_daemon() as d:
        _ptypy_scan(root / "scan_pause", 40, num_frames=80)  # exactly one chunk, then a pause
        wait_for(lambda: (s := d.scan("scan_pause")) and s["chunks_written"] == 1, 10,
                 "the first chunk during the pause")
        assert open_ptyd(out / "scan_pause.ptyd").n_frames == 40


def test_shutdown_does_not_wait_for_scans_still_waiting_for_their_settings(inprocess_daemon,
                                                                          daemon_dirs):
    root, _, _ = daemon_dirs
    d = inprocess_daemon()
    with d:
        _ptypy_scan(root / "scan_nocount2", 3)  # no num_frames anywhere: it waits
        wait_for(lambda: (s := d.scan("scan_nocount2")) and s["files_seen"] > 0, 10, "seen")
        t0 = time.monotonic()
    assert time.monotonic() - t0 < 5
    session = d.daemon._sessions[root / "scan_nocount2"]
    assert not session.alive and session.state.value == "stopped"


def test_directories_without_scan_files_take_no_slot(inprocess_daemon, daemon_dirs):
    root, _, _ = daemon_dirs
    with inprocess_daemon(limits={"max_scans": 1}) as d:
        (root / "notes").mkdir()
        (root / "notes" / "readme.txt").write_text("not a scan")
        wait_for(lambda: d.scan("notes"), 10, "notes seen")
        _ptypy_scan(root / "scan_real", 10, num_frames=10, marker=True)
        d.wait_state("scan_real", ("complete",), timeout_s=10)
        assert d.scan("notes")["state"] == "waiting"


def test_the_daemon_writes_the_h5usid_view_when_a_scan_ends_if_asked(inprocess_daemon,
                                                                     daemon_dirs):
    """output.usid_view: the view is there, and sound, by the time scan.ended is told."""
    from flyprep.ptyd.usid import DATA, check_usid

    root, out, _ = daemon_dirs
    with inprocess_daemon(output={"chunk_frames": 20, "usid_view": True}) as d:
        simulate_scan(root / "scan_v", num_frames=50, frame_side=32, rate_hz=0,
                      partial_fraction=0)
        d.wait_state("scan_v", ("complete",))
        ended = wait_for(lambda: d.sink.of_kind(ScanEnded), 10, "scan.ended")
        assert ended[0].state == "complete"
        view = out / "scan_v_usid.h5"
        assert view.is_file() and check_usid(view) == []
        frames = np.concatenate([c.data for c in open_ptyd(out / "scan_v.ptyd").iter_chunks()])
        with h5py.File(view, "r") as f:
            np.testing.assert_array_equal(f[DATA][()], frames.reshape(50, -1))
            preparation = json.loads(f["Measurement_000"].attrs["preparation"])
            assert preparation["prep"]["shape"] == 48 and "resolved" in preparation
    with inprocess_daemon(output={"chunk_frames": 20}) as d:  # off by default
        simulate_scan(root / "scan_w", num_frames=20, frame_side=32, rate_hz=0,
                      partial_fraction=0)
        d.wait_state("scan_w", ("complete",))
    assert not (out / "scan_w_usid.h5").exists()


def test_a_scan_finished_by_an_earlier_run_never_waits_for_a_slot(inprocess_daemon,
                                                                   daemon_dirs, tmp_path):
    """After a restart, old finished scans must not hold up those to resume: with every
    slot (limits.max_scans) taken, a finished one still only reads its totals at once."""
    import shutil

    root, out, _ = daemon_dirs
    with inprocess_daemon() as d:
        _ptypy_scan(root / "scan_old", 20, num_frames=20)
        d.wait_state("scan_old", ("complete",))
    shutil.move(str(root / "scan_old"), tmp_path / "scan_old")
    with inprocess_daemon(limits={"max_scans": 1}) as d:
        _ptypy_scan(root / "scan_live", 30, num_frames=60)  # stays acquiring
        d.wait_state("scan_live", ("acquiring",))
        shutil.move(str(tmp_path / "scan_old"), root / "scan_old")
        old = d.wait_state("scan_old", ("complete",), timeout_s=20)
        assert old["frames_written"] == 20 and old["end_reason"]
        assert d.scan("scan_live")["state"] == "acquiring"
