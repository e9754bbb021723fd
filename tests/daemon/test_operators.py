"""The operators' command line against the real daemon: every client command finds the
daemon from its config file, ``status --watch`` draws a live scan's progress in a
pseudo-terminal and leaves it clean on Ctrl-C, ``events`` prints events as they come."""

from __future__ import annotations

import json
import os
import pty
import select
import signal
import subprocess
import sys
import time

from daemon_helpers import wait_for
from test_e2e import Simulation

FLYPREP = [sys.executable, "-m", "flyprep.cli"]


def read_for(fd: int, seconds: float) -> bytes:
    out = b""
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        ready, _, _ = select.select([fd], [], [], 0.05)
        if ready:
            try:
                out += os.read(fd, 65536)
            except OSError:
                break
    return out


def test_status_watch_draws_a_live_scan_and_leaves_the_terminal_clean(tmp_path, daemon_dirs,
                                                                      daemon_process):
    root, out, sockets = daemon_dirs
    daemon = daemon_process(output={"chunk_frames": 20})
    daemon.start()
    master, slave = pty.openpty()
    os.set_blocking(master, False)
    env = dict(os.environ, COLUMNS="160", LINES="30", TERM="xterm-256color")
    watch = subprocess.Popen([*FLYPREP, "status", "--watch", "--config", str(daemon.config),
                              "--interval", "0.2"], stdin=slave, stdout=slave, stderr=slave,
                             env=env, close_fds=True)
    os.close(slave)
    try:
        sim = Simulation(root / "scan_w", num_frames=400, rate_hz=100)
        sim.start()
        seen = read_for(master, 2.5).decode(errors="replace")
        assert "scan_w" in seen and "acquiring" in seen
        assert "/400" in seen and "ETA" in seen and "frames/s" in seen
        assert "\x1b[" in seen  # drawn in place, not printed line after line
        watch.send_signal(signal.SIGINT)
        rest = read_for(master, 1.5).decode(errors="replace")
        assert watch.wait(10) == 130
        assert "\x1b[?25h" in seen + rest  # the cursor is shown again
        sim.finish()
    finally:
        if watch.poll() is None:
            watch.kill()
        os.close(master)
    daemon.stop()


def test_client_commands_find_the_daemon_from_its_config(tmp_path, daemon_dirs,
                                                         daemon_process):
    root, out, sockets = daemon_dirs
    daemon = daemon_process(output={"chunk_frames": 20})
    daemon.start()
    events = subprocess.Popen([*FLYPREP, "events", "--config", str(daemon.config), "--json",
                               "--topic", "scan.", "--topic", "chunk.written"],
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    # Connected once it says so (a new interpreter is slow to start on a loaded machine),
    # subscribed a moment later (ZeroMQ's slow joiner)
    ready, _, _ = select.select([events.stderr], [], [], 30)
    assert ready and "Ctrl-C to stop" in events.stderr.readline()
    time.sleep(1.0)
    Simulation(root / "scan_v", num_frames=60, rate_hz=0).start()
    wait_for(lambda: (daemon.scan("scan_v") or {}).get("state") == "complete", 60,
             "the scan complete")
    status = subprocess.run([*FLYPREP, "status", "--config", str(daemon.config)],
                            capture_output=True, text=True, timeout=30)
    assert status.returncode == 0 and "scan_v: complete, 60/60 frames" in status.stdout
    refused = subprocess.run([*FLYPREP, "end-scan", "scan_v", "--config", str(daemon.config)],
                             capture_output=True, text=True, timeout=30)
    assert refused.returncode == 1 and "no running scan named 'scan_v'" in refused.stderr
    time.sleep(0.5)
    events.send_signal(signal.SIGINT)
    printed, _ = events.communicate(timeout=10)
    assert events.returncode == 130
    kinds = [json.loads(line)["kind"] for line in printed.splitlines()]
    assert kinds[0] == "scan.started" and kinds[-1] == "scan.ended"
    assert kinds.count("chunk.written") == 3 and "daemon.heartbeat" not in kinds
    daemon.stop()


def test_status_keeps_real_totals_across_a_restart_and_ages_ended_scans_out(
        tmp_path, daemon_dirs, daemon_process):
    root, out, sockets = daemon_dirs
    daemon = daemon_process(output={"chunk_frames": 20}, limits={"ended_kept_s": 3.0})
    daemon.start()
    Simulation(root / "scan_u", num_frames=60, rate_hz=0, partial_fraction=0).start()
    wait_for(lambda: (daemon.scan("scan_u") or {}).get("state") == "complete", 60,
             "the scan complete")
    daemon.stop()
    daemon.start()  # a new run: the scan was finished by the earlier one
    scan = wait_for(lambda: daemon.scan("scan_u"), 20, "the scan in status")
    wait_for(lambda: (daemon.scan("scan_u") or {}).get("end_reason"), 20, "its end")
    scan = daemon.scan("scan_u")
    assert scan is not None and scan["state"] == "complete"
    assert (scan["num_frames"], scan["frames_written"], scan["chunks_written"]) == (60, 60, 3)
    wait_for(lambda: daemon.scan("scan_u") is None, 20, "the ended scan aged out of status")
    daemon.stop()


def test_the_scan_command_says_which_frames_are_missing_and_why(tmp_path, daemon_dirs,
                                                                daemon_process):
    import shutil

    from flyprep.daemon.bus import request
    from flyprep.sim.simulate import simulate_scan

    root, out, sockets = daemon_dirs
    daemon = daemon_process(output={"chunk_frames": 20}, watch={"frame_timeout_s": 2.0})
    daemon.start()
    staging = tmp_path / "staging" / "scan_t"
    simulate_scan(staging, num_frames=40, frame_side=32, rate_hz=0, partial_fraction=0)
    (staging / "ccd" / "diffraction_0007.npy").unlink()
    (staging / "ccd" / "diffraction_0011.npy").write_bytes(b"junk")
    shutil.move(str(staging), root / "scan_t")
    wait_for(lambda: (daemon.scan("scan_t") or {}).get("state") == "complete", 60,
             "the scan complete")
    reply = request(daemon.control, "scan", params={"scan": "scan_t"})
    assert reply["ok"], reply
    detail = reply["result"]
    assert detail["status"]["frames_missing"] == 1 and detail["status"]["frames_failed"] == 1
    runs = {(r["kind"], r["first"], r["count"]) for r in detail["published"]["frame_runs"]}
    assert runs == {("missing", 7, 1), ("failed", 11, 1)}
    assert all(r["reason"] and r["path"] for r in detail["published"]["frame_runs"])
    status = detail["status"]
    assert status["files_quarantined"] == 1  # the junk file (frame 7 never had one)
    assert "frame 11 failed" in status["last_problem"] and "diffraction_0011" in \
        status["last_problem"]
    assert detail["published"]["master"].endswith("scan_t.ptyd")
    nack = request(daemon.control, "scan", params={"scan": "nope"})
    assert not nack["ok"] and "no scan named 'nope'" in nack["error"]
    assert daemon.status()["events"]["sent"] > 0
    assert request(daemon.control, "reset_stats")["ok"]
    assert daemon.status()["events"]["sent"] == 0
    daemon.stop()


def test_status_shows_each_stage_its_rates_queues_and_subscribers(tmp_path, daemon_dirs,
                                                                  daemon_process):
    from flyprep.daemon.bus import Subscriber

    root, out, sockets = daemon_dirs
    daemon = daemon_process(output={"chunk_frames": 20})
    daemon.start()
    status = daemon.status()
    assert status["state"] == "running" and status["uptime_s"] >= 0
    with Subscriber(f"ipc://{sockets}/ev") as sub:
        sim = Simulation(root / "scan_r", num_frames=600, rate_hz=100)
        sim.start()
        assert sub.receive(10.0) is not None
        scan = wait_for(lambda: (s := daemon.scan("scan_r")) and (s["rates"] or {}).get(
            "published", 0) > 0 and s, 30, "rates of a live scan")
        assert scan["state"] == "acquiring"
        assert scan["frames_received"] >= scan["frames_prepared"] >= scan["frames_written"]
        assert scan["frames_published"] <= scan["frames_written"] + 20
        rates = scan["rates"]
        assert set(rates) == {"received", "prepared", "written", "published"}
        assert 20 < rates["received"] < 400, rates  # the detector writes 100 frames/s
        assert set(scan["queues"]) == {"files", "frames", "chunks"}
        assert all(isinstance(v, int) and v >= 0 for v in scan["queues"].values())
        status = daemon.status()
        assert status["events"]["subscribers"] >= 1
        assert status["events"]["sent"] > 0 and status["events"]["dropped"] == 0
        assert status["control"]["requests"] > 0 and status["control"]["errors"] == 0
        text = subprocess.run([*FLYPREP, "status", "--config", str(daemon.config)],
                              capture_output=True, text=True, timeout=30).stdout
        assert "scan_r: acquiring" in text and "received " in text and "/s)" in text
        sim.finish()
    done = wait_for(lambda: (s := daemon.scan("scan_r")) and s["state"] == "complete" and s,
                    60, "the scan complete")
    assert done["frames_published"] == done["frames_written"] == 600
    assert done["rates"] is None
    wait_for(lambda: daemon.status()["events"]["subscribers"] == 0, 10,
             "the subscriber's disconnection counted")
    daemon.stop()


def test_apx_listen_shows_live_readout_and_hit_rates(tmp_path, daemon_dirs, daemon_process):
    root, out, sockets = daemon_dirs
    daemon = daemon_process(apx={"follow": True, "stream": f"ipc://{sockets}/apx"})
    daemon.start()
    listen = subprocess.Popen([*FLYPREP, "apx", "listen", "--config", str(daemon.config),
                               "--seconds", "4"], stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, text=True)
    ready, _, _ = select.select([listen.stderr], [], [], 30)
    assert ready and "Ctrl-C to stop" in listen.stderr.readline()
    time.sleep(0.5)
    sim = Simulation(root / "scan_l", num_frames=150, rate_hz=60, apx=True,
                     readouts_per_frame=20)
    sim.start()
    printed, _ = listen.communicate(timeout=30)
    sim.finish()
    assert listen.returncode == 0
    lines = [ln for ln in printed.splitlines() if ln.startswith("astropix.apx:")]
    assert lines and any(" 0 readouts/s" not in ln for ln in lines)
    assert "hits/s" in lines[-1] and "so far" in lines[-1]
    daemon.stop()
