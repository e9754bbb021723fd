"""Fixtures for the .ptyd tests."""

from pathlib import Path

import pytest

from flyprep.ptyd import ScanMeta

DATA = Path(__file__).resolve().parents[1] / "data"


@pytest.fixture
def meta() -> ScanMeta:
    return ScanMeta(num_frames=50, shape=(16, 16), center=(8.0, 8.0), psize=(1e-4, 1e-4),
                    energy=6.2, distance=7.0, label="test scan")


@pytest.fixture
def fixture_ptyd() -> Path:
    return DATA / "ptyd" / "sample.ptyd"
