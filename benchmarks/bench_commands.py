"""How fast commands start (issue 14), run by hand: the wall time of whole ``flyprep``
processes as a user or a script runs them.

Times ``flyprep --help``, ``flyprep status`` against a running daemon (by its endpoint,
and by ``--config``, which also reads the daemon's configuration) and, for scale, a bare
``python -c pass``; each many times, printing the median and the 90th percentile.
Goal: ``flyprep --help`` and ``flyprep status`` under 150 ms on the 2-core machine.

flyprep's modules are byte-compiled first, as ``pip install`` does: with
``PYTHONDONTWRITEBYTECODE`` set (as on some build machines, and this one) and an editable
install, every command would otherwise compile its modules from source again (measured:
``status`` 200-240 ms instead of about 110 ms).

    python benchmarks/bench_commands.py [--runs 30]
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from flyprep.config import to_toml
from flyprep.daemon.control_client import BusError, request

FLYPREP = str(Path(sys.executable).with_name("flyprep"))


def timed(argv: list[str], runs: int) -> list[float]:
    """Wall seconds of ``runs`` runs of ``argv`` (each must exit 0)."""
    times = []
    for _ in range(runs):
        t0 = time.perf_counter()
        subprocess.run(argv, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, check=True)
        times.append(time.perf_counter() - t0)
    return times


def report(name: str, times: list[float], goal_ms: float | None) -> None:
    ms = sorted(t * 1e3 for t in times)
    p90 = ms[int(0.9 * (len(ms) - 1))]
    median = statistics.median(ms)
    verdict = "" if goal_ms is None else \
        f"; goal < {goal_ms:g} ms: {'met' if median < goal_ms else 'NOT met'}"
    print(f"{name:<34} median {median:6.1f} ms, p90 {p90:6.1f} ms (n={len(ms)}){verdict}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--runs", type=int, default=30)
    args = ap.parse_args()
    import compileall

    import flyprep

    compileall.compile_dir(Path(flyprep.__file__).parent, quiet=1)
    print(f"{os.cpu_count()} CPUs, load average {os.getloadavg()[0]:.2f}; flyprep from "
          f"{Path(flyprep.__file__).parent}, byte-compiled")
    with tempfile.TemporaryDirectory(prefix="flyprep-commands-") as tmp:
        work = Path(tmp)
        (work / "root").mkdir()
        config = work / "daemon.toml"
        control = f"ipc://{work}/ctl"
        config.write_text(to_toml({
            "watch": {"roots": [str(work / "root")]},
            "geometry": {"energy": 6.2, "distance": 7.0, "psize": 172e-6},
            "prep": {"shape": 128}, "output": {"directory": str(work)},
            "bus": {"events": f"ipc://{work}/ev", "control": control}}))
        daemon = subprocess.Popen([FLYPREP, "run", "--config", str(config)],
                                  stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        try:
            deadline = time.monotonic() + 60
            while True:
                try:
                    if request(control, "status", timeout_s=0.2)["ok"]:
                        break
                except BusError:
                    pass
                assert time.monotonic() < deadline, "the daemon did not start"
            report("python -c pass", timed([sys.executable, "-c", "pass"], args.runs), None)
            report("flyprep --help", timed([FLYPREP, "--help"], args.runs), 150)
            report("flyprep status --endpoint", timed(
                [FLYPREP, "status", "--endpoint", control], args.runs), 150)
            report("flyprep status --config", timed(
                [FLYPREP, "status", "--config", str(config)], args.runs), None)
        finally:
            daemon.terminate()
            daemon.wait(30)
    shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
