"""The command line's registry: every command listed with its summary; ``flyprep --help``
and the daemon's client commands load only what they use (issue 14: they start at once)."""

from __future__ import annotations

import json
import subprocess
import sys

from flyprep.cli.main import build_parser, main
from flyprep.cli.registry import COMMANDS

HEAVY = ("numpy", "h5py", "pydantic", "watchdog", "rich", "hdf5plugin")


def loaded_after(argv: list[str]) -> set[str]:
    """The top-level modules a fresh interpreter has loaded once the parser for ``argv``
    is built and the command line parsed."""
    code = ("import sys, json\nfrom flyprep.cli.main import build_parser\n"
            f"argv = {argv!r}\n"
            "try:\n    build_parser(argv).parse_args(argv)\nexcept SystemExit:\n    pass\n"
            "print(json.dumps(sorted({m.split('.')[0] for m in sys.modules})))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         check=True).stdout
    return set(json.loads(out.splitlines()[-1]))


def test_help_lists_every_command_and_loads_none_of_them() -> None:
    loaded = loaded_after(["--help"])
    assert not loaded & set(HEAVY) and "zmq" not in loaded
    text = subprocess.run([sys.executable, "-m", "flyprep.cli", "--help"], capture_output=True,
                          text=True, check=True).stdout
    for name, (_, summary) in COMMANDS.items():
        assert name in text and summary.split()[0] in text


def test_status_loads_pyzmq_and_nothing_heavy() -> None:
    loaded = loaded_after(["status", "--endpoint", "ipc:///nowhere"])
    assert "zmq" not in loaded and not loaded & set(HEAVY)  # parsing alone: not even zmq
    code = ("import sys, json\nfrom flyprep.cli.main import main\n"
            "main(['status', '--endpoint', 'ipc:///nowhere/x', '--timeout', '0.1'])\n"
            "print(json.dumps(sorted({m.split('.')[0] for m in sys.modules})))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True).stdout
    loaded = set(json.loads(out.splitlines()[-1]))
    assert "zmq" in loaded and not loaded & set(HEAVY), loaded & set(HEAVY)


def test_every_registered_command_builds_with_its_summary() -> None:
    parser = build_parser()
    commands = next(a for a in parser._actions if a.dest == "command")
    assert set(commands.choices) == set(COMMANDS)
    for name, (_, summary) in COMMANDS.items():
        helps = {a.dest: a.help for a in commands._choices_actions}
        assert helps[name] == summary
        assert commands.choices[name].epilog and "exit codes" in commands.choices[name].epilog


def test_version_is_looked_up_only_when_asked(capsys) -> None:
    from flyprep import __version__

    try:
        main(["--version"])
    except SystemExit as exc:
        assert exc.code == 0
    assert capsys.readouterr().out.strip() == f"flyprep {__version__}"
