"""The weight loader: one thread that streams a plan's pieces into the arena during an inference.

Per inference the compute thread calls `begin`, then for each step `wait_for(n)` (the first n
loads are in) and `step_done(i)`; the loader reads load k as soon as step `after_step` of load k
has finished and load k-1 is in. File reads release the GIL, so loading overlaps computing.
Each read goes straight into the piece's arena view with one `os.preadv`, and the page cache
pages it filled are dropped at once (they would hold a second copy of the weights outside the
budget).
"""

from __future__ import annotations

import os
import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from flexnnd.errors import LoadError


@dataclass(frozen=True)
class PieceRead:
    name: str
    view: memoryview  # the arena bytes it fills
    offset: int  # in the weights file
    after_step: int  # may start once this step is done (-1: at once)


Reader = Callable[[int, list, int], int]  # os.preadv's signature; tests inject failures here


class Loader:
    def __init__(self, path: str, reads: Sequence[PieceRead], reader: Reader = os.preadv):
        self.path, self.reads, self.reader = path, tuple(reads), reader
        self._fd = os.open(path, os.O_RDONLY)
        self._cond = threading.Condition()
        self._generation = 0
        self._steps_done = 0
        self._loads_done = 0
        self._busy = False
        self._error: LoadError | None = None
        self._abort = False
        self._closing = False
        self._thread = threading.Thread(target=self._run, name="flexnn-loader", daemon=True)
        self._thread.start()

    # ---- compute thread ----------------------------------------------------------------------
    def begin(self) -> None:
        with self._cond:
            self._generation += 1
            self._steps_done = self._loads_done = 0
            self._error, self._abort, self._busy = None, False, True
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
        for k, read in enumerate(self.reads):
            with self._cond:
                while self._steps_done <= read.after_step and not self._abort:
                    self._cond.wait()
                if self._abort:
                    return
            error = self._read(read)
            with self._cond:
                if error is not None:
                    self._error = error
                else:
                    self._loads_done = k + 1
                self._cond.notify_all()
            if error is not None:
                return

    def _read(self, read: PieceRead) -> LoadError | None:
        try:
            read_piece(self._fd, read.view, read.offset, read.name, self.path, self.reader)
        except LoadError as e:
            return e
        return None


def read_piece(
    fd: int, view: memoryview, offset: int, name: str, path: str, reader: Reader = os.preadv
) -> None:
    """One piece straight into its arena bytes, its page-cache pages dropped after; LoadError
    naming the piece, its size and the file when the read fails or comes up short."""
    nbytes = len(view)
    try:
        got = reader(fd, [view], offset)
    except OSError as e:
        raise LoadError(
            f"reading weight piece {name!r} ({nbytes:,} bytes at {offset:,}) from {path}: {e}"
        ) from None
    if got != nbytes:
        raise LoadError(f"short read of weight piece {name!r} from {path}: {got:,} of {nbytes:,} bytes")
    os.posix_fadvise(fd, offset, nbytes, os.POSIX_FADV_DONTNEED)
