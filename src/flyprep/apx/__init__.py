"""AstroPix ``.apx`` files: reading, writing, following growing files, decoding hits.

Stands on its own (numpy only; h5py for HDF5 conversion). The format and the decoding
rules are described in ``docs/apx-format.md``.
"""

from .decode import HIT_DTYPE, DecodedBatch, decode_batch, decode_readout
from .format import (ApxFormatError, ApxHeader, ApxTruncatedError, Readout, ReadoutBatch,
                     open_apx)
from .stream import ApxStreamer
from .tail import ApxTailer

__all__ = ["HIT_DTYPE", "ApxFormatError", "ApxHeader", "ApxStreamer", "ApxTailer",
           "ApxTruncatedError", "DecodedBatch", "Readout", "ReadoutBatch", "decode_batch",
           "decode_readout", "open_apx"]
