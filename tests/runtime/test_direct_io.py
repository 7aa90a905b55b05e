"""Weight reads bypass the page cache with O_DIRECT where the filesystem allows it, and fall back
to buffered reads whose pages are dropped after (said once in the log) where it does not."""

from __future__ import annotations

import errno
import logging
import mmap
import os
from pathlib import Path

import numpy as np
import pytest

from flexnnd.runtime import loader as loader_mod
from flexnnd.runtime.loader import DIRECT_ALIGN, open_weights, read_piece


def _weights(path: Path, nbytes: int) -> bytes:
    data = np.random.default_rng(0).integers(0, 256, nbytes, dtype=np.uint8).tobytes()
    path.write_bytes(data)
    return data


def _direct_allowed(path: Path) -> bool:
    try:
        os.close(os.open(path, os.O_RDONLY | os.O_DIRECT))
    except OSError as e:
        if e.errno == errno.EINVAL:
            return False
        raise
    return True


def _recording(calls):
    def reader(fd, buffers, offset):
        calls.append((fd, offset, sum(len(b) for b in buffers)))
        return os.preadv(fd, buffers, offset)

    return reader


@pytest.mark.parametrize(
    ("arena_offset", "file_offset", "nbytes"),
    [
        (0, 0, 5 * DIRECT_ALIGN),  # all aligned: one direct read
        (100, 100, 3 * DIRECT_ALIGN + 7),  # equally misaligned: buffered head and tail, direct middle
        (64, 0, 3 * DIRECT_ALIGN),  # arena and file aligned differently: all buffered
        (0, 0, 1000),  # shorter than a block: buffered
    ],
)
def test_reads_go_direct_where_aligned(tmp_path, arena_offset, file_offset, nbytes):
    path = tmp_path / "weights.bin"
    data = _weights(path, 8 * DIRECT_ALIGN)
    if not _direct_allowed(path):
        pytest.skip(f"the filesystem of {tmp_path} refuses O_DIRECT")
    arena = mmap.mmap(-1, 8 * DIRECT_ALIGN)  # page-aligned, as the runtime's arena
    view = memoryview(arena)[arena_offset : arena_offset + nbytes]
    fd, direct = open_weights(str(path))
    calls = []
    try:
        assert direct is not None
        read_piece(fd, view, file_offset, "w", str(path), _recording(calls), direct)
    finally:
        os.close(fd)
        os.close(direct)
    assert bytes(view) == data[file_offset : file_offset + nbytes]
    direct_bytes = sum(n for f, _, n in calls if f == direct)
    if (arena_offset - file_offset) % DIRECT_ALIGN == 0:
        assert direct_bytes == (nbytes - (-file_offset) % DIRECT_ALIGN) // DIRECT_ALIGN * DIRECT_ALIGN
    else:
        assert direct_bytes == 0
    assert sum(n for _, _, n in calls) == nbytes
    view.release()
    arena.close()


def _read_back_twice(path: Path, data: bytes) -> list[int | None]:
    directs = []
    for _ in range(2):
        fd, direct = open_weights(str(path))
        directs.append(direct)
        arena = mmap.mmap(-1, 2 * DIRECT_ALIGN)
        view = memoryview(arena)
        try:
            read_piece(fd, view, DIRECT_ALIGN, "w", str(path), direct=direct)
        finally:
            os.close(fd)
            if direct is not None:
                os.close(direct)
        assert bytes(view) == data[DIRECT_ALIGN : 3 * DIRECT_ALIGN]
        view.release()
        arena.close()
    return directs


def test_tmpfs_reads_direct_or_falls_back_and_says_so_once(caplog, monkeypatch):
    """tmpfs refuses O_DIRECT before Linux 6.6 and accepts it since: either way the bytes arrive,
    and a refusal is said once per filesystem."""
    shm = Path("/dev/shm")
    if not shm.is_dir() or not os.access(shm, os.W_OK):
        pytest.skip("no writable /dev/shm (tmpfs) here")
    path = shm / f"flexnn-test-{os.getpid()}.bin"
    data = _weights(path, 4 * DIRECT_ALIGN)
    monkeypatch.setattr(loader_mod, "_told_no_direct", set())
    caplog.set_level(logging.INFO, logger="flexnnd.loader")
    try:
        allowed = _direct_allowed(path)
        directs = _read_back_twice(path, data)
    finally:
        path.unlink()
    said = [r.getMessage() for r in caplog.records if "page cache" in r.getMessage()]
    if allowed:
        assert None not in directs and not said
    else:
        assert directs == [None, None]
        assert len(said) == 1 and "refuses O_DIRECT" in said[0]


def refuse_o_direct(monkeypatch) -> None:
    """The loader's os.open fails with EINVAL for O_DIRECT, as filesystems without it do."""
    real_open = os.open

    def refusing_open(name, flags, *args):
        if flags & os.O_DIRECT:
            raise OSError(errno.EINVAL, "Invalid argument")
        return real_open(name, flags, *args)

    monkeypatch.setattr(loader_mod.os, "open", refusing_open)


def test_a_filesystem_refusing_o_direct_gets_buffered_reads_said_once(tmp_path, caplog, monkeypatch):
    path = tmp_path / "weights.bin"
    data = _weights(path, 4 * DIRECT_ALIGN)
    refuse_o_direct(monkeypatch)
    monkeypatch.setattr(loader_mod, "_told_no_direct", set())
    caplog.set_level(logging.INFO, logger="flexnnd.loader")
    assert _read_back_twice(path, data) == [None, None]
    said = [r.getMessage() for r in caplog.records if "page cache" in r.getMessage()]
    assert len(said) == 1 and "refuses O_DIRECT" in said[0]


def test_a_direct_read_refused_falls_back_to_the_page_cache(tmp_path, monkeypatch, caplog):
    path = tmp_path / "weights.bin"
    data = _weights(path, 4 * DIRECT_ALIGN)
    if not _direct_allowed(path):
        pytest.skip(f"the filesystem of {tmp_path} refuses O_DIRECT")
    fd, direct = open_weights(str(path))

    def refusing(f, buffers, offset):
        if f == direct:
            raise OSError(errno.EINVAL, "Invalid argument")
        return os.preadv(f, buffers, offset)

    monkeypatch.setattr(loader_mod, "_told_no_direct", set())
    caplog.set_level(logging.INFO, logger="flexnnd.loader")
    arena = mmap.mmap(-1, 4 * DIRECT_ALIGN)
    view = memoryview(arena)[: 2 * DIRECT_ALIGN]
    try:
        read_piece(fd, view, 0, "w", str(path), refusing, direct)
    finally:
        os.close(fd)
        os.close(direct)
    assert bytes(view) == data[: 2 * DIRECT_ALIGN]
    assert any("O_DIRECT read failed" in r.getMessage() for r in caplog.records)
    view.release()
    arena.close()


def test_streamed_pieces_are_placed_for_direct_reads(tmp_path):
    """The planner puts each streamed piece where its arena offset and file offset agree modulo
    DIRECT_ALIGN (the arena itself is page-aligned), so the loader can read it all with O_DIRECT."""
    import flexnnd
    from flexnnd.graph.package import read_package
    from flexnnd.planner.ladder import stored_ladder
    from tests.conftest import save
    from tests.runtime.test_streaming import fc_chain

    package = read_package(
        flexnnd.import_model(
            save(fc_chain(layers=6), tmp_path / "fc.onnx"), tmp_path / "pkg", calibration_dir=tmp_path
        )
    )
    streamed = 0
    for plan in stored_ladder(package):
        for load in plan.loads:
            piece = plan.pieces[load.piece]
            entry = package.weights[piece.tensor]
            file_offset = entry.offset + piece.start * (entry.nbytes // entry.shape[0])
            assert (plan.region[load.piece].offset - file_offset) % DIRECT_ALIGN == 0, load
            streamed += 1
    assert streamed


def _cached_bytes(path: Path) -> int:
    """Bytes of the file in the page cache (mincore on a read-only mapping, which faults nothing in)."""
    import ctypes

    size = path.stat().st_size
    libc = ctypes.CDLL(None, use_errno=True)
    libc.mincore.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_char_p]
    with open(path, "rb") as f, mmap.mmap(f.fileno(), size, prot=mmap.PROT_READ) as m:
        pages = (size + mmap.PAGESIZE - 1) // mmap.PAGESIZE
        vec = ctypes.create_string_buffer(pages)
        view = np.frombuffer(m, np.uint8)
        failed = libc.mincore(ctypes.c_void_p(view.ctypes.data), size, vec)
        del view  # the mapping cannot close while a view holds it
        if failed:
            raise OSError(ctypes.get_errno(), "mincore")
        return sum(b & 1 for b in vec.raw) * mmap.PAGESIZE


@pytest.mark.parametrize("o_direct", [True, False], ids=["o_direct", "refused"])
def test_streaming_leaves_no_weights_in_the_page_cache(tmp_path, monkeypatch, o_direct):
    """Reads ahead of a piece would outlive its DONTNEED and sit in the cache, outside the budget."""
    import flexnnd
    from tests.conftest import save
    from tests.runtime.test_streaming import fc_chain

    if not o_direct:
        refuse_o_direct(monkeypatch)
    path = save(fc_chain(layers=6), tmp_path / "fc.onnx")
    x = np.zeros((1, 256), np.float32)
    with flexnnd.Session(path, budget=400 * 1024, cache_dir=tmp_path / "c", threads=1) as sess:
        weights = sess.package.weights_path
        fd = os.open(weights, os.O_RDONLY)
        os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
        os.close(fd)
        if _cached_bytes(weights):
            pytest.skip(
                f"the filesystem of {weights} keeps files in memory (tmpfs): no page cache to keep clean"
            )
        assert sess.plan.loads
        for _ in range(3):
            sess.run({"x": x})
        assert _cached_bytes(weights) <= 2 * mmap.PAGESIZE


@pytest.mark.parametrize("direct_allowed", [True, False])
def test_adjacent_pieces_share_one_read(tmp_path, monkeypatch, direct_allowed):
    """The loader reads pieces that follow each other in the file, all released, with one preadv
    (up to BUNDLE_BYTES): each piece gets its own bytes, and there are fewer reads than pieces."""
    path = tmp_path / "weights.bin"
    sizes = [3 * DIRECT_ALIGN, DIRECT_ALIGN, 5 * DIRECT_ALIGN + 100, 2 * DIRECT_ALIGN]  # last one unaligned
    data = _weights(path, sum(sizes) + DIRECT_ALIGN)
    if not direct_allowed:
        refuse_o_direct(monkeypatch)
    elif not _direct_allowed(path):
        pytest.skip(f"the filesystem of {tmp_path} refuses O_DIRECT")
    arena = mmap.mmap(-1, 8 * DIRECT_ALIGN + sum(sizes))
    reads, offset, at = [], 0, 0
    for i, n in enumerate(sizes):
        at = (at + DIRECT_ALIGN - 1) // DIRECT_ALIGN * DIRECT_ALIGN + (offset % DIRECT_ALIGN)
        reads.append(loader_mod.PieceRead(f"w{i}", memoryview(arena)[at : at + n], offset, -1))
        at, offset = at + n + DIRECT_ALIGN, offset + n  # apart in the arena, adjacent in the file
    calls = []
    loader = loader_mod.Loader(str(path), reads, _recording(calls))
    try:
        # The piece after the unaligned one starts off a block: O_DIRECT cannot take it along.
        assert loader.joins == [False, True, True, not direct_allowed]
        loader.begin()
        loader.wait_for(len(reads))
        loader.end()
    finally:
        loader.close()
    offset = 0
    for read, n in zip(reads, sizes, strict=True):
        assert bytes(read.view) == data[offset : offset + n], read.name
        offset += n
        read.view.release()
    arena.close()
    assert loader.read_bytes == sum(sizes)
    if direct_allowed:  # w0..w2's blocks in one direct read, w2's tail buffered, w3 apart
        assert [(o, n) for f, o, n in calls if f == loader._direct] == [(0, 36864), (40960, 4096)]
    else:
        assert [(o, n) for _, o, n in calls] == [(0, sum(sizes))]


def test_a_bundle_is_capped(tmp_path, monkeypatch):
    """No read takes more than BUNDLE_BYTES, however many pieces are released."""
    monkeypatch.setattr(loader_mod, "BUNDLE_BYTES", 4 * DIRECT_ALIGN)
    path = tmp_path / "weights.bin"
    data = _weights(path, 10 * DIRECT_ALIGN)
    arena = mmap.mmap(-1, 10 * DIRECT_ALIGN)
    reads = [
        loader_mod.PieceRead(
            f"w{i}", memoryview(arena)[i * DIRECT_ALIGN : (i + 1) * DIRECT_ALIGN], i * DIRECT_ALIGN, -1
        )
        for i in range(10)
    ]
    calls = []
    loader = loader_mod.Loader(str(path), reads, _recording(calls))
    try:
        loader.begin()
        loader.wait_for(len(reads))
        loader.end()
    finally:
        loader.close()
    assert [o // DIRECT_ALIGN for _, o, _ in calls] == [0, 4, 8]
    assert bytes(arena) == data
    for read in reads:
        read.view.release()
    arena.close()
