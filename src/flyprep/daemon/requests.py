"""What each control command takes, checked before anything is done: strict JSON types
(a bool is a JSON bool, a name a string) and no unknown keys, so that a request means
exactly what it says or gets a nack that says why."""

from __future__ import annotations

from typing import TypeVar

from pydantic import BaseModel, ConfigDict, ValidationError

R = TypeVar("R", bound="Request")


class Request(BaseModel):
    """A command's parameters (the request without its ``"command"``)."""

    model_config = ConfigDict(strict=True, extra="forbid", frozen=True)


class NoParams(Request):
    """``ping``, ``version``, ``status``, ``snapshot``: nothing."""


class ScanRequest(Request):
    """``abort_scan``: the scan's name."""

    scan: str


class EndScanRequest(Request):
    """``end_scan``: the scan's name; ``abort`` (a JSON bool): the master says aborted."""

    scan: str
    abort: bool = False


class ApxHeaderRequest(Request):
    """``apx_header``: the followed ``.apx`` file's path."""

    file: str


def parse(model: type[R], params: dict[str, object]) -> R:
    """``params`` as ``model``; ValueError naming every bad key and why."""
    try:
        return model.model_validate(params)
    except ValidationError as exc:
        reasons = "; ".join(f"{'.'.join(str(p) for p in e['loc']) or 'request'}: {e['msg']}"
                            for e in exc.errors())
        raise ValueError(f"bad request: {reasons}") from None
