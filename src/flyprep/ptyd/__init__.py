"""PtyPy ``.ptyd`` files: layout, atomic writer, validating reader, verifier."""

from .format import ScanMeta, chunk_file_name
from .reader import ChunkArrays, ChunkEntry, PtydFile, PtydMeta, open_ptyd
from .verify import Finding, verify
from .writer import OutputMode, PtydWriter

__all__ = ["ChunkArrays", "ChunkEntry", "Finding", "OutputMode", "PtydFile", "PtydMeta", "PtydWriter",
           "ScanMeta", "chunk_file_name", "open_ptyd", "verify"]
