"""A scan's frames, in index order, to a ``.ptyd``: the frame book (frames into chunks),
the frame order (which frame is next, and as what), the scan run (book, preparer and
writer, pushed typed items), resume, and the offline ``prepare``."""

from .items import (FailedFrame, FrameItem, MissingFrame, ReadyFrame, RunItem, ScanEnd,
                    frame_item)
from .prepare import prepare_scan
from .preparer import (ChunkPreparer, effective_config, load_calibration, require_geometry,
                       scan_meta, writer_params)
from .scan_run import CHUNK_BUFFERS, PART_BYTES, PrepareSummary, ScanRun, parts_of, run_scan

__all__ = ["CHUNK_BUFFERS", "ChunkPreparer", "FailedFrame", "FrameItem", "MissingFrame",
           "PART_BYTES", "PrepareSummary", "ReadyFrame", "RunItem", "ScanEnd", "ScanRun",
           "effective_config", "frame_item", "load_calibration", "parts_of", "prepare_scan",
           "require_geometry", "run_scan", "scan_meta", "writer_params"]
