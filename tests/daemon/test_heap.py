"""The daemon's own memory: LLVM's code paged out after the compiler's last use."""

from __future__ import annotations

import mmap
import os
import subprocess
import sys
import tempfile
import textwrap
from pathlib import Path

import numba

from flexnnd.daemon import heap
from flexnnd.ops import jit

MIB = 1 << 20


def mapping_rss(name: str) -> int:
    """File-backed RSS of this process's mappings of files named `name`, bytes."""
    total, current = 0, False
    with open("/proc/self/smaps") as f:
        for line in f:
            fields = line.split()
            if "-" in fields[0] and not fields[0].endswith(":"):
                current = len(fields) >= 6 and Path(fields[5]).name == name
            elif current and fields[0] == "Rss:":
                total += int(fields[1]) * 1024
            elif current and fields[0] == "Anonymous:":
                total -= int(fields[1]) * 1024
    return total


def test_page_out_drops_a_mapping_from_rss_and_keeps_its_contents():
    # On the checkout's file system, not /tmp: tmpfs pages cannot be paged out without swap.
    with tempfile.TemporaryDirectory(dir=Path(__file__).parent) as tmp:
        path = Path(tmp) / "libpaged-test.so"
        data = bytes(range(256)) * (32 * MIB // 256)
        path.write_bytes(data)
        with open(path, "rb") as f, mmap.mmap(f.fileno(), 0, prot=mmap.PROT_READ) as m:
            assert m[:] == data  # every page touched
            before = mapping_rss(path.name)
            assert before >= 30 * MIB
            assert heap.page_out("libpaged-test")
            after = mapping_rss(path.name)
            assert after < 2 * MIB, f"{after} bytes still resident of {before}"
            assert m[:] == data


def test_compiler_use_counts_compiles_not_calls():
    @numba.njit
    def add_one(x):
        return x + 1

    used, running = jit.compiler_use()
    assert not running
    assert add_one(1) == 2
    after_compile, running = jit.compiler_use()
    assert after_compile > used and not running
    assert add_one(2) == 3
    assert jit.compiler_use()[0] == after_compile


def test_compiler_pages_are_released_once_per_use():
    pages = heap.CompilerPages()
    pages.release_if_used()
    assert pages.released_at == jit.compiler_use()[0]
    assert pages.release_if_used() == 0  # no compile since

    @numba.njit
    def twice(x):
        return 2 * x

    assert twice(3) == 6
    assert pages.released_at != jit.compiler_use()[0]
    pages.release_if_used()
    assert pages.released_at == jit.compiler_use()[0]


def test_a_fresh_process_gives_back_llvm_code_and_its_kernels_still_run(tmp_path):
    # A fresh interpreter with its own copy of llvmlite: pages of the library that another process
    # (pytest itself, a parallel run) has mapped too are shared, and MADV_PAGEOUT leaves those.
    import shutil

    import llvmlite

    shutil.copytree(Path(llvmlite.__file__).parent, tmp_path / "llvmlite")
    script = textwrap.dedent(
        """
        import sys
        import numba
        from flexnnd.daemon import heap
        from tests.daemon.test_heap import mapping_rss

        @numba.njit
        def total(n):
            s = 0
            for i in range(n):
                s += i
            return s

        assert total(10) == 45
        library = next(p for p in open("/proc/self/maps").read().split() if "libllvmlite" in p)
        name = library.rsplit("/", 1)[-1]
        before = mapping_rss(name)
        released = heap.CompilerPages().release_if_used()
        after = mapping_rss(name)
        assert total(100) == 4950
        print(before, after, released)
        """
    )
    out = subprocess.run(
        [sys.executable, "-c", script],
        capture_output=True,
        text=True,
        check=True,
        cwd=Path(__file__).parents[2],
        env={**os.environ, "PYTHONPATH": os.pathsep.join([str(tmp_path), str(Path(__file__).parents[2])])},
    ).stdout.split()
    before, after, released = (int(v) for v in out)
    assert before > 20 * MIB  # LLVM's code is resident after a compile
    assert after < before // 4, f"llvmlite's code: {before} bytes before, {after} after"
    assert released > 0


def test_a_kernels_cache_stamp_covers_every_kernel_module():
    # numba stamps a cached kernel with its own file only; a changed helper it inlines from another
    # file (the epilogue's bias_act) must invalidate it too.
    from flexnnd.ops import epilogue

    locator = epilogue.bias_act._cache._impl.locator
    assert type(locator).__name__.startswith("WholeSource")
    assert locator.get_source_stamp()[1] == jit.SOURCES_DIGEST

    @numba.njit(cache=True)
    def elsewhere(x):
        return x

    assert not type(elsewhere._cache._impl.locator).__name__.startswith("WholeSource")
