"""Configuration models: one frozen pydantic model per section, PtyPy parameter names.

A TOML file maps onto :class:`PrepareConfig` section by section (``[geometry]``,
``[prep]``, ``[output]``, ``[scan]``, ``[input]``). Unknown keys are refused.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any, Literal, Optional, Tuple, Union

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from .errors import ConfigError

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib

Compression = Literal["none", "gzip", "lzf", "bitshuffle-lz4"]


class Section(BaseModel):
    """Base of every config section: immutable, unknown keys refused."""

    model_config = ConfigDict(frozen=True, extra="forbid")


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
    auto_center: bool = Field(False, description="centre of mass of the first chunk, when no "
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


class ScanConfig(Section):
    """Per-scan facts: the planned number of frames and a label."""

    num_frames: Optional[int] = Field(None, ge=1, description="planned frames; None: from positions")
    label: Optional[str] = None


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
