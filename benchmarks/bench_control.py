"""Control round trips while the daemon works (issue 11), run by hand.

The real daemon (``flyprep run``) drains a 3,000-frame scan moved into its watched root and
streams the scan's ``.apx`` file, while a client sends ``status`` and ``ping`` requests
back to back over the control socket (ipc and tcp loopback). Prints p50/p99/max of the
round trip (goal: p99 < 10 ms on 2 cores) and the same figures with the daemon idle.

    python benchmarks/bench_control.py [--frames 3000]
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np
import zmq

from flyprep.config import to_toml
from flyprep.daemon.bus import BusError, Subscriber, request
from flyprep.ptyd.reader import open_ptyd
from flyprep.sim.simulate import simulate_scan


SLOW_S = 0.005
#: when (seconds since the clients started) round trips took longer than SLOW_S
slow_at: list[tuple[float, float]] = []


def round_trips(endpoint: str, command: bytes, stop: threading.Event, out: list[float]) -> None:
    sock = zmq.Context.instance().socket(zmq.REQ)
    sock.setsockopt(zmq.LINGER, 0)
    sock.connect(endpoint)
    try:
        while not stop.is_set():
            t0 = time.perf_counter()
            sock.send(command)
            if not sock.poll(10_000):
                raise RuntimeError("no answer within 10 s")
            sock.recv()
            out.append(time.perf_counter() - t0)
            if out[-1] > SLOW_S:
                slow_at.append((t0 - BEGIN[0], out[-1]))
            time.sleep(0.002)
    finally:
        sock.close(linger=0)


BEGIN = [0.0]


def figures(samples: list[float]) -> str:
    ms = np.asarray(samples) * 1e3
    return (f"n={len(ms)}, p50 {np.percentile(ms, 50):.2f} ms, p99 "
            f"{np.percentile(ms, 99):.2f} ms, max {ms.max():.1f} ms")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--frames", type=int, default=3000)
    ap.add_argument("--commands", default="status,ping,snapshot",
                    help="the commands sent, one client each (default: status,ping,"
                         "snapshot; snapshot is relayed to the daemon's main process)")
    ap.add_argument("--timeline", action="store_true",
                    help="when the slow round trips happened, per quarter second")
    args = ap.parse_args()
    print(f"{os.cpu_count()} CPUs, load average {os.getloadavg()[0]:.2f}")
    with tempfile.TemporaryDirectory(prefix="flyprep-control-") as tmp:
        work = Path(tmp)
        root, out = work / "root", work / "out"
        root.mkdir()
        out.mkdir()
        simulate_scan(work / "staging" / "scan", num_frames=args.frames, frame_side=256,
                      rate_hz=0, apx=True, readouts_per_frame=50)
        for transport, control in (("ipc", f"ipc://{work}/ctl"), ("tcp", "tcp://127.0.0.1:5981")):
            config = work / f"daemon-{transport}.toml"
            config.write_text(to_toml({
                "watch": {"roots": [str(root)], "quiet_window_s": 0.2},
                "geometry": {"energy": 6.2, "distance": 7.0, "psize": 172e-6},
                "prep": {"shape": 128}, "output": {"directory": str(out), "chunk_frames": 100},
                "bus": {"events": f"ipc://{work}/ev-{transport}", "control": control},
                "apx": {"follow": True, "stream": f"ipc://{work}/apx-{transport}"}}))
            proc = subprocess.Popen([sys.executable, "-m", "flyprep.cli", "run", "--config",
                                     str(config)], stdout=subprocess.DEVNULL,
                                    stderr=subprocess.DEVNULL)
            events = Subscriber(f"ipc://{work}/ev-{transport}", topics=(b"scan.ended",))
            try:
                deadline = time.monotonic() + 60
                while True:  # started: the control socket answers
                    try:
                        if request(control, "status", timeout_s=0.2)["ok"]:
                            break
                    except BusError:
                        pass
                    assert time.monotonic() < deadline, "the daemon did not start"
                for name, busy in (("idle", False), ("draining", True)):
                    stop, samples = threading.Event(), {c: [] for c in args.commands.split(",")}
                    BEGIN[0] = time.perf_counter()
                    slow_at.clear()
                    clients = [threading.Thread(target=round_trips, args=(
                        control, b'{"command": "%s"}' % c.encode(), stop, samples[c]))
                        for c in samples]
                    for c in clients:
                        c.start()
                    if busy:
                        scan = root / f"scan_{transport}"
                        shutil.copytree(work / "staging" / "scan", work / f"copy_{transport}")
                        os.replace(work / f"copy_{transport}", scan)
                        # The end is awaited on the events socket (not by opening the
                        # master with h5py, which would hold this process's GIL for
                        # milliseconds and delay the clients' own measurements).
                        while True:
                            got = events.receive(600.0)
                            assert got is not None, "no scan.ended within 600 s"
                            if got.event.kind == "scan.ended":
                                break
                        assert open_ptyd(out / f"scan_{transport}.ptyd").state == "complete"
                    else:
                        time.sleep(3)
                    stop.set()
                    for c in clients:
                        c.join()
                    if busy and args.timeline:
                        span = time.perf_counter() - BEGIN[0]
                        bins = np.histogram([t for t, _ in slow_at], bins=int(span * 4) + 1,
                                            range=(0, span))[0]
                        print(f"{transport}: round trips > {SLOW_S * 1e3:g} ms per 0.25 s of "
                              f"the drain: {' '.join(str(b) for b in bins)}")
                    for command, got in samples.items():
                        goal = ("met" if np.percentile(got, 99) * 1e3 < 10 else "NOT met") \
                            if busy and command in ("status", "ping") else "-"
                        print(f"{transport} {name:>8} {command:>6}: {figures(got)}"
                              f"{'' if not busy else f'; goal p99 < 10 ms: {goal}'}")
            finally:
                events.close()
                proc.terminate()
                proc.wait(30)


if __name__ == "__main__":
    main()
