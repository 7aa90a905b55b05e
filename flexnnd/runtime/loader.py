"""The weight loader: one thread that streams a plan's pieces into the arena during an inference.

Per inference the compute thread calls `begin`, then before each step that reads a new piece
`wait_for(n)` (the first n loads are in), and after each step that releases a load `step_done(i)`;
the loader reads load k as soon as step `after_step` of load k has finished and load k-1 is in.
File reads release the GIL, so loading overlaps computing. Each read goes straight into the
piece's arena view with `os.preadv`, bypassing the page cache with O_DIRECT where the filesystem
allows it; what cannot go direct (a filesystem such as tmpfs that refuses O_DIRECT, or the
unaligned head and tail of a piece) is read through the page cache and its pages are dropped at
once (they would hold a second copy of the weights outside the budget). The loader checks each
streamed weight's CRC32 as its pieces arrive (zlib, ~4 GB/s here: a quarter of the read time) in a
plan's first inference, after a mismatch until an inference passes whole, when the file's size or
times differ from those of the last pass, and at least every `RECHECK_SECONDS`.
"""

from __future__ import annotations

import errno
import logging
import os
import threading
import time
import zlib
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np

from flexnnd.errors import LoadError
from flexnnd.weights_file import BUNDLE_BYTES, DIRECT_ALIGN

log = logging.getLogger("flexnnd.loader")

# Catches changes the file's size and times do not show (bit rot, a writer that restores mtime);
# each re-check costs one inference ~10-15% more on streaming-heavy plans.
RECHECK_SECONDS = 300.0
_told_no_direct: set[int] = set()  # st_dev of filesystems whose fallback was logged already


def open_weights(path: str) -> tuple[int, int | None]:
    """A buffered descriptor of the weights file and, where its filesystem allows, an O_DIRECT one."""
    fd = os.open(path, os.O_RDONLY)
    # No readahead: pages read ahead of a range outlive its DONTNEED and stay cached, uncounted.
    os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_RANDOM)
    flag = getattr(os, "O_DIRECT", 0)
    if not flag:
        _no_direct(fd, path, "this platform has no O_DIRECT")
        return fd, None
    try:
        return fd, os.open(path, os.O_RDONLY | flag)
    except OSError as e:
        if e.errno != errno.EINVAL:
            os.close(fd)
            raise
        _no_direct(fd, path, "its filesystem refuses O_DIRECT")
        return fd, None


def _file_stamp(fd: int) -> tuple[int, int, int]:
    """What an in-place write to the file changes: its size, mtime and ctime."""
    st = os.fstat(fd)
    return st.st_size, st.st_mtime_ns, st.st_ctime_ns


def _no_direct(fd: int, path: str, why: str) -> None:
    dev = os.fstat(fd).st_dev
    if dev not in _told_no_direct:
        _told_no_direct.add(dev)
        log.info("weights of %s are read through the page cache, dropped after each read: %s", path, why)


@dataclass(frozen=True)
class PieceRead:
    name: str
    view: memoryview  # the arena bytes it fills
    offset: int  # in the weights file
    after_step: int  # may start once this step is done (-1: at once)


@dataclass
class Checksum:
    """One weight's CRC32 over its pieces in row order, folded in as the streamed ones arrive.

    `parts` are (arena bytes, load index) in row order; a resident part has no load index (its
    bytes never change). Loads arrive in file order, which is row order within a weight."""

    tensor: str
    expected: int
    parts: list[tuple[memoryview, int | None]]
    _next: int = 0
    _crc: int = 0

    def restart(self) -> None:
        self._next, self._crc = 0, 0

    def arrived(self, load: int) -> bool | None:
        """Fold every part up to load `load`; whether the weight matches once complete, else None."""
        while self._next < len(self.parts):
            view, index = self.parts[self._next]
            if index is not None and index > load:
                return None
            self._crc = zlib.crc32(view, self._crc)
            self._next += 1
        return self._crc == self.expected


Reader = Callable[[int, list, int], int]  # os.preadv's signature; tests inject failures here


class Loader:
    """`checks`: the streamed weights' checksums, verified on the loader thread as their pieces
    arrive, in every inference until one passes whole (a plan's first, unless the file is bad), and
    again once the file's size or times change or `recheck_seconds` have passed since the last pass:
    a weight that fails its checksum fails the inference that reads it, at the wait for its last piece."""

    def __init__(
        self,
        path: str,
        reads: Sequence[PieceRead],
        reader: Reader = os.preadv,
        checks: Sequence[Checksum] = (),
        recheck_seconds: float = RECHECK_SECONDS,
    ):
        self.path, self.reads, self.reader = path, tuple(reads), reader
        self.recheck_seconds = recheck_seconds
        self.checks = tuple(checks)
        self._check_of = {i: c for c in self.checks for _, i in c.parts if i is not None}
        self.verifying = bool(self.checks)  # until an inference has read and checked every load
        self._fd, self._direct = open_weights(path)
        # The file's stamp before the last inference that passed whole, and when it started.
        self._verified_stamp, self._verified_at = _file_stamp(self._fd), time.monotonic()
        # joins[k]: read k continues read k-1 in the file and may share its preadv.
        self.joins = [
            k > 0 and joinable(self.reads[k - 1], r, self._direct is not None)
            for k, r in enumerate(self.reads)
        ]
        self._cond = threading.Condition()
        self._generation = 0
        self._steps_done = 0
        self._loads_done = 0
        self._busy = False
        self._error: LoadError | None = None
        self._abort = False
        self._closing = False
        # The last inference's reads (written by the loader thread, read after `end`).
        self.read_bytes, self.read_seconds = 0, 0.0
        self._thread = threading.Thread(target=self._run, name="flexnn-loader", daemon=True)
        self._thread.start()

    # ---- compute thread ----------------------------------------------------------------------
    def begin(self) -> None:
        with self._cond:
            self._generation += 1
            self._steps_done = self._loads_done = 0
            self._error, self._abort, self._busy = None, False, True
            self.read_bytes, self.read_seconds = 0, 0.0
            self._cond.notify_all()

    def wait_for(self, loads: int) -> None:
        """Block until the first `loads` loads are in; raise the loader's error if one failed."""
        with self._cond:
            while self._loads_done < loads and self._error is None:
                self._cond.wait()
            if self._error is not None:
                raise self._error

    def step_done(self, step: int) -> None:
        with self._cond:
            self._steps_done = step + 1
            self._cond.notify_all()

    def end(self) -> None:
        """After an inference (finished or failed): stop what is left and wait for the loader."""
        with self._cond:
            self._abort = True
            self._cond.notify_all()
            while self._busy:
                self._cond.wait()

    def close(self) -> None:
        with self._cond:
            self._closing = self._abort = True
            self._cond.notify_all()
        self._thread.join()
        os.close(self._fd)
        if self._direct is not None:
            os.close(self._direct)

    # ---- loader thread -----------------------------------------------------------------------
    def _run(self) -> None:
        seen = 0
        while True:
            with self._cond:
                while self._generation == seen and not self._closing:
                    self._cond.wait()
                if self._closing:
                    return
                seen = self._generation
            self._load_all()
            with self._cond:
                self._busy = False
                self._cond.notify_all()

    def _load_all(self) -> None:
        reads, k = self.reads, 0
        stamp, started = self._verified_stamp, time.monotonic()
        if self.checks:
            try:
                stamp = _file_stamp(self._fd)
            except OSError as e:
                with self._cond:
                    self._error = LoadError(f"cannot stat weights file {self.path}: {e}")
                    self._cond.notify_all()
                return
            # An in-place write changes our inode's size or times; a rename over the path leaves it as it was.
            if stamp != self._verified_stamp or started - self._verified_at >= self.recheck_seconds:
                self.verifying = True
        verifying = self.verifying
        if verifying:
            for check in self.checks:
                check.restart()
        while k < len(reads):
            with self._cond:
                while self._steps_done <= reads[k].after_step and not self._abort:
                    self._cond.wait()
                if self._abort:
                    return
                done = self._steps_done
            end, nbytes = k + 1, len(reads[k].view)
            while (
                end < len(reads)
                and self.joins[end]
                and reads[end].after_step < done
                and nbytes + len(reads[end].view) <= BUNDLE_BYTES
            ):
                nbytes += len(reads[end].view)
                end += 1
            error = self._read(reads[k:end])
            if error is None and verifying:
                error = self._verify(k, end)
            with self._cond:
                if error is not None:
                    self._error = error
                else:
                    self._loads_done = end
                self._cond.notify_all()
            if error is not None:
                return
            k = end
        if verifying:  # the stamp from before the reads: a write during them shows next time
            self._verified_stamp, self._verified_at = stamp, started
        self.verifying = False  # every streamed weight matched its checksum

    def _verify(self, first: int, end: int) -> LoadError | None:
        """Fold loads [first, end) into their weights' checksums; LoadError for one that fails."""
        for k in range(first, end):
            check = self._check_of.get(k)
            if check is not None and check.arrived(k) is False:
                return LoadError(
                    f"weight {check.tensor!r} in {self.path} fails its checksum as streamed: "
                    "the file changed since import"
                )
        return None

    def _read(self, bundle: Sequence[PieceRead]) -> LoadError | None:
        start = time.perf_counter()
        try:
            read_pieces(
                self._fd,
                [r.view for r in bundle],
                bundle[0].offset,
                [r.name for r in bundle],
                self.path,
                self.reader,
                self._direct,
            )
        except LoadError as e:
            return e
        self.read_seconds += time.perf_counter() - start
        self.read_bytes += sum(len(r.view) for r in bundle)
        return None


def _address(view: memoryview) -> int:
    return np.frombuffer(view, np.uint8).ctypes.data


def joinable(before: PieceRead, after: PieceRead, direct: bool) -> bool:
    """Whether `after` can be read by the same preadv as `before`: it follows it in the file and,
    for O_DIRECT, both sit on blocks the way their file bytes do and meet on a block boundary."""
    if after.offset != before.offset + len(before.view):
        return False
    if not direct:
        return True
    return after.offset % DIRECT_ALIGN == 0 and all(
        (_address(r.view) - r.offset) % DIRECT_ALIGN == 0 for r in (before, after)
    )


def read_piece(
    fd: int,
    view: memoryview,
    offset: int,
    name: str,
    path: str,
    reader: Reader = os.preadv,
    direct: int | None = None,
) -> None:
    """One piece straight into its arena bytes (see `read_pieces`)."""
    read_pieces(fd, [view], offset, [name], path, reader, direct)


def read_pieces(
    fd: int,
    views: Sequence[memoryview],
    offset: int,
    names: Sequence[str],
    path: str,
    reader: Reader = os.preadv,
    direct: int | None = None,
) -> None:
    """Pieces that follow each other in the file from `offset`, each straight into its arena bytes;
    LoadError naming the pieces, their size and the file when a read fails or comes up short.

    With a `direct` (O_DIRECT) descriptor, the aligned middle bypasses the page cache when the arena
    addresses and the file offsets are equally aligned (and, for several pieces, meet on block
    boundaries: see `joinable`); the rest goes through `fd` and its page-cache pages are dropped after.
    """
    nbytes = sum(len(v) for v in views)
    head, body = nbytes, 0
    if direct is not None and nbytes and (_address(views[0]) - offset) % DIRECT_ALIGN == 0:
        head = min((-offset) % DIRECT_ALIGN, nbytes)
        body = (nbytes - head) // DIRECT_ALIGN * DIRECT_ALIGN
    for start, stop, go_direct in ((0, head, False), (head, head + body, True), (head + body, nbytes, False)):
        if stop <= start:
            continue
        part = _span(views, start, stop)
        if go_direct:
            try:
                _read_range(direct, part, offset + start, reader)
                continue
            except OSError as e:
                if e.errno != errno.EINVAL:
                    raise _load_error(e, names, nbytes, offset, path) from None
                _no_direct(fd, path, f"an O_DIRECT read failed ({e})")  # then read it through the cache
        try:
            _read_range(fd, part, offset + start, reader)
        except OSError as e:
            raise _load_error(e, names, nbytes, offset, path) from None
        os.posix_fadvise(fd, offset + start, stop - start, os.POSIX_FADV_DONTNEED)


def _span(views: Sequence[memoryview], start: int, stop: int) -> list[memoryview]:
    """The views' bytes [start, stop) of their concatenation, as one buffer per view touched."""
    out, at = [], 0
    for view in views:
        lo, hi = max(start - at, 0), min(stop - at, len(view))
        if lo < hi:
            out.append(view[lo:hi])
        at += len(view)
    return out


class _ShortRead(OSError):
    pass


def _read_range(fd: int, buffers: list[memoryview], offset: int, reader: Reader) -> None:
    want = sum(len(b) for b in buffers)
    got = reader(fd, buffers, offset)
    if got != want:
        raise _ShortRead(f"{got:,} of {want:,} bytes")


def _load_error(e: OSError, names: Sequence[str], nbytes: int, offset: int, path: str) -> LoadError:
    what = (
        f"weight piece {names[0]!r}"
        if len(names) == 1
        else f"{len(names)} weight pieces {names[0]!r} .. {names[-1]!r}"
    )
    if isinstance(e, _ShortRead):
        return LoadError(f"short read of {what} from {path}: {e}")
    return LoadError(f"reading {what} ({nbytes:,} bytes at {offset:,}) from {path}: {e}")
