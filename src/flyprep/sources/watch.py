"""Watch the configured roots and report scan directories and *finished* files.

Flow (as in watchdog): emitter thread -> event queue -> observer thread -> this module's
handler -> ``on_event(WatchEvent)``. A small timer thread of the watcher does what no
file-system event can: quiet-window checks, debounced :class:`FileGrew` reports and
deferred :class:`EndMarkerSeen` reports.

When a file counts as finished (:class:`FileCompleted`, once per path):

* ``observer = "native"`` (inotify on Linux): on the close of a file opened for writing
  (``FileClosedEvent``) or on a rename into place (``FileMovedEvent``'s destination, also
  for a file moved in from outside the watched roots); never on "created" or "modified"
  alone, so a partially written file is never reported.
  Two cases have no close event to wait for and fall back to the quiet window (size and
  mtime unchanged for ``quiet_window_s``): files already present when the watcher starts
  (a restart), and files found inside a directory that was created or moved in (they may
  have been closed before the kernel watch on the new directory existed). A file found so
  whose mtime is older than the quiet window is reported at once: it has been quiet that
  long already. A close event still completes the others earlier.
* ``observer = "polling"`` (network file systems): a file counts as finished once its size
  and mtime have not changed for ``quiet_window_s`` (choose it longer than the longest
  pause of the writer).

Names matching ``ignore_patterns`` (``.*``, ``*.part``, ``*.tmp``) are never reported, nor
anything below an ignored directory or the quarantine directory. A file of a scan
directory that matches no pattern (nor is a file flyprep reads, such as ``geometry.txt``)
is reported once as :class:`FileUnmatched`, so that a pattern that misses the detector's
files is said, not silent.

Thread safety: ``on_event`` is called from the watchdog observer thread, from the
watcher's timer thread, and from the thread calling :meth:`ScanWatcher.start` (initial
scan); the calls are serialised by a lock, never concurrent, and arrive in order. It must
return quickly (hand the event to a queue) and must not call :meth:`ScanWatcher.stop`.
An exception from ``on_event`` is logged and does not stop the watcher.
"""

from __future__ import annotations

import fnmatch
import logging
import os
import re
import stat
import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path

from watchdog.events import (
    DirCreatedEvent,
    DirDeletedEvent,
    DirMovedEvent,
    FileClosedEvent,
    FileCreatedEvent,
    FileDeletedEvent,
    FileMovedEvent,
    FileSystemEvent,
    FileSystemEventHandler,
)
from watchdog.observers import Observer
from watchdog.observers.api import BaseObserver, ObservedWatch
from watchdog.observers.polling import PollingObserver

#: How long watchdog's inotify emitter holds a rename's first half to pair it with the
#: second (watchdog: 0.5 s). Its queue stalls behind a held half for the whole wait even
#: once paired, which delayed every file after a rename by up to 0.5 s (measured: 385 ms
#: stalls at 500 frames/s). Halves left unpaired are handled as moves out of and into the
#: roots, so a short wait loses nothing.
MOVE_PAIRING_S = 0.01

from ..config import WatchConfig
from ..workers import Ticker

__all__ = ["EndMarkerSeen", "FileCompleted", "FileGrew", "FileUnmatched",
           "ScanDirectoryAppeared", "ScanWatcher", "WatchEvent"]

#: Files of a scan directory flyprep reads that match no configured pattern.
KNOWN_NAMES = frozenset({"geometry.txt"})
#: Events of a listing sent together (to ``on_events``) at most.
LISTED_BATCH = 64

log = logging.getLogger(__name__)

APX_PATTERN = "*.apx"


# --------------------------------------------------------------------------- events


@dataclass(frozen=True)
class ScanDirectoryAppeared:
    """A new directory directly under a root (or one present at start)."""

    path: Path


@dataclass(frozen=True)
class FileCompleted:
    """A frame, positions, scan description or ``.apx`` file is finished (final size)."""

    path: Path
    scan_dir: Path  # the directory directly under the root holding it (the root itself
    #                 for a file directly in a root)


@dataclass(frozen=True)
class FileGrew:
    """A growing file (``*.apx``, the positions file) was appended to (debounced)."""

    path: Path


@dataclass(frozen=True)
class EndMarkerSeen:
    """The end marker appeared in ``scan_dir``; sent after the files the watcher is
    waiting on (quiet window). A frame file still open for writing in native mode is not
    among them: a consumer must still wait for its frames by count, not by this event."""

    scan_dir: Path


@dataclass(frozen=True)
class FileUnmatched:
    """A file in ``scan_dir`` matches none of the patterns: never read (reported once)."""

    path: Path
    scan_dir: Path


WatchEvent = ScanDirectoryAppeared | FileCompleted | FileGrew | EndMarkerSeen | FileUnmatched

#: Events the native observer needs when growth is not reported.
_NATIVE_EVENTS = [FileClosedEvent, FileMovedEvent, DirMovedEvent, FileCreatedEvent,
                  DirCreatedEvent, FileDeletedEvent, DirDeletedEvent]

# file kinds
_FILE, _GROWING, _MARKER, _UNMATCHED = "file", "growing", "marker", "unmatched"


@dataclass
class _Pending:
    """A file waiting for its quiet window: last seen size/mtime and since when."""

    size: int
    mtime_ns: int
    since: float


class _Handler(FileSystemEventHandler):
    def __init__(self, watcher: ScanWatcher) -> None:
        self._watcher = watcher

    def dispatch(self, event: FileSystemEvent) -> None:
        try:
            self._watcher._on_fs_event(event)
        except Exception:  # never kill the observer thread
            log.exception("watch: failed to handle %r", event)


# --------------------------------------------------------------------------- watcher


class ScanWatcher:
    """Watch ``config.roots``; call ``on_event`` with :data:`WatchEvent` objects.

    ``start()``/``stop()`` or use as a context manager. ``grow_debounce_s``: at most one
    :class:`FileGrew` per file per interval. ``on_events``: called instead of ``on_event``
    with the events of a directory listing, a batch at a time, in order. ``max_tracked``:
    bound on the per-file state
    (pending files and completed paths; the oldest are forgotten beyond it, with a
    warning; the daemon passes ``limits.max_pending_files``). ``apx_pattern``: the names
    of AstroPix files, which grow while written (the daemon passes ``apx.pattern``).
    """

    def __init__(self, config: WatchConfig, on_event: Callable[[WatchEvent], None], *,
                 grow_debounce_s: float = 0.25, max_tracked: int = 100_000,
                 apx_pattern: str = APX_PATTERN, report_growth: bool = True,
                 on_events: Callable[[list[WatchEvent]], None] | None = None) -> None:
        self.config = config
        self._apx_pattern = apx_pattern
        self._on_event = on_event
        self._on_events = on_events
        # The events of a listing running in this thread, sent together (LISTED_BATCH).
        self._listing = threading.local()
        self._roots = [Path(r) for r in config.roots]
        # Classification runs for every event and every file listed: strings and one
        # compiled pattern per kind instead of pathlib and fnmatch per pattern.
        self._root_prefixes = [(os.fspath(r).rstrip(os.sep) + os.sep, r) for r in self._roots]
        self._ignore_re = _any_of(config.ignore_patterns)
        self._frame_re = _any_of(config.frame_patterns)
        self._apx_re = _any_of([apx_pattern])
        self._grow_debounce_s = grow_debounce_s
        self._max_tracked = max_tracked
        self._polling = config.observer == "polling"
        self._report_growth = report_growth
        # Without growth reports the kernel need not send a modify event per write() (most
        # of the events a detector writer causes): only closes, renames, creates, deletes.
        self._event_filter = None if report_growth or self._polling else _NATIVE_EVENTS
        limits = [0.25, max(grow_debounce_s / 2, 0.01)]
        if config.quiet_window_s > 0:
            limits.append(config.quiet_window_s / 4)
        self._tick_s = max(0.01, min(limits))
        self._lock = threading.RLock()
        self._appeared: set[Path] = set()
        # Directories walked by the listing of a directory moved in: watchdog reports each
        # subdirectory of it as created too, with a watch already on it before that
        # listing (inotify adds them when it sees the move), so nothing in it is new.
        self._listed: OrderedDict[str, None] = OrderedDict()
        # The scan directory of the files in each directory (every event and every file
        # listed asks; a Path built each time cost most of a listing).
        self._scan_dir_in: dict[str, Path | None] = {}
        self._completed: OrderedDict[Path, None] = OrderedDict()
        self._pending: OrderedDict[Path, _Pending] = OrderedDict()
        self._grow_dirty: dict[Path, None] = {}
        self._grow_last: dict[Path, float] = {}
        self._markers_pending: dict[Path, None] = {}
        self._markers_seen: set[Path] = set()
        self._observer: BaseObserver | None = None
        self._timer: Ticker | None = None
        self._handler = _Handler(self)
        # Directories scheduled with the observer (roots; scan directories when not
        # recursive), with their watch so that one moved away or deleted can be dropped.
        self._watched_dirs: dict[Path, ObservedWatch] = {}

    # ---- lifecycle

    def start(self) -> ScanWatcher:
        """Start the observer and the timer thread, then report what already exists."""
        if self._observer is not None:
            raise RuntimeError("watcher already started")
        c = self.config
        observer: BaseObserver = (PollingObserver(timeout=c.poll_interval_s) if self._polling
                                  else _native_observer())
        for root in self._roots:
            self._watched_dirs[root] = observer.schedule(
                self._handler, str(root), recursive=c.recursive, event_filter=self._event_filter)
        observer.daemon = True
        observer.start()
        self._observer = observer
        self._timer = Ticker("watch-timer", self._tick_s, self._tick).start()
        try:
            self._initial_scan()
        except BaseException:
            self.stop()
            raise
        return self

    def stop(self, timeout_s: float = 10.0) -> None:
        """Stop and join the observer and timer threads (idempotent)."""
        observer, self._observer = self._observer, None
        timer, self._timer = self._timer, None
        if observer is not None:
            observer.stop()
            observer.join(timeout_s)
        if timer is not None:
            timer.stop_and_join(timeout_s)
        self._watched_dirs.clear()  # a later start() schedules its watches anew

    def __enter__(self) -> ScanWatcher:  # noqa: PYI034 (Self needs Python 3.11)
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    @property
    def pending_count(self) -> int:
        """Files waiting for their quiet window."""
        with self._lock:
            return len(self._pending)

    # ---- classification

    def scan_dir_of(self, path: str | os.PathLike[str]) -> Path | None:
        """The directory directly under a root holding ``path`` (the root for a file
        directly in it); None if outside the roots or below an ignored/quarantine dir."""
        text = os.fspath(path)
        # Every file of a directory asks the same: answered once per directory.
        folder = text.rpartition(os.sep)[0]
        try:
            return self._scan_dir_in[folder]
        except KeyError:
            pass
        if len(self._scan_dir_in) >= self._max_tracked:
            self._scan_dir_in.clear()
        found = self._scan_dir_in[folder] = self._scan_dir_of_text(text)
        return found

    def _scan_dir_of_text(self, text: str) -> Path | None:
        for prefix, root in self._root_prefixes:
            if text.startswith(prefix):
                dirs = text[len(prefix):].split(os.sep)[:-1]
                if any(d == self.config.quarantine_dir or self._ignored(d) for d in dirs):
                    return None
                return root / dirs[0] if dirs else root
        return None

    def _ignored(self, name: str) -> bool:
        return self._ignore_re.match(name) is not None

    def _kind(self, name: str) -> str | None:
        c = self.config
        if self._ignored(name):
            return None
        if c.end_marker is not None and name == c.end_marker:
            return _MARKER
        if name == c.positions_file or self._apx_re.match(name):
            return _GROWING
        if name == c.scan_file or self._frame_re.match(name):
            return _FILE
        return None if name in KNOWN_NAMES else _UNMATCHED

    # ---- watchdog events (observer thread)

    def _on_fs_event(self, event: FileSystemEvent) -> None:
        kind = event.event_type
        if kind in ("created", "modified") and not event.is_directory and not self._polling:
            text = os.fsdecode(event.src_path)
            if self._kind(text.rpartition(os.sep)[2]) == _FILE:
                self._frame_file_created(text)
                return
        src = Path(os.fsdecode(event.src_path))
        dest = Path(os.fsdecode(event.dest_path)) if event.dest_path else None
        if event.is_directory:
            if kind == "created":
                self._dir_arrived(src)
            elif kind == "moved":
                if event.src_path:
                    self._forget_under(src)
                if dest is not None:
                    self._dir_arrived(dest, moved=True)
            elif kind == "deleted":
                self._forget_under(src)
            return
        if kind == "closed":  # close after write
            self._file_finished(src)
        elif kind == "moved":
            # With full inotify events, a move out of the roots has no destination and a
            # move in from outside has no source.
            if event.src_path:
                self._forget(src)
            if dest is None:
                return
            if self._polling:
                self._file_touched(dest, created=True)
            else:
                self._file_finished(dest)
        elif kind == "created":
            self._file_touched(src, created=True)
        elif kind == "modified":
            self._file_touched(src, created=False)
        elif kind == "deleted":
            self._forget(src)

    def _dir_arrived(self, path: Path, *, moved: bool = False) -> None:
        """A directory was created or moved in: maybe a new scan directory; its contents
        may predate the kernel watch, so they go to the quiet-window table."""
        if self.scan_dir_of(path / "x") is None or self._ignored(path.name):
            return
        new_scan = path.parent in self._roots
        if new_scan:
            with self._lock:
                self._announce(path)
            if not self.config.recursive:
                self._watch_dir(path)
        if not self.config.recursive and not new_scan:
            return
        if os.fspath(path) in self._listed:
            return  # walked by the listing of a directory above it, moved in with it
        self._found_all(self._list_files(path, remember=moved), trust_age=not self._polling)

    def _classified(self, path: Path) -> tuple[str, Path] | None:
        """``(kind, scan directory)`` of a file to report, else None. Its scan is announced
        first (the polling observer may report a new directory's files before the
        directory), and an end marker is dealt with here (None)."""
        kind, scan_dir = self._kind(path.name), self.scan_dir_of(path)
        if kind is None or scan_dir is None:
            return None
        with self._lock:
            self._announce(scan_dir)
            if kind == _MARKER:
                self._marker(scan_dir)
                return None
            if kind == _UNMATCHED:
                if scan_dir not in self._roots and path not in self._completed:
                    self._completed[path] = None  # reported once, as a finished file is
                    self._emit(FileUnmatched(path, scan_dir))
                return None
        return kind, scan_dir

    def _file_finished(self, path: Path) -> None:
        classified = self._classified(path)
        if classified is not None:
            with self._lock:
                self._complete(path, classified[1])

    def _frame_file_created(self, text: str) -> None:
        """A frame file appeared or was written to (native observer): a close or a move
        finishes it; this only shows its scan (a directory moved in brings one such event
        per file, so no Path is made here)."""
        scan_dir = self.scan_dir_of(text)
        if scan_dir is not None and scan_dir not in self._appeared:
            with self._lock:
                self._announce(scan_dir)

    def _file_touched(self, path: Path, *, created: bool) -> None:
        classified = self._classified(path)
        if classified is None:
            return
        kind = classified[0]
        with self._lock:
            # A growing file is reported when it appears (so that it can be followed
            # while written), and on each append only with report_growth.
            if kind == _GROWING and (created or self._report_growth):
                self._grow_dirty[path] = None
            if self._polling and path not in self._completed:
                self._track(path)

    # ---- state changes (under the lock)

    def _announce(self, scan_dir: Path) -> None:
        # is_dir: inotify goes on reporting a directory moved away under its old path.
        if scan_dir not in self._appeared and scan_dir not in self._roots \
                and scan_dir.is_dir():
            self._appeared.add(scan_dir)
            self._emit(ScanDirectoryAppeared(scan_dir))

    def _complete(self, path: Path, scan_dir: Path, *, regular: bool = False) -> None:
        self._pending.pop(path, None)
        if path in self._completed or not (regular or path.is_file()):
            return
        self._completed[path] = None
        while len(self._completed) > self._max_tracked:
            self._completed.popitem(last=False)
        self._grow_dirty.pop(path, None)
        self._grow_last.pop(path, None)
        self._emit(FileCompleted(path, scan_dir))

    def _track(self, path: Path) -> None:
        if path in self._pending:
            return
        try:
            st = path.stat()
        except OSError:
            return
        self._pending[path] = _Pending(st.st_size, st.st_mtime_ns, time.monotonic())
        if len(self._pending) > self._max_tracked:
            dropped, _ = self._pending.popitem(last=False)
            log.warning("watch: more than %d pending files; forgot %s",
                        self._max_tracked, dropped)

    def _marker(self, scan_dir: Path) -> None:
        if scan_dir not in self._markers_seen:
            self._markers_seen.add(scan_dir)
            self._markers_pending[scan_dir] = None
        self._flush_markers()

    def _flush_markers(self) -> None:
        for scan_dir in list(self._markers_pending):
            if not any(scan_dir in p.parents for p in self._pending):
                del self._markers_pending[scan_dir]
                self._emit(EndMarkerSeen(scan_dir))

    def _forget(self, path: Path) -> None:
        with self._lock:
            self._pending.pop(path, None)
            self._completed.pop(path, None)
            self._grow_dirty.pop(path, None)
            self._grow_last.pop(path, None)

    def _forget_under(self, directory: Path) -> None:
        with self._lock:
            for table in (self._pending, self._completed, self._grow_dirty, self._grow_last):
                for p in [p for p in table if directory in p.parents]:
                    del table[p]
            top = os.fspath(directory)
            for d in [d for d in self._listed if d == top or d.startswith(top + os.sep)]:
                del self._listed[d]
            self._appeared.discard(directory)
            self._markers_seen.discard(directory)
            self._markers_pending.pop(directory, None)
            watch = None if directory in self._roots else self._watched_dirs.pop(directory, None)
        observer = self._observer
        if watch is not None and observer is not None:
            # Its watch follows the directory wherever it went (inotify watches inodes):
            # dropped, so that a new directory of that name gets a watch of its own.
            # watchdog allows this from inside a handler.
            try:
                observer.unschedule(watch)
            except (KeyError, RuntimeError, OSError) as exc:
                log.debug("watch: could not drop the watch of %s: %s", directory, exc)

    def _emit(self, event: WatchEvent) -> None:
        batch = getattr(self._listing, "batch", None)
        if batch is not None:  # a listing in this thread: sent together, in order
            batch.append(event)
            if len(batch) >= LISTED_BATCH:
                self._send_batch()
            return
        try:
            self._on_event(event)
        except Exception:
            log.exception("watch: on_event failed for %r", event)

    def _send_batch(self) -> None:
        batch, self._listing.batch = self._listing.batch, []
        if not batch:
            return
        try:
            if self._on_events is not None:
                self._on_events(batch)
            else:
                for event in batch:
                    self._on_event(event)
        except Exception:
            log.exception("watch: on_event failed for %d events from %r", len(batch),
                          batch[0])

    # ---- initial scan and directory listing

    def relist(self, scan_dir: Path) -> None:
        """Report ``scan_dir``'s files again as at a start (its scan is prepared again from
        its files): those quiet for the quiet window at once, the others once finished."""
        with self._lock:
            for table in (self._pending, self._completed):
                for p in [p for p in table if scan_dir in p.parents]:
                    del table[p]
            self._markers_seen.discard(scan_dir)
            self._markers_pending.pop(scan_dir, None)
        self._found_all(self._list_files(scan_dir), trust_age=True)

    def _initial_scan(self) -> None:
        for root in self._roots:
            with os.scandir(root) as it:
                entries = sorted(it, key=lambda e: e.name)
            for entry in entries:
                if entry.is_dir() and not self._ignored(entry.name) \
                        and entry.name != self.config.quarantine_dir:
                    with self._lock:
                        self._announce(root / entry.name)
                    if not self.config.recursive:
                        self._watch_dir(root / entry.name)
            self._found_all(self._list_files(root, nested=self.config.recursive), trust_age=True)
            if not self.config.recursive:
                for entry in entries:
                    if (root / entry.name) in self._appeared:
                        self._found_all(self._list_files(root / entry.name, nested=False),
                                        trust_age=True)

    def _found_all(self, files: Iterable[Path], *, trust_age: bool) -> None:
        """:meth:`_found` for each file, end markers last: a marker listed before the
        files it follows must still wait for them. What the listing finds is reported in
        batches (``on_events``), in order."""
        outer = getattr(self._listing, "batch", None) is not None
        if not outer:
            self._listing.batch = []
        try:
            markers = []
            for file in files:
                if self.config.end_marker is not None and file.name == self.config.end_marker:
                    markers.append(file)
                else:
                    self._found(file, trust_age=trust_age)
            for file in markers:
                self._found(file, trust_age=trust_age)
        finally:
            if not outer:
                self._send_batch()
                self._listing.batch = None

    def _list_files(self, top: Path, *, nested: bool | None = None,
                    remember: bool = False) -> Iterable[Path]:
        """The files under ``top`` (in its subdirectories too when ``nested``) in name
        order; ``remember``: note the subdirectories walked as listed."""
        nested = self.config.recursive if nested is None else nested
        for dirpath, dirnames, filenames in os.walk(top):
            dirnames[:] = sorted(d for d in dirnames if not self._ignored(d)
                                 and d != self.config.quarantine_dir) if nested else []
            if nested and remember and dirpath != os.fspath(top):
                with self._lock:
                    self._listed[dirpath] = None
                    while len(self._listed) > self._max_tracked:
                        self._listed.popitem(last=False)
            base = Path(dirpath)
            for name in sorted(filenames):
                yield base / name

    def _found(self, path: Path, *, trust_age: bool) -> None:
        """A file seen by listing, not by an event: complete if its mtime is older than
        the quiet window (with ``trust_age``), else track it."""
        classified = self._classified(path)
        if classified is None:
            return
        kind, scan_dir = classified
        try:
            st = path.stat()  # outside the lock (network file systems can be slow)
        except OSError:
            return
        if not stat.S_ISREG(st.st_mode):
            return
        with self._lock:
            if path in self._completed or path in self._pending:
                return  # listed before (a directory created, then listed by its parent)
            if trust_age and time.time() - st.st_mtime >= self.config.quiet_window_s:
                self._complete(path, scan_dir, regular=True)
            else:
                self._track(path)
                if kind == _GROWING:
                    self._grow_dirty[path] = None  # being written: report it, to follow
            if self._markers_pending:
                self._flush_markers()

    def _watch_dir(self, path: Path) -> None:
        """Non-recursive mode: watch a scan directory itself (not its subdirectories)."""
        observer = self._observer
        if observer is None or path in self._watched_dirs:
            return
        self._watched_dirs[path] = observer.schedule(self._handler, str(path), recursive=False,
                                                     event_filter=self._event_filter)

    # ---- timer thread

    def _tick(self) -> None:
        with self._lock:
            paths = list(self._pending)
        stats: dict[Path, tuple[int, int] | None] = {}
        for path in paths:  # stat outside the lock (network file systems can be slow)
            try:
                st = path.stat()
                stats[path] = (st.st_size, st.st_mtime_ns)
            except OSError:
                stats[path] = None
        now = time.monotonic()
        with self._lock:
            for path, seen in stats.items():
                entry = self._pending.get(path)
                if entry is None:
                    continue
                if seen is None:
                    del self._pending[path]
                elif seen != (entry.size, entry.mtime_ns):
                    entry.size, entry.mtime_ns, entry.since = seen[0], seen[1], now
                elif now - entry.since >= self.config.quiet_window_s:
                    scan_dir = self.scan_dir_of(path)
                    if scan_dir is None:
                        del self._pending[path]
                    else:
                        self._complete(path, scan_dir)
            for path in list(self._grow_dirty):
                if now - self._grow_last.get(path, -1e9) >= self._grow_debounce_s:
                    del self._grow_dirty[path]
                    self._grow_last[path] = now
                    self._emit(FileGrew(path))
            self._flush_markers()


def _native_observer() -> BaseObserver:
    """The platform's observer. On Linux, inotify with full move events (a rename from or
    to outside the watch is a move with one side empty, not a creation or deletion:
    a finished file moved into a scan directory must count as finished) and a short
    pairing wait (:data:`MOVE_PAIRING_S`)."""
    import sys

    if not sys.platform.startswith("linux"):
        return Observer()
    from watchdog.observers.inotify import InotifyObserver

    try:
        from watchdog.observers.inotify_move_event_grouper import (
            InotifyMoveEventGrouper as Pairing,
        )
    except ImportError:  # watchdog < 7
        from watchdog.observers.inotify_buffer import InotifyBuffer as Pairing
    Pairing.delay = MOVE_PAIRING_S
    return InotifyObserver(generate_full_events=True)


def _any_of(patterns: Iterable[str]) -> re.Pattern[str]:
    """One compiled pattern matching a whole name against any of the shell ``patterns``
    (case-sensitive, as ``fnmatch.fnmatchcase``)."""
    parts = [fnmatch.translate(p) for p in patterns]
    return re.compile("|".join(parts) if parts else "(?!)")
