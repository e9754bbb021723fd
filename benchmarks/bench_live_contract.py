"""The live contract's throughput (issue 10), run by hand.

1. The raw ``.apx`` stream: an ``ApxStreamer`` (records and hits, as the daemon runs it)
   publishes a whole ``.apx`` file of ``--readouts`` readouts through a real
   ``EventPublisher`` to one subscriber in another process, over ipc and over tcp
   loopback. Readouts per second from the first poll to the last record received, and
   how many the subscriber lost (goal: at least 1,000,000 readouts/s, none lost).
2. ``flyprep.client``'s chunk iterator on a finished scan of a real daemon process
   against reading the same ``.ptyd`` directly with flyprep's reader (goal: at least
   90 %).

    python benchmarks/bench_live_contract.py [--readouts 2000000] [--frames 2000]
"""

from __future__ import annotations

import argparse
import multiprocessing as mp
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import zmq

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_apx import generate  # noqa: E402  (the .apx test file of bench_apx.py)

from flyprep.apx.stream import ApxStreamer  # noqa: E402
from flyprep.client import Client  # noqa: E402
from flyprep.config import to_toml  # noqa: E402
from flyprep.daemon.bus import EventPublisher, request  # noqa: E402
from flyprep.ptyd.reader import open_ptyd  # noqa: E402
from flyprep.sim.simulate import simulate_scan  # noqa: E402


def subscriber(endpoint: str, expected: int, ready: Any, out: Any) -> None:
    """Child process: count the readouts of ``apx.records`` until ``expected`` came."""
    sock = zmq.Context().socket(zmq.SUB)
    sock.setsockopt(zmq.RCVHWM, 0)
    sock.setsockopt(zmq.SUBSCRIBE, b"apx.records")
    sock.connect(endpoint)
    ready.set()
    import json

    got, nbytes, last = 0, 0, None
    while got < expected and sock.poll(5000):
        frames = sock.recv_multipart(copy=False)
        body = json.loads(bytes(frames[1].buffer))
        got += body["count"]
        nbytes += len(frames[2].buffer)
        last = time.time()
    out.put((got, nbytes, last))


def bench_stream(path: Path, n_readouts: int, endpoint: str, hits: bool) -> dict[str, float]:
    ctx = mp.get_context("spawn")
    ready, out = ctx.Event(), ctx.Queue()
    with EventPublisher(endpoint, sndhwm=100_000) as pub:
        child = ctx.Process(target=subscriber, args=(pub.endpoint, n_readouts, ready, out))
        child.start()
        ready.wait(30)
        time.sleep(0.5)  # the subscription reaches the publisher
        t0 = time.time()
        publish = lambda event, arrays: pub.emit(event, arrays=arrays)  # noqa: E731
        with ApxStreamer(publish, records=True, hits=hits, poll_interval_s=0.01) as streamer:
            streamer.finish(path)
            got, nbytes, last = out.get(timeout=600)
        child.join(30)
        stats = pub.stats()
    seconds = (last or time.time()) - t0
    return {"readouts_per_s": got / seconds, "lost": n_readouts - got,
            "mb_per_s": nbytes / seconds / 1e6, "seconds": seconds,
            "dropped_in_daemon": stats["dropped"]}


def bench_iterator(frames: int, work: Path, chunk_frames: int = 100) -> dict[str, float]:
    root, outdir, sockets = work / "root", work / "out", work / "s"
    for d in (root, outdir, sockets):
        d.mkdir(parents=True)
    config = work / "daemon.toml"
    config.write_text(to_toml({
        "watch": {"roots": [str(root)], "quiet_window_s": 0.2},
        "geometry": {"energy": 6.2, "distance": 7.0, "psize": 172e-6},
        "prep": {"shape": 256},
        "output": {"directory": str(outdir), "chunk_frames": chunk_frames},
        "bus": {"events": f"ipc://{sockets}/ev", "control": f"ipc://{sockets}/ctl"}}))
    simulate_scan(work / "staging" / "scan", num_frames=frames, frame_side=512, rate_hz=0,
                  end_marker=True)
    proc = subprocess.Popen([sys.executable, "-m", "flyprep.cli", "run", "--config",
                             str(config)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.time() + 60
        while time.time() < deadline:
            try:
                request(f"ipc://{sockets}/ctl", "ping", timeout_s=0.5)
                break
            except Exception:
                time.sleep(0.1)
        shutil.move(str(work / "staging" / "scan"), root / "scan")
        master = outdir / "scan.ptyd"
        deadline = time.time() + 600
        while not (master.exists() and open_ptyd(master).state == "complete"):
            assert time.time() < deadline, "the scan did not complete"
            time.sleep(0.2)
        direct, client_s = [], []
        for _ in range(3):
            t0 = time.perf_counter()
            n = sum(c.data.shape[0] for c in open_ptyd(master).iter_chunks())
            direct.append(time.perf_counter() - t0)
            with Client(events=f"ipc://{sockets}/ev", control=f"ipc://{sockets}/ctl") as c:
                t0 = time.perf_counter()
                m = sum(chunk.n_frames for chunk in c.chunks("scan"))
                client_s.append(time.perf_counter() - t0)
            assert n == m == frames
    finally:
        proc.terminate()
        proc.wait(30)
    d, c = sorted(direct)[1], sorted(client_s)[1]
    return {"direct_fps": frames / d, "client_fps": frames / c, "ratio": d / c}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--readouts", type=int, default=2_000_000)
    ap.add_argument("--frames", type=int, default=2000)
    ap.add_argument("--skip-apx", action="store_true", help="the chunk iterator only")
    args = ap.parse_args()
    print(f"{os.cpu_count()} CPUs, load average {os.getloadavg()[0]:.2f}")
    with tempfile.TemporaryDirectory(prefix="flyprep-live-") as tmp:
        work = Path(tmp)
        gen = None if args.skip_apx else generate(work, args.readouts, "synthetic", seed=1)
        if gen is not None:
            print(f".apx file: {gen.n_readouts:,} readouts, {gen.file_bytes / 1e6:.1f} MB")
        for name, endpoint, hits in () if gen is None else (("ipc", f"ipc://{work}/apx", False),
                                     ("tcp", "tcp://127.0.0.1:*", False),
                                     ("ipc", f"ipc://{work}/apx2", True),
                                     ("tcp", "tcp://127.0.0.1:*", True)):
            r = bench_stream(gen.path, gen.n_readouts, endpoint, hits)
            goal = "met" if r["readouts_per_s"] >= 1e6 and r["lost"] == 0 else "NOT met"
            what = "records and hits" if hits else "records only (apx.hits = false)"
            print(f"apx stream over {name}, {what}: {r['readouts_per_s']:,.0f} readouts/s "
                  f"({r['mb_per_s']:.0f} MB/s of records), {r['lost']} lost, "
                  f"{r['dropped_in_daemon']} dropped in the publisher; goal >= 1,000,000/s "
                  f"and none lost: {goal}")
        for chunk_frames in (100, 2):  # 2: a long scan's many chunks (1,000 for 2,000 frames)
            r = bench_iterator(args.frames, work / f"iterator-{chunk_frames}", chunk_frames)
            goal = "met" if r["ratio"] >= 0.9 else "NOT met"
            print(f"chunk iterator, {args.frames // chunk_frames} chunks: {r['client_fps']:,.0f} "
                  f"frames/s against {r['direct_fps']:,.0f} reading the .ptyd directly: "
                  f"{100 * r['ratio']:.0f} % (goal >= 90 %: {goal})")


if __name__ == "__main__":
    main()
