"""Configuration models: one frozen pydantic model per section, PtyPy parameter names.

A TOML file maps onto :class:`PrepareConfig` section by section (``[geometry]``,
``[prep]``, ``[output]``, ``[scan]``, ``[input]``). Unknown keys are refused.
:class:`DaemonConfig` is the ``flyprep run`` daemon's config (docs/configuration.md).
"""

from __future__ import annotations

import json
import os
import re
import sys
import types
import typing
from pathlib import Path
from typing import Any, Literal, Mapping, Optional, Tuple, Union

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    StrictBool,
    ValidationError,
    ValidationInfo,
    field_validator,
    model_validator,
)
from pydantic_core import PydanticCustomError

from .endpoints import check_endpoint, is_local_endpoint
from .errors import ConfigError

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib

Compression = Literal["none", "gzip", "lzf", "bitshuffle-lz4"]


class Section(BaseModel):
    """Base of every config section: immutable, unknown keys refused."""

    model_config = ConfigDict(frozen=True, extra="forbid", allow_inf_nan=False)


class GeometryConfig(Section):
    """What PtyPy stores in ``meta/``: energy in keV, distance and pixel size in metres."""

    energy: Optional[float] = Field(None, gt=0, description="photon energy, keV")
    distance: Optional[float] = Field(None, gt=0, description="sample-detector distance, m")
    psize: Optional[Union[float, Tuple[float, float]]] = Field(
        None, description="raw detector pixel size, m (before rebinning)")
    propagation: Literal["farfield", "nearfield"] = "farfield"

    @field_validator("psize")
    @classmethod
    def _positive_psize(cls, v: Any) -> Any:
        values = v if isinstance(v, tuple) else (v,)
        if v is not None and any(p <= 0 for p in values):
            raise ValueError("pixel size must be positive")
        return v


class PrepConfig(Section):
    """PtyScan preparation parameters (PtyPy's names)."""

    shape: Optional[int] = Field(None, ge=1, description="square ROI side in raw pixels; None: full frame")
    center: Optional[Union[Literal["fftshift", "geometric", "fft"], Tuple[float, float]]] = "fftshift"
    auto_center: StrictBool = Field(False, description="centre of mass of the first chunk, when no "
                                                 "center is given (as in PtyPy)")
    orientation: Optional[Union[int, Tuple[bool, bool, bool]]] = None
    rebin: int = Field(1, ge=1, le=32)
    rebin_mode: Literal["mean", "sum"] = "mean"
    dark: Optional[Path] = None
    flat: Optional[Path] = None
    bad_pixels: Optional[Path] = Field(None, description="map whose nonzero pixels are ignored")
    saturation: Optional[float] = Field(None, description="raw values at or above it get weight 0")
    dtype: Literal["auto", "int32", "uint32", "uint16", "float32", "float64"] = "auto"

    @field_validator("orientation")
    @classmethod
    def _orientation_range(cls, v: Any) -> Any:
        if isinstance(v, int) and not 0 <= v <= 7:
            raise ValueError("orientation must be an integer 0-7 or (transpose, flipud, fliplr)")
        return v

    @model_validator(mode="after")
    def _centre_given(self) -> "PrepConfig":
        # PtyPy uses the centre of mass only when no centre is given; asking for
        # auto_center without a centre therefore means "no centre", and an unset
        # centre means auto_center.
        if self.auto_center and "center" not in self.model_fields_set:
            object.__setattr__(self, "center", None)
        if self.center is None:
            object.__setattr__(self, "auto_center", True)
        if self.shape is not None and self.shape % self.rebin:
            raise ValueError(f"rebin {self.rebin} does not divide shape {self.shape}")
        return self


class OutputConfig(Section):
    """How the ``.ptyd`` is laid out on disk."""

    save: Literal["link", "append"] = "link"
    chunk_frames: int = Field(100, ge=1, le=100_000)
    chunk_format: str = ".chunk%05d"
    compression: Compression = "none"
    compression_level: int = Field(4, ge=0, le=9, description="gzip level")
    file_mode: Optional[str] = Field(
        "0640", description="octal mode of the chunk and master files; null: the umask's")
    group: Optional[str] = Field(
        None, description="group given to the output files (readers of the output join it)")

    @field_validator("file_mode")
    @classmethod
    def _file_mode(cls, v: Optional[str]) -> Optional[str]:
        if v is not None and (not re.fullmatch(r"0?[0-7]{3}", v) or int(v, 8) & 0o600 != 0o600):
            raise ValueError("must be an octal mode such as \"0640\" that lets the owner "
                             "read and write")
        return v

    @field_validator("chunk_format")
    @classmethod
    def _one_integer_field(cls, v: str) -> str:
        try:
            a, b = v % 0, v % 1
        except (TypeError, ValueError) as exc:
            raise ValueError(f"must contain exactly one integer field such as %05d ({exc})") from exc
        if a == b or "/" in v:
            raise ValueError("must contain one integer field and no '/'")
        return v


FrameDtype = Literal["uint8", "uint16", "uint32", "int8", "int16", "int32", "int64",
                     "float32", "float64"]


class ScanConfig(Section):
    """Per-scan facts: the planned number of frames, a label, and what the detector
    writes (when given, these decide instead of the first frames)."""

    num_frames: Optional[int] = Field(None, ge=1, description="planned frames; None: from positions")
    label: Optional[str] = None
    frame_shape: Optional[Tuple[int, int]] = Field(
        None, description="raw frame (rows, columns); None: agreed by the first frames")
    frame_dtype: Optional[FrameDtype] = Field(
        None, description="raw frame type; None: agreed by the first frames")
    frames_per_file: Optional[int] = Field(
        None, ge=1, description="frames in each HDF5 stack file (the last may hold fewer); "
                                "None: read from each file")

    @field_validator("frame_shape")
    @classmethod
    def _positive_shape(cls, v: Any) -> Any:
        if v is not None and min(v) < 1:
            raise ValueError("frame_shape must be two positive integers (rows, columns)")
        return v


class InputConfig(Section):
    """Where raw frames and positions come from for ``flyprep prepare``."""

    layout: Literal["auto", "ptypy", "hdf5"] = "auto"
    dataset: str = "/entry/data/data"
    frame_glob: str = "*.h5"
    positions: Optional[Path] = None
    positions_dataset: Optional[str] = None
    positions_units: float = Field(1.0, gt=0, description="factor turning positions into metres")


class PrepareConfig(Section):
    """Everything ``flyprep prepare`` needs, one section each."""

    geometry: GeometryConfig = GeometryConfig()
    prep: PrepConfig = PrepConfig()
    output: OutputConfig = OutputConfig()
    scan: ScanConfig = ScanConfig()
    input: InputConfig = InputConfig()


def format_validation_error(exc: ValidationError, source: str) -> str:
    """One line per bad value: the dotted key, the value given and the reason."""
    lines = [f"{source}: invalid configuration"]
    for err in exc.errors():
        key = ".".join(str(p) for p in err["loc"]) or "(top level)"
        value = err.get("input")
        msg = err["msg"].removeprefix("Value error, ")
        if isinstance(value, dict):  # a check across several keys of a section
            lines.append(f"  {key}: {msg}")
        else:
            lines.append(f"  {key} = {value!r}: {msg}")
    return "\n".join(lines)


def parse_config(data: dict[str, Any], *, source: str = "<config>") -> PrepareConfig:
    """Validate a nested dict into a :class:`PrepareConfig`, or raise :class:`ConfigError`."""
    try:
        return PrepareConfig.model_validate(data)
    except ValidationError as exc:
        raise ConfigError(format_validation_error(exc, source)) from exc


def load_toml(path: str | Path) -> dict[str, Any]:
    """Read a TOML file into a dict; a syntax error names the file."""
    path = Path(path)
    try:
        with path.open("rb") as fh:
            return tomllib.load(fh)
    except FileNotFoundError as exc:
        raise ConfigError(f"{path}: config file not found") from exc
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{path}: not valid TOML: {exc}") from exc


def merge(base: dict[str, Any], override: dict[str, Any]) -> dict[str, Any]:
    """Nested dict merge: ``override`` wins, sections merge key by key."""
    out = dict(base)
    for key, value in override.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = merge(out[key], value)
        else:
            out[key] = value
    return out


# ---------------------------------------------------------------------------
# The ``flyprep run`` daemon: one TOML file, sections below, FLYPREP__ overrides.
# ---------------------------------------------------------------------------

ENV_PREFIX = "FLYPREP__"

def _bound_port(value: str) -> str:
    """A daemon's endpoint: clients must find it, so no random port; an ipc socket must be
    a file (an abstract one, ``ipc://@name``, has no mode: anyone could connect)."""
    if value.startswith("tcp://") and value.endswith(":*"):
        raise ValueError("a random port (*) cannot be found by clients; give a port number")
    if value.startswith("ipc://@"):
        raise ValueError("an abstract ipc socket has no file mode, so anyone on the machine "
                         "could connect; give a path")
    return value


def _plain_name(value: Optional[str]) -> Optional[str]:
    if value is not None and (not value.strip() or "/" in value or "\\" in value or value in (".", "..")):
        raise ValueError("must be a plain file name inside the scan directory (no '/')")
    return value


def _resolve(path: Path, info: ValidationInfo) -> Path:
    """``~`` expanded; a relative path is taken from the config file's directory."""
    path = path.expanduser()
    base = (info.context or {}).get("base_dir")
    if not path.is_absolute() and base is not None:
        path = Path(base) / path
    return path


class WatchConfig(Section):
    """Which directories are watched, and when a frame file counts as finished."""

    roots: list[Path] = Field(..., min_length=1, description="existing directories; new scan "
                                                             "directories appear below them")
    recursive: StrictBool = True
    observer: Literal["native", "polling"] = Field(
        "native", description="native: close-after-write / rename events (inotify); "
                              "polling: size+mtime scans, for network file systems")
    poll_interval_s: float = Field(1.0, gt=0, le=3600)
    quiet_window_s: float = Field(2.0, ge=0, le=3600,
                                  description="polling: a file unchanged this long is finished")
    frame_patterns: list[str] = Field(["*.h5", "*.npy"], min_length=1,
                                      description="frame files: HDF5 files, and the .npy "
                                                  "frames of PtyPy's layout")
    ignore_patterns: list[str] = [".*", "*.tmp", "*.part"]
    positions_file: Optional[str] = Field("positions.txt", description='"": positions come '
                                          "per frame, from input.positions_dataset")
    scan_file: str = "flyprep-scan.toml"
    end_marker: Optional[str] = Field("flyprep-scan.done", description='"": no end marker')
    inactivity_timeout_s: float = Field(600.0, gt=0, description="scan ends after this long "
                                                                 "without a new frame")
    frame_timeout_s: float = Field(60.0, gt=0, description="a file still unfinished after this "
                                                           "long is quarantined")
    read_retries: int = Field(3, ge=0, le=100)
    retry_delay_s: float = Field(0.5, ge=0, le=600)
    quarantine_dir: str = "flyprep-quarantine"

    @field_validator("roots", mode="before")
    @classmethod
    def _one_root(cls, v: Any) -> Any:
        return [v] if isinstance(v, (str, Path)) else v

    @field_validator("roots")
    @classmethod
    def _existing_roots(cls, v: list[Path], info: ValidationInfo) -> list[Path]:
        roots = [_resolve(p, info) for p in v]
        for root in roots:
            # `flyprep run` checks at startup instead (a mount may come late: exit 3, retried)
            if (info.context or {}).get("require_roots", True) and not root.is_dir():
                raise ValueError(f"root {str(root)!r} does not exist or is not a directory")
        if len(set(roots)) != len(roots):
            raise ValueError("a root is listed twice")
        return roots

    @field_validator("frame_patterns", "ignore_patterns")
    @classmethod
    def _patterns(cls, v: list[str]) -> list[str]:
        if any(not p.strip() or "/" in p for p in v):
            raise ValueError("patterns must be non-empty file-name globs without '/'")
        return v

    @field_validator("positions_file", "end_marker", mode="before")
    @classmethod
    def _none_as_empty(cls, v: Any) -> Any:
        # TOML has no null: "" turns these off (per-frame positions; no end marker).
        return None if v == "" else v

    @field_validator("positions_file", "scan_file", "end_marker", "quarantine_dir")
    @classmethod
    def _names(cls, v: Optional[str]) -> Optional[str]:
        return _plain_name(v)

    @field_validator("quiet_window_s")
    @classmethod
    def _quiet_after_poll(cls, v: float, info: ValidationInfo) -> float:
        if info.data.get("observer") == "polling" and v < info.data.get("poll_interval_s", 0):
            raise ValueError(f"must be at least poll_interval_s ({info.data['poll_interval_s']}) "
                             "with the polling observer")
        return v

    @field_validator("frame_timeout_s")
    @classmethod
    def _timeout_after_quiet(cls, v: float, info: ValidationInfo) -> float:
        # A file can need the quiet window to count as finished while later ones are
        # finished at once: it must not be declared missing meanwhile.
        quiet = info.data.get("quiet_window_s", 0) + (
            info.data.get("poll_interval_s", 0) if info.data.get("observer") == "polling" else 0)
        if v <= 2 * quiet:
            raise ValueError(f"must be more than twice the quiet window ({quiet:g} s with the "
                             "poll interval): a file in its quiet window is not missing")
        return v


class DaemonInputConfig(Section):
    """How frame files are read (the watch section says which files)."""

    layout: Literal["auto", "ptypy", "hdf5"] = "auto"
    dataset: str = "/entry/data/data"
    positions_dataset: Optional[str] = None
    positions_units: float = Field(1.0, gt=0, description="factor turning positions into metres")

    @field_validator("dataset")
    @classmethod
    def _absolute_dataset(cls, v: str) -> str:
        if not v.startswith("/"):
            raise ValueError("HDF5 dataset path must start with '/'")
        return v


class DaemonOutputConfig(OutputConfig):
    """:class:`OutputConfig` plus where each scan's ``.ptyd`` goes."""

    directory: Optional[Path] = Field(None, description="None: next to the scan directory")
    name: str = Field("{scan}.ptyd", description="{scan}: the scan directory's name; {root}: "
                                                 "the watched root's name")
    usid_view: StrictBool = Field(False, description="when a scan ends, also write its h5USID "
                                                     "view (SCAN_usid.h5 beside the .ptyd)")

    @field_validator("directory", mode="before")
    @classmethod
    def _next_to_scan(cls, v: Any) -> Any:
        return None if v in ("", "next-to-scan") else v

    @field_validator("directory")
    @classmethod
    def _directory(cls, v: Optional[Path], info: ValidationInfo) -> Optional[Path]:
        if v is None:
            return v
        v = _resolve(v, info)
        if v.exists() and not v.is_dir():
            raise ValueError(f"{str(v)!r} exists and is not a directory")
        return v

    @field_validator("name")
    @classmethod
    def _name(cls, v: str) -> str:
        if "/" in v or not v.endswith(".ptyd") or "{scan}" not in v:
            raise ValueError("must contain {scan}, end in .ptyd and have no '/'")
        try:
            v.format(scan="x", root="y")
        except (KeyError, IndexError, ValueError) as exc:
            raise ValueError(f"only {{scan}} and {{root}} may be substituted ({exc!r})") from exc
        return v


class BusConfig(Section):
    """ZeroMQ endpoints. Only loopback tcp or ipc unless ``allow_remote``."""

    allow_remote: StrictBool = Field(False, description="allow tcp endpoints on non-loopback addresses")
    events: str = Field("tcp://127.0.0.1:5570", description="PUB socket: progress and scan events")
    control: str = Field("tcp://127.0.0.1:5571", description="ROUTER socket: control commands")
    send_hwm: int = Field(1000, ge=1, le=10_000_000,
                          description="messages queued per slow subscriber before dropping")
    control_timeout_s: float = Field(5.0, gt=0, le=3600)
    max_request_bytes: int = Field(1 << 20, ge=1024, le=1 << 30,
                                   description="larger control requests are refused unread")
    heartbeat_s: float = Field(1.0, gt=0, le=3600,
                               description="daemon.heartbeat interval on the events socket")
    ipc_mode: str = Field("0660", pattern=r"^0?[0-7]{3}$",
                          description="mode of the daemon's ipc socket files (octal): who "
                                      "may connect, control commands included")
    ipc_group: Optional[str] = Field(None, description="group of the ipc socket files")
    curve_server_key: Optional[Path] = Field(
        None, description="the daemon's CURVE public key file (flyprep keys server); its "
                          "secret is the .key_secret file beside it. Set: every tcp "
                          "endpoint needs CURVE")
    curve_clients: Optional[Path] = Field(
        None, description="directory of the public keys (*.key) of clients authorised to "
                          "end, abort and reset, as well as to query and subscribe")
    curve_readers: Optional[str] = Field(
        None, description='clients that may only query and subscribe: "any" (whoever knows '
                          "the server's public key) or a directory of their public keys; "
                          "unset: the authorised clients alone")
    curve_client_key: Path = Field(
        Path("~/.config/flyprep/client.key_secret"),
        description="the secret key client commands use (each user's own: ~ is the home "
                    "of whoever runs them; FLYPREP_CLIENT_KEY overrides it)")

    @field_validator("curve_server_key", "curve_clients")
    @classmethod
    def _key_path(cls, v: Optional[Path], info: ValidationInfo) -> Optional[Path]:
        return None if v is None else _resolve(v, info)

    @field_validator("curve_readers")
    @classmethod
    def _readers(cls, v: Optional[str], info: ValidationInfo) -> Optional[str]:
        if v is None or v == "any":
            return v
        if not v.strip():
            raise ValueError('expected "any" or a directory of public keys')
        return str(_resolve(Path(v), info))

    @field_validator("events", "control")
    @classmethod
    def _endpoint(cls, v: str, info: ValidationInfo) -> str:
        check_endpoint(v)
        if not info.data.get("allow_remote", False) and not is_local_endpoint(v):
            raise ValueError("not a loopback or ipc endpoint; set bus.allow_remote = true "
                             "to listen on other interfaces")
        return _bound_port(v)

    @model_validator(mode="after")
    def _different(self) -> "BusConfig":
        if self.curve_server_key is None:
            for key in ("events", "control"):
                if not is_local_endpoint(getattr(self, key)):
                    raise _remote_without_curve(f"bus.{key}", getattr(self, key))
            if self.curve_clients is not None or self.curve_readers is not None:
                raise PydanticCustomError("flyprep_key", "{reason}", {
                    "key": "bus.curve_server_key", "value": None,
                    "reason": "curve_clients and curve_readers need the server's key"})
        elif self.curve_clients is None and self.curve_readers is None:
            raise PydanticCustomError("flyprep_key", "{reason}", {
                "key": "bus.curve_clients", "value": None,
                "reason": "with CURVE, name the authorised clients' key directory "
                          "(curve_clients) or who may read (curve_readers)"})
        if self.control == self.events:  # defaults included
            raise PydanticCustomError("flyprep_key", "{reason}", {
                "key": "bus.control", "value": self.control,
                "reason": f"the same endpoint as bus.events ({self.events}); each socket "
                          "needs its own"})
        return self


def _remote_without_curve(key: str, value: str) -> PydanticCustomError:
    return PydanticCustomError("flyprep_key", "{reason}", {
        "key": key, "value": value,
        "reason": "a remote endpoint needs CURVE authentication: set bus.curve_server_key "
                  "and bus.curve_clients (flyprep keys writes the keys)"})


class LimitsConfig(Section):
    """Bounds on memory and work in flight."""

    chunk_buffers: int = Field(4, ge=2, le=1024, description="fixed pool of chunk buffers")
    part_bytes: int = Field(4 << 20, ge=0, le=1 << 34,
                            description="write a filling chunk in parts of this size; 0: whole")
    max_scans: int = Field(4, ge=1, le=1024, description="scans prepared at the same time")
    max_pending_files: int = Field(100_000, ge=1, description="finished files waiting to be read")
    min_free_bytes: int = Field(1 << 30, ge=0, description="below this much free space on "
                                                           "the output's file system, scans "
                                                           "pause until space returns")
    disk_check_s: float = Field(1.0, gt=0, le=60, description="free space checked this often")
    ended_kept_s: float = Field(86400.0, gt=0, description="ended scans stay in status this "
                                                           "long (seconds)")
    stall_s: float = Field(120.0, gt=0, le=86400,
                           description="a scan's thread silent, or its writer busy with one "
                                       "chunk, this long makes the daemon unhealthy: the "
                                       "systemd watchdog pings stop (seconds)")


class ApxConfig(Section):
    """Following growing AstroPix ``.apx`` files."""

    follow: StrictBool = False
    pattern: str = "*.apx"
    stream: str = Field("tcp://127.0.0.1:5572",
                        description="PUB socket for the records (exact bytes) and decoded hits")
    hits: StrictBool = Field(True, description="also decode the records into hits (apx.readouts)")
    finish_quiet_s: float = Field(2.0, ge=0, le=3600,
                                  description="after its scan ends, a file is followed until "
                                              "it has not grown for this long")

    @field_validator("stream")
    @classmethod
    def _endpoint(cls, v: str) -> str:
        return _bound_port(check_endpoint(v))

    @field_validator("pattern")
    @classmethod
    def _pattern(cls, v: str) -> str:
        if not v.strip() or "/" in v:
            raise ValueError("must be a non-empty file-name glob without '/'")
        return v


class LogConfig(Section):
    """How the daemon logs (one line per record on stderr)."""

    format: Literal["text", "json"] = Field(
        "text", description="text, or one JSON object per line (time, level, logger, "
                            "message, exception)")


class MetricsConfig(Section):
    """Prometheus metrics over HTTP (``/metrics``)."""

    enabled: StrictBool = False
    address: str = Field("127.0.0.1", description="address the HTTP server binds; not "
                                                  "loopback only with bus.allow_remote")
    port: int = Field(9464, ge=1, le=65535)


class DaemonConfig(Section):
    """Everything ``flyprep run`` needs. ``scan`` holds defaults a scan file may override."""

    watch: WatchConfig
    input: DaemonInputConfig = DaemonInputConfig()
    geometry: GeometryConfig = GeometryConfig()
    prep: PrepConfig = PrepConfig()
    output: DaemonOutputConfig = DaemonOutputConfig()
    scan: ScanConfig = ScanConfig()
    bus: BusConfig = BusConfig()
    limits: LimitsConfig = LimitsConfig()
    apx: ApxConfig = ApxConfig()
    log: LogConfig = LogConfig()
    metrics: MetricsConfig = MetricsConfig()

    @model_validator(mode="after")
    def _metrics_address(self) -> "DaemonConfig":
        if self.metrics.enabled and not self.bus.allow_remote and \
                not is_local_endpoint(f"tcp://{self.metrics.address}:{self.metrics.port}"):
            raise PydanticCustomError("flyprep_key", "{reason}", {
                "key": "metrics.address", "value": self.metrics.address,
                "reason": "not a loopback address; set bus.allow_remote = true to serve "
                          "metrics on other interfaces"})
        return self

    @model_validator(mode="after")
    def _apx_stream(self) -> "DaemonConfig":
        stream = self.apx.stream
        if stream in (self.bus.events, self.bus.control):
            raise PydanticCustomError("flyprep_key", "{reason}", {
                "key": "apx.stream", "value": stream,
                "reason": "must differ from bus.events and bus.control"})
        if not self.bus.allow_remote and not is_local_endpoint(stream):
            raise PydanticCustomError("flyprep_key", "{reason}", {
                "key": "apx.stream", "value": stream,
                "reason": "not a loopback or ipc endpoint; set bus.allow_remote = true "
                          "to listen on other interfaces"})
        if self.bus.curve_server_key is None and not is_local_endpoint(stream):
            raise _remote_without_curve("apx.stream", stream)
        return self


def parse_env_value(text: str, *, section: str | None = None, key: str | None = None) -> Any:
    """A TOML scalar or array (``8``, ``1.5``, ``true``, ``["a", "b"]``), else the text
    itself; for a setting that takes text or a path, always the text (a label ``123``
    stays a string)."""
    if section is not None and key is not None and _takes_text(section, key):
        return text
    try:
        return tomllib.loads(f"v = {text}")["v"]
    except tomllib.TOMLDecodeError:
        return text


def _takes_text(section: str, key: str) -> bool:
    """True when ``[section] key`` of the daemon config holds a string or a path."""
    outer = DaemonConfig.model_fields.get(section)
    fields = getattr(outer.annotation, "model_fields", {}) if outer is not None else {}
    inner = fields.get(key)
    if inner is None:
        return False
    annotation = inner.annotation
    if typing.get_origin(annotation) not in (None, typing.Union, getattr(types, "UnionType", None)):
        return False  # list[...], tuple[...]: TOML arrays
    kinds = typing.get_args(annotation) or (annotation,)
    return all(kind in (str, Path, type(None)) for kind in kinds)


def env_overrides(env: Mapping[str, str]) -> tuple[dict[str, Any], dict[tuple[str, str], str]]:
    """``FLYPREP__SECTION__KEY=value`` variables as a nested dict, and which variable set what."""
    data: dict[str, Any] = {}
    origin: dict[tuple[str, str], str] = {}
    for name in sorted(env):
        if not name.upper().startswith(ENV_PREFIX):
            continue
        parts = name[len(ENV_PREFIX):].lower().split("__")
        if len(parts) != 2 or not all(parts):
            raise ConfigError(f"environment: {name}: expected FLYPREP__SECTION__KEY")
        section, key = parts
        data.setdefault(section, {})[key] = parse_env_value(env[name], section=section, key=key)
        origin[(section, key)] = name
    return data, origin


def format_daemon_errors(exc: ValidationError, source: str,
                         origin: Mapping[tuple[str, str], str] | None = None) -> str:
    """Like :func:`format_validation_error`, naming the environment variable a value came from."""
    lines = [f"{source}: invalid configuration"]
    for err in exc.errors():
        ctx = err.get("ctx") or {}
        if "key" in ctx and "reason" in ctx:
            key, value, msg = ctx["key"], ctx.get("value"), ctx["reason"]
            loc = tuple(key.split("."))
        else:
            loc = tuple(str(p) for p in err["loc"])
            key = ".".join(loc) or "(top level)"
            value, msg = err.get("input"), err["msg"].removeprefix("Value error, ")
        where = (origin or {}).get(loc[:2]) if len(loc) >= 2 else None
        suffix = f" (from environment {where})" if where else ""
        if isinstance(value, dict):
            lines.append(f"  {key}: {msg}{suffix}")
        else:
            lines.append(f"  {key} = {value!r}: {msg}{suffix}")
    return "\n".join(lines)


def parse_daemon_config(data: dict[str, Any], *, source: str = "<config>",
                        base_dir: str | Path | None = None,
                        origin: Mapping[tuple[str, str], str] | None = None,
                        require_roots: bool = True) -> DaemonConfig:
    """Validate a nested dict into a :class:`DaemonConfig`, or raise :class:`ConfigError`."""
    data = _anchor_calibration(data, base_dir)
    try:
        return DaemonConfig.model_validate(data, context={"base_dir": base_dir,
                                                          "require_roots": require_roots})
    except ValidationError as exc:
        raise ConfigError(format_daemon_errors(exc, source, origin)) from exc


def load_daemon_config(path: str | Path, env: Mapping[str, str] | None = None, *,
                       require_roots: bool = True) -> DaemonConfig:
    """The TOML file, then ``FLYPREP__SECTION__KEY`` variables from ``env`` (default
    ``os.environ``), validated together. Relative paths are taken from the file's directory.
    Raises :class:`ConfigError` listing every bad key with its value and the reason.
    ``require_roots=False`` leaves the existence of ``watch.roots`` to be checked later."""
    path = Path(path)
    data = load_toml(path)
    overrides, origin = env_overrides(os.environ if env is None else env)
    return parse_daemon_config(merge(data, overrides), source=str(path),
                               base_dir=path.resolve().parent, origin=origin,
                               require_roots=require_roots)


def _toml_value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (int, float)):
        return repr(value)
    if isinstance(value, (list, tuple)):
        return "[" + ", ".join(_toml_value(v) for v in value) + "]"
    return json.dumps(str(value))


def to_toml(config: BaseModel | Mapping[str, Mapping[str, Any]]) -> str:
    """A config (model, or ``{section: {key: value}}``) as TOML, one ``[section]`` each;
    unset values as comments."""
    data = config.model_dump(mode="json") if isinstance(config, BaseModel) else config
    out: list[str] = []
    for section, values in data.items():
        out.append(f"[{section}]")
        for key, value in values.items():
            out.append(f"# {key} = (unset)" if value is None else f"{key} = {_toml_value(value)}")
        out.append("")
    return "\n".join(out)


class ScanDescription(Section):
    """A scan's own settings, from the scan file in its directory (``flyprep-scan.toml``).

    Top-level ``label``, ``num_frames``, ``frame_shape``, ``frame_dtype`` and
    ``frames_per_file``; ``[geometry]`` and ``[prep]`` override the daemon config's
    sections key by key."""

    label: Optional[str] = None
    num_frames: Optional[int] = Field(None, ge=1)
    frame_shape: Optional[Tuple[int, int]] = None
    frame_dtype: Optional[FrameDtype] = None
    frames_per_file: Optional[int] = Field(None, ge=1)
    geometry: GeometryConfig = GeometryConfig()
    prep: PrepConfig = PrepConfig()


CALIBRATION_KEYS = ("dark", "flat", "bad_pixels")
#: Top-level keys of a scan description that override the config's ``[scan]``.
SCAN_FACTS = ("label", "num_frames", "frame_shape", "frame_dtype", "frames_per_file")


def _anchor_calibration(data: dict[str, Any], base_dir: str | Path | None) -> dict[str, Any]:
    """``[prep]`` calibration maps given as relative paths, taken from ``base_dir``."""
    prep = data.get("prep")
    if base_dir is None or not isinstance(prep, dict):
        return data
    prep = dict(prep)
    for key in CALIBRATION_KEYS:
        value = prep.get(key)
        if isinstance(value, str) and value and not Path(value).expanduser().is_absolute():
            prep[key] = str(Path(base_dir) / value)
    return {**data, "prep": prep}


def load_scan_description(path: str | Path) -> ScanDescription:
    """Read and validate a scan description file, or raise :class:`ConfigError`. Relative
    calibration paths in its ``[prep]`` are taken from the scan directory."""
    data = _anchor_calibration(load_toml(path), Path(path).resolve().parent)
    try:
        return ScanDescription.model_validate(data)
    except ValidationError as exc:
        raise ConfigError(format_daemon_errors(exc, str(path))) from exc


def scan_settings(config: DaemonConfig, description: ScanDescription | None = None,
                  *, source: str = "scan description") -> PrepareConfig:
    """The :class:`PrepareConfig` for one scan: the daemon's defaults with the scan
    description's scan facts, geometry and prep overrides (re-validated together)."""
    desc = description or ScanDescription()
    scan = merge(config.scan.model_dump(exclude_unset=True),
                 desc.model_dump(include=set(SCAN_FACTS), exclude_unset=True))
    output = config.output.model_dump(exclude={"directory", "name", "usid_view"})
    inp = config.input.model_dump()
    inp["frame_glob"] = config.watch.frame_patterns[0]
    data = {
        "geometry": merge(config.geometry.model_dump(exclude_unset=True),
                          desc.geometry.model_dump(exclude_unset=True)),
        "prep": merge(config.prep.model_dump(exclude_unset=True),
                      desc.prep.model_dump(exclude_unset=True)),
        "output": output, "scan": scan, "input": inp,
    }
    return parse_config(data, source=source)
