"""``flyprep keys NAME``: create a CURVE key pair for the daemon or for a client.

Writes NAME.key (the public key: give it away) and NAME.key_secret (the secret key, mode
600: keep it) into --dir, in pyzmq's certificate format. For the daemon: bus.curve_server_key
names the .key file, and its .key_secret file lies beside it. For a user: copy NAME.key into
the daemon's bus.curve_clients directory (may end, abort and reset scans) or its
curve_readers directory (may query and subscribe); the client commands read the secret
from bus.curve_client_key (~/.config/flyprep/client.key_secret by default).
Exit codes: 0 written, 2 a key file of that name exists (--force replaces it) or the
directory cannot be written.
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
import tempfile
from pathlib import Path
from typing import Any

from .exit_codes import ExitCode
from .registry import summary

DEFAULT_DIR = "~/.config/flyprep"


def add_parser(subparsers: Any) -> argparse.ArgumentParser:
    """Register ``keys``; returns its parser."""
    parser = subparsers.add_parser("keys", help=summary("keys"))
    parser.add_argument("name", nargs="?", default="client",
                        help="file name of the pair: NAME.key and NAME.key_secret "
                             "(default: client)")
    parser.add_argument("--dir", type=Path, default=Path(DEFAULT_DIR),
                        help=f"where to write them (default: {DEFAULT_DIR}, created mode 700)")
    parser.add_argument("--force", action="store_true", help="replace an existing pair")
    return parser


def write_pair(directory: Path, name: str, *, force: bool = False) -> tuple[Path, Path]:
    """Write ``name.key`` (mode 644) and ``name.key_secret`` (mode 600) into ``directory``;
    FileExistsError when either exists and not ``force``. The secret is never readable
    by others, not even for a moment: the pair is made in a private directory, then
    moved in."""
    import zmq.auth

    directory = directory.expanduser()
    directory.mkdir(mode=0o700, parents=True, exist_ok=True)
    public, secret = directory / f"{name}.key", directory / f"{name}.key_secret"
    if not force:
        for path in (public, secret):
            if path.exists():
                raise FileExistsError(f"{path} exists (--force replaces the pair)")
    staging = Path(tempfile.mkdtemp(prefix=".flyprep-keys-", dir=directory))  # mode 700
    try:
        made_public, made_secret = (Path(p) for p in
                                    zmq.auth.create_certificates(staging, name))
        os.chmod(made_secret, 0o600)
        os.chmod(made_public, 0o644)
        os.replace(made_secret, secret)
        os.replace(made_public, public)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return public, secret


def run(args: argparse.Namespace) -> int:
    """Write the pair; say where each file goes."""
    if not args.name or "/" in args.name or args.name.startswith("."):
        print(f"flyprep: error: key name {args.name!r}: a plain file name, please",
              file=sys.stderr)
        return ExitCode.INPUT
    try:
        public, secret = write_pair(args.dir, args.name, force=args.force)
    except (FileExistsError, OSError) as exc:
        print(f"flyprep: error: {exc}", file=sys.stderr)
        return ExitCode.INPUT
    print(f"public key: {public}\nsecret key: {secret} (mode 600: keep it)")
    print("for the daemon: bus.curve_server_key = the public key's path; for a client: "
          "copy the public key into the daemon's bus.curve_clients (or curve_readers) "
          "directory")
    return ExitCode.OK
