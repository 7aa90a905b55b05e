"""The weights file's format, shared by the package writer, the loader, the planner and the
simulator: every weight starts on a DIRECT_ALIGN boundary, in graph order, so that a piece can be
read with O_DIRECT; the loader reads adjacent pieces in one read of up to BUNDLE_BYTES.

Imports nothing from flexnnd: every layer may use it.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from flexnnd.graph.ir import Graph

# O_DIRECT wants file offset, length and buffer address aligned to the device's logical block
# size; 4096 satisfies both 512- and 4096-byte devices (and the package aligns weights to it).
DIRECT_ALIGN = 4096
# Pieces next to each other in the file, all released, are read by one preadv up to this many
# bytes: each read costs 30-100 us on top of its bytes here (128 KiB reads: 0.9 GB/s, 2 MiB: 2.1).
BUNDLE_BYTES = 2 << 20


def align(n: int, to: int = DIRECT_ALIGN) -> int:
    """`n` rounded up to a multiple of `to`."""
    return (n + to - 1) // to * to


def weight_offsets(graph: Graph) -> dict[str, int]:
    """Where `write_package` puts each weight in the weights file: graph order, each on DIRECT_ALIGN."""
    offsets, end = {}, 0
    for name in graph.constants:
        offsets[name] = align(end)
        end = offsets[name] + graph.tensors[name].nbytes
    return offsets
