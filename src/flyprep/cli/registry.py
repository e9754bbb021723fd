"""Every ``flyprep`` command: the module that declares it (``add_parser(subparsers)``) and
runs it (``run(args) -> int``), and its one-line summary. Nothing else is imported here, so
that ``flyprep --help`` and each command load only what they use."""

from __future__ import annotations

COMMANDS: dict[str, tuple[str, str]] = {
    "prepare": ("flyprep.cli.prepare",
                "prepare a finished scan directory into a .ptyd"),
    "inspect": ("flyprep.cli.inspect",
                "print the tree, meta and chunks of a .ptyd"),
    "verify": ("flyprep.cli.verify",
               "check a .ptyd against every rule of the format"),
    "export-usid": ("flyprep.cli.export_usid",
                    "an h5USID view of a .ptyd (pyUSID, pycroscopy)"),
    "run": ("flyprep.cli.run",
            "run the daemon: watch, prepare, write, publish"),
    "status": ("flyprep.cli.status",
               "show the scans of a running flyprep daemon"),
    "events": ("flyprep.cli.events",
               "print a running daemon's events as they come"),
    "end-scan": ("flyprep.cli.end_scan",
                 "end a running scan of the daemon now"),
    "check-config": ("flyprep.cli.check_config",
                     "validate a flyprep run config and print the effective values"),
    "keys": ("flyprep.cli.keys",
             "create a CURVE key pair (daemon or client)"),
    "apx": ("flyprep.cli.apx",
            "AstroPix .apx files: dump, decode hits, convert, follow a growing file"),
    "simulate": ("flyprep.cli.simulate",
                 "write a realistic scan as it is measured (frames, positions, an .apx file) at a set rate"),
    "example": ("flyprep.cli.example",
                "write a synthetic finished scan directory"),
    "demo": ("flyprep.cli.demo",
             "simulate a scan and prepare it live with the daemon"),
}


def summary(command: str) -> str:
    """The one line ``flyprep --help`` shows for ``command``."""
    return COMMANDS[command][1]
