"""Writes a ``.ptyd`` that PtyPy can poll while it grows, with every write atomic.

Link mode: each chunk goes to its own file (temporary name, fsync, rename, directory
fsync); then a new master listing every finished chunk replaces the old one the same
way. The published master is never opened for writing, so readers holding it open with
HDF5 file locking on never block the writer and never see torn metadata.

Append mode: chunks are groups inside one file, which is built under a temporary name and
published once, when the scan ends.
"""

from __future__ import annotations

import contextlib
import io
import json
import grp
import os
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar, Literal

import h5py
import numpy as np

from .. import __version__
from ..errors import OutputError
from ..prep.chunk import PreparedChunk, PreparedPart
from .format import (ChunkProvenance, MasterPlan, ScanMeta, ScanState, chunk_file_name,
                     chunk_name_regex, now_iso, params_hash, tmp_name)
from .safefile import GuardedFile, guarded_h5, guarded_h5_file
from .storage import DataStorage, encode_weights, write_weights
from .tags import write_tagged

SaveMode = Literal["link", "append"]

if TYPE_CHECKING:
    from .resume import ResumeState


@dataclass(frozen=True)
class OutputMode:
    """How a writer opens its output, said once: :attr:`NEW` (an existing output is an
    error), :attr:`OVERWRITE` (the earlier scan at the path is removed first) or
    :meth:`resuming` a reconciled output (see :mod:`flyprep.ptyd.resume`)."""

    kind: Literal["new", "overwrite", "resume"]
    state: ResumeState | None = None

    NEW: ClassVar[OutputMode]
    OVERWRITE: ClassVar[OutputMode]

    @classmethod
    def resuming(cls, state: ResumeState) -> OutputMode:
        """Continue the scan :func:`~flyprep.ptyd.resume.apply_reconcile` left in
        ``state``: the next chunk is ``state.next_key`` at frame ``state.next_frame``."""
        return cls("resume", state)

    @property
    def next_key(self) -> int:
        """The first chunk this writer writes."""
        return 0 if self.state is None else self.state.next_key


OutputMode.NEW = OutputMode("new")
OutputMode.OVERWRITE = OutputMode("overwrite")


def fsync_path(path: Path) -> None:
    """Flush a file's (or directory's) data and metadata to the disk."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


@dataclass(frozen=True)
class FileAccess:
    """Who may read the output: the files' mode and group (None: the process's umask
    and group decide)."""

    mode: int | None = 0o640
    group: str | None = None

    def grant(self, path: Path) -> None:
        """Give ``path`` this mode and group; OSError if the group is unknown or not ours."""
        if self.mode is not None:
            os.chmod(path, self.mode)
        if self.group is not None:
            try:
                gid = grp.getgrnam(self.group).gr_gid
            except KeyError:
                raise OSError(f"no group named {self.group!r}") from None
            os.chown(path, -1, gid)


def publish(tmp: Path, final: Path) -> None:
    """Atomically put the (already fsynced) ``tmp`` in place of ``final``, durably."""
    os.replace(tmp, final)
    fsync_path(final.parent)


@dataclass(frozen=True)
class EncodedChunk:
    """A chunk with its frames and masks already encoded as finished HDF5 chunks."""

    chunk: PreparedChunk
    data: list[Any] | None  # None: HDF5's filter runs at write time
    weights: list[bytes | None] | None  # None: deflated at write time


@dataclass(frozen=True)
class EncodedPart:
    """A part with its frames already encoded (None: HDF5's filter runs at write time)."""

    part: PreparedPart
    data: list[Any] | None


def write_chunk_group(group: h5py.Group, encoded: EncodedChunk, *, storage: DataStorage) -> None:
    """Write a chunk's datasets at ``group``: one frame per HDF5 chunk for the stacks."""
    storage.write(group, "data", encoded.chunk.data, encoded.data)
    write_chunk_rest(group, encoded)


def write_chunk_rest(group: h5py.Group, encoded: EncodedChunk) -> None:
    """A chunk's datasets other than ``data``: weights, positions, indices."""
    chunk = encoded.chunk
    missing = chunk.missing if chunk.missing.any() else None
    write_weights(group, chunk.weights,
                  encoded.weights if encoded.weights is not None
                  else encode_weights(chunk.weights, missing))
    group.create_dataset("positions", data=np.asarray(chunk.positions, np.float64))
    group.create_dataset("indices", data=chunk.indices)


@dataclass
class _OpenChunk:
    """A chunk file being filled part by part, under its temporary name."""

    key: int
    frame_start: int
    n_frames: int
    tmp: Path
    file: h5py.File
    guard: GuardedFile
    data: h5py.Dataset
    closer: contextlib.ExitStack
    written: int = 0  # frames [0, written) of the chunk are stored


class PtydWriter:
    """Writes one scan's ``.ptyd``; chunks must come in key order.

    Use as a context manager: leaving it with an exception publishes the master as
    ``aborted`` (if any chunk was written) and re-raises.
    """

    def __init__(
        self,
        path: str | os.PathLike[str],
        *,
        meta: ScanMeta,
        save: SaveMode = "link",
        chunk_frames: int = 100,
        chunk_format: str = ".chunk%05d",
        compression: str = "none",
        compression_level: int = 4,
        params: dict[str, Any] | None = None,
        mode: OutputMode = OutputMode.NEW,
        access: FileAccess = FileAccess(),
    ) -> None:
        self.path = Path(path).absolute()
        self.access = access
        self.meta = meta
        self.save = save
        self.chunk_frames = chunk_frames
        self.chunk_format = chunk_format
        self.storage = DataStorage(compression, compression_level)
        self.params_json = json.dumps(params or {}, sort_keys=True, default=str)
        self.params_hash = params_hash(params or {})
        self.created = now_iso()
        self.generation = 0
        self.next_key = 0
        self.frames_written = 0
        self.missing: list[int] = []
        self.state = ScanState.ACQUIRING
        self.chunk_files: list[str] = []
        self._unpublished = False
        self._open: _OpenChunk | None = None
        if save not in ("link", "append"):
            raise OutputError(f"save must be 'link' or 'append', got {save!r}")
        if not self.path.parent.is_dir():
            raise OutputError(f"{self.path.parent}: output directory does not exist")
        if mode.kind == "resume":
            assert mode.state is not None
            self._continue_from(mode.state)
        elif mode.kind == "new" and self.path.exists():
            raise OutputError(f"{self.path}: exists already (overwrite or resume it)")
        elif mode.kind == "overwrite":
            self._remove_previous()
        self._append_tmp = self.path.with_name(tmp_name(self.path.name))
        self._master_image = master_image(meta, self.created)
        if save == "append":
            self._create_append_file()

    # -- public -------------------------------------------------------------------
    @property
    def writes_parts(self) -> bool:
        """True when :meth:`write_part` can store a chunk ahead of its last frame."""
        return self.save == "link"

    def encode(self, chunk: PreparedChunk, *, weights: bool = True) -> EncodedChunk:
        """Compress ``chunk`` (its masks too, unless ``weights`` is False) for writing; the
        frames it wrote ahead as parts are not encoded again. CPU only, no file access: a
        writer thread's producer calls it so that compression and writing run side by
        side."""
        missing = chunk.missing if chunk.missing.any() else None
        ahead = chunk.written_ahead
        data = self.storage.encode(chunk.data[ahead:],
                                   None if missing is None else missing[ahead:])
        if data is not None and ahead:
            data = [None] * ahead + data
        return EncodedChunk(chunk, data,
                            encode_weights(chunk.weights, missing) if weights else None)

    def encode_part(self, part: PreparedPart) -> EncodedPart:
        """Compress a part's frames for :meth:`write_part` (CPU only, like :meth:`encode`)."""
        return EncodedPart(part, self.storage.encode(
            part.data, part.missing if part.missing.any() else None))

    def write_part(self, part: PreparedPart | EncodedPart) -> None:
        """Store frames of the next chunk before the chunk is whole, in its temporary file,
        and start writing them to the disk: when its last frame arrives little is left to
        do. Parts of a chunk come in order; :meth:`write_chunk` then finishes the file.
        Nothing of a part is visible to readers before its chunk is published."""
        encoded = part if isinstance(part, EncodedPart) else self.encode_part(part)
        part = encoded.part
        if not self.writes_parts:
            raise OutputError(f"{self.path}: chunks are written in parts in link mode only")
        opened = self._open
        if opened is None:
            self._check_next(part.key, part.frame_start, part.chunk_frames,
                             part.data.shape[1:], what="part of chunk")
            opened = self._open_chunk_file(part.key, part.frame_start, part.chunk_frames,
                                           part.data.dtype)
        if (part.key, part.chunk_frames, part.offset) != (opened.key, opened.n_frames,
                                                          opened.written):
            self.discard_partial()  # its chunk can no longer be completed
            raise OutputError(f"{self.path}: part of chunk {part.key} at offset {part.offset} "
                              f"does not continue chunk {opened.key} at {opened.written}")
        try:
            self.storage.write_frames(opened.data, part.offset, part.data, encoded.data)
            opened.guard.start_writeback()
        except (OSError, RuntimeError, ValueError) as exc:
            self.discard_partial()
            raise OutputError(f"{opened.tmp}: could not write chunk {part.key}: {exc}") from exc
        opened.written += part.n_frames

    def discard_partial(self) -> None:
        """Drop a chunk file filled only in parts (the scan stops before its last frame):
        its frames are written again, whole, when the scan resumes."""
        opened, self._open = self._open, None
        if opened is not None:
            opened.guard.abandon()
            with contextlib.suppress(Exception):
                opened.closer.close()
            opened.tmp.unlink(missing_ok=True)

    def write_chunk(self, chunk: PreparedChunk | EncodedChunk, *, publish: bool = True) -> Path:
        """Store ``chunk`` durably, then publish a master that includes it. With
        ``publish=False`` the master waits for the next :meth:`publish` (a writer with
        more chunks queued publishes once for all of them)."""
        encoded = chunk if isinstance(chunk, EncodedChunk) else self.encode(chunk)
        chunk = encoded.chunk
        self._check_next(chunk.key, chunk.frame_start, chunk.n_frames, chunk.data.shape[1:])
        if self.save == "link":
            target = self._write_chunk_file(encoded)
        else:
            target = self._append_chunk(encoded)
        self.next_key += 1
        self.frames_written += chunk.n_frames
        self.missing.extend(int(i) for i in chunk.indices[chunk.missing])
        self._unpublished = True
        if publish:
            self.publish()
        return target

    def publish(self) -> None:
        """Publish a master listing every chunk written so far (link mode; append mode
        publishes only at close). Does nothing when nothing changed."""
        if self.save == "link" and self._unpublished and self.state == ScanState.ACQUIRING:
            self._publish_master()

    def close(self, state: ScanState = ScanState.COMPLETE) -> None:
        """Publish the final master with ``state``. Every planned frame must be written,
        or readers polling for ``num_frames`` would wait forever."""
        if self.state.final:
            return
        self.discard_partial()
        if self.frames_written != self.meta.num_frames:
            raise OutputError(
                f"{self.path}: {self.frames_written} frames written but meta/num_frames is "
                f"{self.meta.num_frames}; fill the missing frames before closing")
        self.state = ScanState(state)
        if self.save == "link":
            self._publish_master()
        else:
            self._finish_append()

    def __enter__(self) -> "PtydWriter":
        return self

    def __exit__(self, exc_type: Any, exc: Any, tb: Any) -> None:
        if exc_type is None:
            self.close(ScanState.COMPLETE)
        else:
            self.abort()

    def abort(self) -> None:
        """Give up on the scan: the chunks already published stay readable, the master
        says ``aborted``; an unpublished append file is removed."""
        if self.state.final:
            return
        self.discard_partial()
        self.state = ScanState.ABORTED
        if self.save == "link" and self.next_key > 0:
            self._publish_master()
        # An unpublished append file is left as it is: its chunks are not thrown away.

    # -- internals ------------------------------------------------------------------
    def _continue_from(self, state: ResumeState) -> None:
        """Take over a reconciled scan: its chunks, missing frames, generation, ctime."""
        if self.save != "link":
            raise OutputError(f"{self.path}: resuming needs link mode")
        if Path(state.master).absolute() != self.path:
            raise OutputError(f"{self.path}: resume state is for {state.master}")
        if state.finished:
            raise OutputError(f"{self.path}: scan is finished already, nothing to resume")
        if state.chunk_frames != self.chunk_frames or state.chunk_format != self.chunk_format:
            raise OutputError(f"{self.path}: resume state has chunk_frames "
                              f"{state.chunk_frames}/{state.chunk_format!r}, writer "
                              f"{self.chunk_frames}/{self.chunk_format!r}")
        if state.params_hash is not None and state.params_hash != self.params_hash:
            raise OutputError(f"{self.path}: kept chunks were prepared with params_hash "
                              f"{state.params_hash}, writer has {self.params_hash}")
        self.next_key = state.next_key
        self.frames_written = state.next_frame
        self.chunk_files = list(state.chunk_files)
        self.missing = [int(i) for i in state.missing_indices]
        self.generation = state.generation
        if state.created:
            self.created = state.created

    def _remove_previous(self) -> None:
        """Delete an earlier scan at this path (master first, so no reader can pair its
        meta with new chunks), its chunk files and temporary files."""
        pattern = chunk_name_regex(self.path.name, self.chunk_format)
        try:
            self.path.unlink(missing_ok=True)
            self.path.with_name(tmp_name(self.path.name)).unlink(missing_ok=True)
            for old in self.path.parent.iterdir():
                if pattern.match(old.name):
                    old.unlink()
            fsync_path(self.path.parent)
        except OSError as exc:
            raise OutputError(f"{self.path}: cannot remove the previous output: {exc}") from exc

    def _check_next(self, key: int, frame_start: int, n_frames: int,
                    frame_shape: tuple[int, ...], *, what: str = "chunk") -> None:
        """Chunk ``key`` of ``n_frames`` frames from ``frame_start`` may come next."""
        if self.state.final:
            raise OutputError(f"{self.path}: scan is {self.state}, no more chunks accepted")
        if key != self.next_key or frame_start != self.frames_written:
            raise OutputError(
                f"{self.path}: {what} {key} starting at frame {frame_start} is out "
                f"of order; expected chunk {self.next_key} at frame {self.frames_written}")
        if self.next_key > 0 and self._short_chunk_seen:
            raise OutputError(f"{self.path}: only the last chunk may be shorter than "
                              f"{self.chunk_frames} frames")
        if frame_start + n_frames > self.meta.num_frames:
            raise OutputError(f"{self.path}: chunk {key} ends at frame "
                              f"{frame_start + n_frames} > num_frames {self.meta.num_frames}")
        if tuple(frame_shape) != tuple(self.meta.shape):
            raise OutputError(f"{self.path}: chunk {key} frames are "
                              f"{tuple(frame_shape)}, meta/shape is {tuple(self.meta.shape)}")

    @property
    def _short_chunk_seen(self) -> bool:
        return self.frames_written != self.next_key * self.chunk_frames

    def _open_chunk_file(self, key: int, frame_start: int, n_frames: int,
                         dtype: np.dtype) -> _OpenChunk:
        tmp = self.path.with_name(tmp_name(chunk_file_name(self.path.name, self.chunk_format,
                                                           key)))
        closer = contextlib.ExitStack()
        try:
            f, guard = closer.enter_context(guarded_h5_file(tmp))
            data = self.storage.create(f, "data", (n_frames, *self.meta.shape), dtype)
        except (OSError, RuntimeError, ValueError) as exc:
            with contextlib.suppress(Exception):
                closer.close()
            tmp.unlink(missing_ok=True)
            raise OutputError(f"{tmp}: could not create chunk {key}: {exc}") from exc
        self._open = _OpenChunk(key, frame_start, n_frames, tmp, f, guard, data, closer)
        return self._open

    def _write_chunk_file(self, encoded: EncodedChunk) -> Path:
        chunk = encoded.chunk
        name = chunk_file_name(self.path.name, self.chunk_format, chunk.key)
        final = self.path.with_name(name)
        opened = self._open
        if chunk.written_ahead and (opened is None or opened.key != chunk.key
                                    or opened.written != chunk.written_ahead):
            self.discard_partial()
            raise OutputError(f"{final}: chunk {chunk.key} has {chunk.written_ahead} frames "
                              f"written ahead, but they were not stored")
        if opened is None:
            opened = self._open_chunk_file(chunk.key, chunk.frame_start, chunk.n_frames,
                                           chunk.data.dtype)
        prov = ChunkProvenance(
            key=chunk.key, frame_start=chunk.frame_start,
            frame_stop=chunk.frame_start + chunk.n_frames,
            frames_missing=int(np.count_nonzero(chunk.missing)), sources=chunk.sources,
            params_json=self.params_json, params_hash=self.params_hash,
            flyprep_version=__version__)
        try:
            try:
                ahead = opened.written
                self.storage.write_frames(
                    opened.data, ahead, chunk.data[ahead:],
                    None if encoded.data is None else encoded.data[ahead:])
                write_chunk_rest(opened.file, encoded)
                opened.file.attrs["flyprep"] = prov.as_json()
            finally:
                self._open = None
                opened.closer.close()  # HDF5 close, then fsync
            self.access.grant(opened.tmp)
            # The directory fsync after the master's rename makes this rename durable too.
            os.replace(opened.tmp, final)
        except (OSError, RuntimeError, ValueError) as exc:
            opened.tmp.unlink(missing_ok=True)
            raise OutputError(f"{final}: could not write chunk {chunk.key}: {exc}") from exc
        self.chunk_files.append(name)
        return final

    def _plan(self) -> MasterPlan:
        return MasterPlan(
            meta=self.meta, chunk_files=tuple(self.chunk_files), state=self.state,
            generation=self.generation, frames_written=self.frames_written,
            missing_indices=tuple(self.missing), chunk_frames=self.chunk_frames,
            params_json=self.params_json, params_hash=self.params_hash,
            flyprep_version=__version__, created=self.created)

    def _publish_master(self) -> None:
        self.generation += 1
        self._unpublished = False
        tmp = self._append_tmp
        try:
            with guarded_h5(tmp, image=self._master_image) as f:
                write_master_state(f, self._plan())
            self.access.grant(tmp)
            publish(tmp, self.path)
        except OSError as exc:
            tmp.unlink(missing_ok=True)
            raise OutputError(f"{self.path}: could not publish the master: {exc}") from exc

    def _create_append_file(self) -> None:
        try:
            with guarded_h5(self._append_tmp) as f:
                f.create_group("chunks").attrs["type"] = "dict"
        except OSError as exc:
            raise OutputError(f"{self._append_tmp}: cannot create: {exc}") from exc

    def _append_chunk(self, encoded: EncodedChunk) -> Path:
        chunk = encoded.chunk
        if chunk.written_ahead:
            raise OutputError(f"{self.path}: append mode takes whole chunks only")
        try:
            with guarded_h5(self._append_tmp, "r+") as f:
                group = f["chunks"].create_group(str(chunk.key))
                write_chunk_group(group, encoded, storage=self.storage)
        except OSError as exc:
            raise OutputError(f"{self._append_tmp}: could not append chunk "
                              f"{chunk.key}: {exc}") from exc
        return self._append_tmp

    def _finish_append(self) -> None:
        self.generation += 1
        try:
            with guarded_h5(self._append_tmp, "r+") as f:
                write_master_base(f, self.meta, self.created)
                write_master_state(f, self._plan(), links=False)
            self.access.grant(self._append_tmp)
            publish(self._append_tmp, self.path)
        except OSError as exc:
            raise OutputError(f"{self.path}: could not publish: {exc}") from exc


def write_master_base(f: h5py.File, meta: ScanMeta, created: str) -> None:
    """The part of a master that never changes during a scan: PtyPy's root attributes,
    ``meta/``, and the empty ``chunks/`` and ``flyprep/`` groups."""
    f.attrs["h5rw_version"] = "0.1"
    f.attrs["ctime"] = created
    write_tagged(f, "meta", meta.to_tagged())
    f.require_group("chunks").attrs["type"] = "dict"
    f.require_group("flyprep")


def master_image(meta: ScanMeta, created: str) -> bytes:
    """:func:`write_master_base` as an HDF5 file image, built once per scan so that each
    publication only adds links and status to a copy of it."""
    buffer = io.BytesIO()
    with h5py.File(buffer, "w") as f:
        write_master_base(f, meta, created)
    return buffer.getvalue()


def write_master_state(f: h5py.File, plan: MasterPlan, *, links: bool = True) -> None:
    """What changes from one publication to the next: ``chunks/`` links (link mode),
    ``flyprep/status`` and ``flyprep/missing_indices``, the modification time."""
    f.attrs["mtime"] = now_iso()
    if links:
        chunks = f["chunks"]
        for key, name in enumerate(plan.chunk_files):
            chunks[str(key)] = h5py.ExternalLink(name, "/")
    prov = f["flyprep"]
    prov.attrs["status"] = plan.status_json()
    prov.create_dataset("missing_indices", data=np.asarray(plan.missing_indices, np.int64))
