"""The systemd units in deploy/: systemd 252's ``systemd-analyze verify`` finds nothing wrong
with them, ``systemd-analyze security --offline=yes`` rates each at an exposure of at most
2.0, and both carry the operating settings (watchdog, reload, umask, loopback-only IP).

``verify`` exits 0 even for unknown keys and unparsable values (it only prints them), so the
checks here read its output; the hardening check is shown able to fail on the hardening the
units started from (exposure 7.2)."""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

import pytest

DEPLOY = Path(__file__).resolve().parents[2] / "deploy"
UNITS = ["flyprep.service", "flyprep@.service"]
#: The highest overall exposure ``systemd-analyze security`` may give a unit.
MAX_EXPOSURE = 2.0
#: The daemon's executable in the units; it does not exist where the tests run.
FLYPREP_BIN = "/opt/flyprep/.venv/bin/flyprep"

ANALYZE = shutil.which("systemd-analyze")
needs_analyze = pytest.mark.skipif(ANALYZE is None, reason="systemd-analyze is not installed")

#: The [Service] of flyprep.service before its hardening (what the units started from).
UNHARDENED = """\
[Service]
Type=notify
NotifyAccess=main
User=flyprep
Group=flyprep
ExecStart={exe}
NoNewPrivileges=yes
ProtectSystem=strict
ProtectHome=read-only
PrivateTmp=yes
PrivateDevices=yes
ProtectKernelTunables=yes
ProtectControlGroups=yes
RestrictAddressFamilies=AF_UNIX AF_INET AF_INET6
"""


def analyze(*args: str | Path) -> subprocess.CompletedProcess[str]:
    """Run ``systemd-analyze ARGS``; its exit code and output (not checked)."""
    assert ANALYZE is not None
    return subprocess.run([ANALYZE, *map(str, args)], capture_output=True, text=True,
                          timeout=60)


def runnable_copy(unit: str, directory: Path, extra: str = "") -> Path:
    """``deploy/<unit>`` copied into ``directory`` with the flyprep executable replaced by
    one that exists (``verify`` reports a missing ``Exec*`` binary) and ``extra`` lines
    appended to its [Service] section."""
    true = shutil.which("true")
    assert true is not None
    text = (DEPLOY / unit).read_text().replace(FLYPREP_BIN, true)
    if extra:
        text = text.replace("\n[Install]", f"\n{extra.strip()}\n\n[Install]")
    path = directory / unit
    path.write_text(text)
    return path


def verify_complaints(path: Path) -> list[str]:
    """What ``systemd-analyze verify`` says about the unit file ``path`` (its lines naming
    the unit or its file; other units of the host may have their own warnings); a nonzero
    exit counts as a complaint too."""
    result = analyze("verify", "--man=no", path)
    stem = re.split(r"[@.]", path.name)[0]  # a template is verified as an instance: flyprep@i
    lines = [line for line in (result.stdout + result.stderr).splitlines() if stem in line]
    if result.returncode != 0:
        lines.append(f"exit code {result.returncode}")
    return lines


def exposure(path: Path) -> float:
    """The overall exposure ``systemd-analyze security --offline=yes`` gives the unit file
    ``path`` (0.0 best, 10.0 worst)."""
    result = analyze("security", "--offline=yes", path)
    match = re.search(r"Overall exposure level for \S+: (\d+(?:\.\d+)?)", result.stdout)
    assert match, f"no exposure in the output of systemd-analyze security:\n" \
                  f"{result.stdout}{result.stderr}"
    return float(match.group(1))


def service_settings(unit: str) -> list[tuple[str, str]]:
    """The ``Key=value`` lines of the [Service] section of ``deploy/<unit>``, in order
    (keys such as SystemCallFilter repeat)."""
    settings, section = [], ""
    for raw in (DEPLOY / unit).read_text().splitlines():
        line = raw.strip()
        if line.startswith("["):
            section = line
        elif section == "[Service]" and line and not line.startswith(("#", ";")):
            key, _, value = line.partition("=")
            settings.append((key.strip(), value.strip()))
    return settings


@needs_analyze
@pytest.mark.parametrize("unit", UNITS)
def test_verify_finds_nothing(unit: str, tmp_path: Path) -> None:
    """``systemd-analyze verify`` has nothing to say about the unit: every key known to
    systemd 252, every value parsed, every executable there."""
    assert verify_complaints(runnable_copy(unit, tmp_path)) == []


@needs_analyze
@pytest.mark.parametrize("unit", UNITS)
@pytest.mark.parametrize("bad", ["NoSuchSetting=yes", "ProtectProc=sometimes",
                                 "SystemCallFilter=@no-such-group"])
def test_verify_check_catches_bad_settings(unit: str, bad: str, tmp_path: Path) -> None:
    """The verify check fails on an unknown key or a value systemd cannot parse, though
    ``verify`` itself exits 0 for them."""
    complaints = verify_complaints(runnable_copy(unit, tmp_path, extra=bad))
    assert complaints, f"{bad!r} went unnoticed"


@needs_analyze
@pytest.mark.parametrize("unit", UNITS)
def test_verify_check_catches_missing_executable(unit: str, tmp_path: Path) -> None:
    """Where the flyprep executable does not exist, verify reports it (hence the copy with
    one that exists)."""
    path = tmp_path / unit
    path.write_text((DEPLOY / unit).read_text().replace(FLYPREP_BIN, str(tmp_path / "nothing")))
    assert any("is not executable" in line for line in verify_complaints(path))


@needs_analyze
@pytest.mark.parametrize("unit", UNITS)
def test_exposure_at_most_2(unit: str) -> None:
    """``systemd-analyze security --offline=yes`` rates the unit as installed at an overall
    exposure of at most 2.0."""
    assert exposure(DEPLOY / unit) <= MAX_EXPOSURE


@needs_analyze
def test_exposure_with_installation_drop_ins(tmp_path: Path) -> None:
    """The drop-ins deploy/README.md asks for (data directories, a detector group, a
    network for remote endpoints) keep the exposure at most 2.0."""
    path = runnable_copy("flyprep.service", tmp_path, extra="""
        ReadWritePaths=/srv
        SupplementaryGroups=nogroup
        IPAddressAllow=192.168.10.0/24
    """.replace("    ", ""))
    assert exposure(path) <= MAX_EXPOSURE


@needs_analyze
def test_unhardened_unit_exceeds_the_limit(tmp_path: Path) -> None:
    """The exposure check can fail: the hardening the units started from rates above 2.0."""
    path = tmp_path / "unhardened.service"
    path.write_text(UNHARDENED.format(exe=shutil.which("true")))
    assert exposure(path) > MAX_EXPOSURE


@pytest.mark.parametrize("unit", UNITS)
def test_operating_settings(unit: str) -> None:
    """Both units: notify with a watchdog, reload by SIGHUP, umask 0027, IP only to the
    loopback (widened by drop-ins), AF_NETLINK for libzmq's tcp binds, no PrivateUsers
    (its chown to a configured group would fail)."""
    settings = service_settings(unit)
    for expected in [("Type", "notify"), ("NotifyAccess", "main"), ("WatchdogSec", "30"),
                     ("ExecReload", "/bin/kill -HUP $MAINPID"), ("UMask", "0027"),
                     ("IPAddressDeny", "any"), ("IPAddressAllow", "localhost"),
                     ("CapabilityBoundingSet", ""), ("SystemCallArchitectures", "native")]:
        assert expected in settings, f"{unit}: no {expected[0]}={expected[1]}"
    families = dict(settings)["RestrictAddressFamilies"].split()
    assert sorted(families) == ["AF_INET", "AF_INET6", "AF_NETLINK", "AF_UNIX"]
    assert "PrivateUsers" not in dict(settings)


def test_units_share_their_hardening() -> None:
    """The template unit is hardened exactly like flyprep.service: the settings differ
    only in the instance's paths."""
    per_instance = {"RuntimeDirectory", "ExecStartPre", "ExecStart", "EnvironmentFile"}

    def common(unit: str) -> list[tuple[str, str]]:
        return [kv for kv in service_settings(unit) if kv[0] not in per_instance]

    assert common("flyprep.service") == common("flyprep@.service")
