"""Where raw frames come from: scan directory layouts and frame readers."""

from .scan_dir import FrameRef, ScanSource, discover, read_frame, read_frames, read_map

__all__ = ["FrameRef", "ScanSource", "discover", "read_frame", "read_frames", "read_map"]
