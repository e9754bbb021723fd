"""The ``flyprep run`` daemon config: models, env overrides, loopback rule, check-config."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import pytest
from pydantic import ValidationError

from flyprep.cli import check_config as config_command
from flyprep.config import (
    DaemonConfig,
    ScanDescription,
    check_endpoint,
    env_overrides,
    is_local_endpoint,
    load_daemon_config,
    load_scan_description,
    load_toml,
    parse_daemon_config,
    parse_env_value,
    scan_settings,
)
from flyprep.errors import ConfigError

EXAMPLE = Path(__file__).resolve().parents[1] / "configs" / "daemon.toml"


@pytest.fixture
def root(tmp_path: Path) -> Path:
    r = tmp_path / "incoming"
    r.mkdir()
    return r


def write(tmp_path: Path, text: str, name: str = "daemon.toml") -> Path:
    path = tmp_path / name
    path.write_text(text)
    return path


def minimal(root: Path, extra: str = "") -> str:
    return f'[watch]\nroots = ["{root}"]\n{extra}'


def bad(root: Path, tmp_path: Path, extra: str, env: dict | None = None) -> str:
    with pytest.raises(ConfigError) as info:
        load_daemon_config(write(tmp_path, minimal(root, extra)), env=env or {})
    return str(info.value)


def test_example_config_loads_with_root_from_env(root: Path) -> None:
    cfg = load_daemon_config(EXAMPLE, env={"FLYPREP__WATCH__ROOTS": f'["{root}"]'})
    assert cfg.watch.roots == [root]
    assert cfg.output.chunk_frames == 100 and cfg.output.directory is None
    assert cfg.bus.events == "tcp://127.0.0.1:5570" and not cfg.bus.allow_remote
    assert cfg.limits.chunk_buffers >= 2
    assert cfg.geometry.energy == 6.2 and cfg.prep.shape == 256


def test_example_config_without_existing_root_is_refused() -> None:
    with pytest.raises(ConfigError, match=r"watch\.roots = \['/data/incoming'\]: root "):
        load_daemon_config(EXAMPLE, env={})


def test_defaults_and_relative_paths_from_config_dir(tmp_path: Path, root: Path) -> None:
    path = write(tmp_path, '[watch]\nroots = "incoming"\n[output]\ndirectory = "out"\n')
    cfg = load_daemon_config(path, env={})
    assert cfg.watch.roots == [root]
    assert cfg.output.directory == tmp_path / "out"
    assert cfg.watch.observer == "native" and cfg.watch.scan_file == "flyprep-scan.toml"
    with pytest.raises(ValidationError):  # frozen
        cfg.watch.recursive = False  # type: ignore[misc]


def test_watch_section_is_required(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"watch: Field required"):
        load_daemon_config(write(tmp_path, "[limits]\nchunk_buffers = 4\n"), env={})


@pytest.mark.parametrize("extra, key, value, reason", [
    ("[limits]\nchunk_buffers = 1", "limits.chunk_buffers", "1", "greater than or equal to 2"),
    ("[limits]\nmax_scans = 0", "limits.max_scans", "0", "greater than or equal to 1"),
    ("inactivity_timeout_s = -5", "watch.inactivity_timeout_s", "-5", "greater than 0"),
    ("frame_timeout_s = 0", "watch.frame_timeout_s", "0", "greater than 0"),
    ("read_retries = -1", "watch.read_retries", "-1", "greater than or equal to 0"),
    ('observer = "inotify"', "watch.observer", "'inotify'", "'native' or 'polling'"),
    ('observer = "polling"\npoll_interval_s = 5\nquiet_window_s = 1',
     "watch.quiet_window_s", "1", "at least poll_interval_s"),
    ('quiet_window_s = 5\nframe_timeout_s = 8', "watch.frame_timeout_s", "8",
     "more than twice the quiet window"),
    ('end_marker = "../done"', "watch.end_marker", "'../done'", "plain file name"),
    ('frame_patterns = []', "watch.frame_patterns", "[]", "at least 1 item"),
    ('frame_patterns = ["sub/*.h5"]', "watch.frame_patterns", "['sub/*.h5']", "without '/'"),
    ('bogus = 1', "watch.bogus", "1", "Extra inputs are not permitted"),
    ('[input]\ndataset = "entry/data"', "input.dataset", "'entry/data'", "must start with '/'"),
    ('[output]\nchunk_frames = 0', "output.chunk_frames", "0", "greater than or equal to 1"),
    ('[output]\nname = "out.h5"', "output.name", "'out.h5'", "must contain {scan}"),
    ('[prep]\nrebin = 0', "prep.rebin", "0", "greater than or equal to 1"),
    ('[geometry]\nenergy = -1.0', "geometry.energy", "-1.0", "greater than 0"),
    ('[bus]\nevents = "tcp://127.0.0.1"', "bus.events", "'tcp://127.0.0.1'", "tcp://HOST:PORT"),
    ('[bus]\nevents = "tcp://127.0.0.1:70000"', "bus.events", "'tcp://127.0.0.1:70000'",
     "outside 1-65535"),
    ('[bus]\ncontrol = "udp://127.0.0.1:5"', "bus.control", "'udp://127.0.0.1:5'", "ipc://PATH"),
    ('[bus]\ncontrol = "tcp://127.0.0.1:5570"', "bus.control", "'tcp://127.0.0.1:5570'",
     "each socket needs its own"),
    ('[bus]\nsend_hwm = 0', "bus.send_hwm", "0", "greater than or equal to 1"),
    ('[apx]\nstream = "tcp://127.0.0.1:5571"', "apx.stream", "'tcp://127.0.0.1:5571'",
     "must differ"),
    # the default control endpoint given to events: a duplicate all the same
    ('[bus]\nevents = "tcp://127.0.0.1:5571"', "bus.control", "'tcp://127.0.0.1:5571'",
     "each socket needs its own"),
    ('[bus]\nevents = "tcp://127.0.0.1:*"', "bus.events", "'tcp://127.0.0.1:*'",
     "random port"),
    ('[apx]\nstream = "tcp://127.0.0.1:*"', "apx.stream", "'tcp://127.0.0.1:*'",
     "random port"),
    ('recursive = "yes"', "watch.recursive", "'yes'", "valid boolean"),
    ('[apx]\nfollow = 1', "apx.follow", "1", "valid boolean"),
    ('[bus]\nallow_remote = "true"', "bus.allow_remote", "'true'", "valid boolean"),
    ('[bus]\nipc_mode = "999"', "bus.ipc_mode", "'999'", "should match pattern"),
    ('[bus]\nevents = "ipc://@flyprep"', "bus.events", "'ipc://@flyprep'",
     "abstract ipc socket"),
])
def test_bad_value_names_key_value_reason(tmp_path: Path, root: Path, extra: str, key: str,
                                          value: str, reason: str) -> None:
    message = bad(root, tmp_path, extra)
    line = next(ln for ln in message.splitlines() if ln.strip().startswith(key))
    assert f"{key} = {value}: " in line
    assert reason in line
    assert message.startswith(str(tmp_path / "daemon.toml"))


def test_missing_root_is_named(tmp_path: Path) -> None:
    message = bad(tmp_path / "absent", tmp_path, "")
    assert "watch.roots" in message and "does not exist" in message and "absent" in message


def test_all_bad_keys_reported_together(tmp_path: Path, root: Path) -> None:
    message = bad(root, tmp_path, "read_retries = -1\n[limits]\nchunk_buffers = 0\n"
                                  "[bus]\nevents = 'tcp://0.0.0.0:1'")
    for key in ("watch.read_retries", "limits.chunk_buffers", "bus.events"):
        assert key in message


def test_output_directory_that_is_a_file_is_refused(tmp_path: Path, root: Path) -> None:
    (tmp_path / "afile").write_text("x")
    message = bad(root, tmp_path, f'[output]\ndirectory = "{tmp_path / "afile"}"')
    assert "output.directory" in message and "not a directory" in message


# --- loopback rule --------------------------------------------------------------------

@pytest.mark.parametrize("endpoint", ["tcp://127.0.0.1:5570", "tcp://127.0.0.2:1",
                                      "tcp://localhost:5570", "tcp://[::1]:5570",
                                      "ipc:///tmp/flyprep.sock", "ipc://@abstract"])
def test_local_endpoints(endpoint: str) -> None:
    assert check_endpoint(endpoint) == endpoint
    assert is_local_endpoint(endpoint)


@pytest.mark.parametrize("endpoint", ["tcp://0.0.0.0:5570", "tcp://*:5570", "tcp://10.1.2.3:5570",
                                      "tcp://beamline-pc:5570", "tcp://eth0:5570"])
def test_remote_endpoints(endpoint: str) -> None:
    check_endpoint(endpoint)
    assert not is_local_endpoint(endpoint)


@pytest.mark.parametrize("endpoint", ["", "tcp://", "tcp://:5", "ipc://", "inproc://x",
                                      "tcp://a;127.0.0.1:5", "tcp://h:0", "tcp://h:port"])
def test_malformed_endpoints(endpoint: str) -> None:
    with pytest.raises(ValueError):
        check_endpoint(endpoint)


def test_wildcard_bind_refused_unless_allow_remote(tmp_path: Path, root: Path) -> None:
    message = bad(root, tmp_path, '[bus]\nevents = "tcp://0.0.0.0:5570"')
    assert "bus.events = 'tcp://0.0.0.0:5570': not a loopback or ipc endpoint" in message
    assert "allow_remote" in message
    message = bad(root, tmp_path, '[apx]\nstream = "tcp://*:5572"')
    assert "apx.stream = 'tcp://*:5572': not a loopback" in message
    ok = minimal(root, '[bus]\nallow_remote = true\nevents = "tcp://0.0.0.0:5570"\n'
                       'curve_server_key = "server.key"\ncurve_readers = "any"\n'
                       '[apx]\nstream = "tcp://*:5572"\n')
    cfg = load_daemon_config(write(tmp_path, ok), env={})
    assert cfg.bus.curve_server_key == tmp_path / "server.key"  # from the config's directory
    assert cfg.bus.events == "tcp://0.0.0.0:5570" and cfg.apx.stream == "tcp://*:5572"


def test_ipc_is_always_fine(tmp_path: Path, root: Path) -> None:
    text = minimal(root, f'[bus]\nevents = "ipc://{tmp_path}/ev"\ncontrol = "ipc://{tmp_path}/ctl"\n')
    cfg = load_daemon_config(write(tmp_path, text), env={})
    assert cfg.bus.events.startswith("ipc://") and not cfg.bus.allow_remote


# --- environment overrides ---------------------------------------------------------------

def test_parse_env_value() -> None:
    assert parse_env_value("8") == 8
    assert parse_env_value("1.5") == 1.5
    assert parse_env_value("true") is True
    assert parse_env_value('["a", "b"]') == ["a", "b"]
    assert parse_env_value("/data/x") == "/data/x"
    assert parse_env_value("tcp://127.0.0.1:1") == "tcp://127.0.0.1:1"
    assert parse_env_value('"007"') == "007"


def test_env_overrides_win_and_are_validated(tmp_path: Path, root: Path) -> None:
    path = write(tmp_path, minimal(root, "[limits]\nchunk_buffers = 4\n"))
    env = {"FLYPREP__LIMITS__CHUNK_BUFFERS": "8", "FLYPREP__WATCH__OBSERVER": "polling",
           "FLYPREP__BUS__EVENTS": "ipc:///tmp/ev", "FLYPREP__OUTPUT__CHUNK_FRAMES": "50",
           "FLYPREP_UNRELATED": "ignored", "PATH": "/bin"}
    cfg = load_daemon_config(path, env=env)
    assert cfg.limits.chunk_buffers == 8 and cfg.watch.observer == "polling"
    assert cfg.bus.events == "ipc:///tmp/ev" and cfg.output.chunk_frames == 50
    with pytest.raises(ConfigError) as info:
        load_daemon_config(path, env={"FLYPREP__LIMITS__CHUNK_BUFFERS": "1",
                                      "FLYPREP__BUS__EVENTS": "tcp://0.0.0.0:1"})
    text = str(info.value)
    assert ("limits.chunk_buffers = 1: Input should be greater than or equal to 2 "
            "(from environment FLYPREP__LIMITS__CHUNK_BUFFERS)") in text
    assert "bus.events = 'tcp://0.0.0.0:1'" in text and "FLYPREP__BUS__EVENTS" in text


def test_env_unknown_key_and_bad_name(tmp_path: Path, root: Path) -> None:
    path = write(tmp_path, minimal(root))
    with pytest.raises(ConfigError, match=r"watch\.rootz .*FLYPREP__WATCH__ROOTZ"):
        load_daemon_config(path, env={"FLYPREP__WATCH__ROOTZ": "x"})
    with pytest.raises(ConfigError, match="FLYPREP__SECTION__KEY"):
        load_daemon_config(path, env={"FLYPREP__LIMITS": "3"})
    data, origin = env_overrides({"flyprep__Bus__Send_HWM": "5"})
    assert data == {"bus": {"send_hwm": 5}} and origin == {("bus", "send_hwm"): "flyprep__Bus__Send_HWM"}


def test_env_defaults_to_os_environ(tmp_path: Path, root: Path, monkeypatch) -> None:
    monkeypatch.setenv("FLYPREP__LIMITS__MAX_SCANS", "7")
    assert load_daemon_config(write(tmp_path, minimal(root))).limits.max_scans == 7


# --- scan description --------------------------------------------------------------------

def test_scan_description_overrides_defaults(tmp_path: Path, root: Path) -> None:
    cfg = parse_daemon_config({"watch": {"roots": [str(root)]},
                               "geometry": {"energy": 6.2, "distance": 7.0},
                               "prep": {"shape": 256, "rebin": 2}, "scan": {"label": "default"}})
    desc = load_scan_description(write(tmp_path, 'label = "scan 7"\nnum_frames = 500\n'
                                                 '[geometry]\nenergy = 8.0\n[prep]\nshape = 128\n',
                                       "flyprep-scan.toml"))
    assert desc.label == "scan 7" and desc.num_frames == 500
    prep = scan_settings(cfg, desc)
    assert prep.scan.label == "scan 7" and prep.scan.num_frames == 500
    assert prep.geometry.energy == 8.0 and prep.geometry.distance == 7.0
    assert prep.prep.shape == 128 and prep.prep.rebin == 2
    plain = scan_settings(cfg)
    assert plain.scan.label == "default" and plain.geometry.energy == 6.2
    assert plain.input.frame_glob == "*.h5" and plain.output.chunk_frames == 100


def test_scan_description_errors(tmp_path: Path, root: Path) -> None:
    path = write(tmp_path, "num_frames = 0\nbogus = 1\n[geometry]\ndistance = -1.0\n", "s.toml")
    with pytest.raises(ConfigError) as info:
        load_scan_description(path)
    text = str(info.value)
    assert "num_frames = 0" in text and "bogus = 1" in text and "geometry.distance = -1.0" in text
    # an override inconsistent with the defaults is caught when combined
    cfg = parse_daemon_config({"watch": {"roots": [str(root)]}, "prep": {"rebin": 4}})
    with pytest.raises(ConfigError, match="rebin 4 does not divide shape 130"):
        scan_settings(cfg, ScanDescription.model_validate({"prep": {"shape": 130}}))


# --- check-config -------------------------------------------------------------------------

def run_check(path: Path, as_json: bool = False) -> int:
    return config_command.run(argparse.Namespace(file=path, json=as_json))


def test_check_config_good_prints_toml_that_round_trips(tmp_path: Path, root: Path, capsys,
                                                         monkeypatch) -> None:
    monkeypatch.setenv("FLYPREP__WATCH__ROOTS", f'["{root}"]')
    assert run_check(EXAMPLE) == 0
    out = capsys.readouterr().out
    assert "(TOML)" in out and "[bus]" in out and 'events = "tcp://127.0.0.1:5570"' in out
    printed = tmp_path / "printed.toml"
    printed.write_text(out)
    monkeypatch.delenv("FLYPREP__WATCH__ROOTS")
    again = parse_daemon_config(load_toml(printed))
    assert again == load_daemon_config(EXAMPLE, env={"FLYPREP__WATCH__ROOTS": str(root)})


def test_check_config_json(tmp_path: Path, root: Path, capsys) -> None:
    assert run_check(write(tmp_path, minimal(root)), as_json=True) == 0
    data = json.loads(capsys.readouterr().out)
    assert data["watch"]["roots"] == [str(root)] and data["limits"]["chunk_buffers"] == 4


def test_check_config_bad_file(tmp_path: Path, root: Path, capsys) -> None:
    path = write(tmp_path, minimal(root, "[limits]\nchunk_buffers = 1\n"))
    assert run_check(path) == 2
    captured = capsys.readouterr()
    assert captured.out == ""
    assert "limits.chunk_buffers = 1: Input should be greater than or equal to 2" in captured.err
    assert run_check(tmp_path / "missing.toml") == 2
    assert "config file not found" in capsys.readouterr().err
    assert run_check(write(tmp_path, "[watch\n", "broken.toml")) == 2
    assert "not valid TOML" in capsys.readouterr().err


def test_add_parser_registers_check_config(tmp_path: Path) -> None:
    parser = argparse.ArgumentParser(prog="flyprep")
    config_command.add_parser(parser.add_subparsers(dest="command"))
    args = parser.parse_args(["check-config", str(tmp_path / "x.toml"), "--json"])
    assert args.command == "check-config" and args.json and args.func is config_command.run


def test_daemon_config_is_frozen_model() -> None:
    assert DaemonConfig.model_config["frozen"] and DaemonConfig.model_config["extra"] == "forbid"


def test_env_values_take_the_type_of_their_setting(tmp_path):
    from flyprep.config import load_daemon_config

    root = tmp_path / "incoming"
    root.mkdir()
    cfg = tmp_path / "d.toml"
    cfg.write_text(f'[watch]\nroots = ["{root}"]\n')
    config = load_daemon_config(cfg, env={"FLYPREP__SCAN__LABEL": "123",
                                          "FLYPREP__LIMITS__CHUNK_BUFFERS": "4",
                                          "FLYPREP__WATCH__ROOTS": f'["{root}"]'})
    assert config.scan.label == "123" and config.limits.chunk_buffers == 4
    with pytest.raises(ConfigError, match="inactivity_timeout_s = inf.*finite"):
        load_daemon_config(cfg, env={"FLYPREP__WATCH__INACTIVITY_TIMEOUT_S": "inf"})


def test_relative_calibration_maps_are_taken_from_the_config_or_scan_directory(tmp_path):
    from flyprep.config import load_daemon_config, load_scan_description

    root = tmp_path / "incoming"
    root.mkdir()
    cfg = tmp_path / "etc" / "d.toml"
    cfg.parent.mkdir()
    cfg.write_text(f'[watch]\nroots = ["{root}"]\n[prep]\ndark = "calib/dark.npy"\n'
                   f'flat = "/abs/flat.h5::/data"\n')
    config = load_daemon_config(cfg, env={})
    assert str(config.prep.dark) == str(tmp_path / "etc" / "calib" / "dark.npy")
    assert str(config.prep.flat) == "/abs/flat.h5::/data"
    scan = root / "s1"
    scan.mkdir()
    (scan / "flyprep-scan.toml").write_text('[prep]\nbad_pixels = "mask.npy"\n')
    assert str(load_scan_description(scan / "flyprep-scan.toml").prep.bad_pixels) == str(scan / "mask.npy")
