"""Preparation of raw detector frames with PtyPy's ``PtyScan`` semantics."""

from .chunk import PreparedChunk, PreparedPart
from .kernels import center_from_spec, mass_center
from .plan import Calibration, Preparation

__all__ = ["Calibration", "PreparedChunk", "PreparedPart", "Preparation", "center_from_spec", "mass_center"]
