"""The packer's lowest-fit queries agree with a brute-force search of the (step × offset) plane."""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from flexnnd.planner.pack import DIRECT_ALIGN, FullSpanGaps, Occupancy, align
from flexnnd.planner.plan import ALIGNMENT, Region

regions = st.lists(
    st.builds(
        lambda offset, nbytes, first, length: Region("r", offset * ALIGNMENT, nbytes, first, first + length),
        st.integers(0, 200),
        st.integers(1, 20_000),
        st.integers(0, 12),
        st.integers(0, 6),
    ),
    max_size=40,
)
residues = st.one_of(st.none(), st.integers(0, DIRECT_ALIGN // ALIGNMENT - 1).map(lambda k: k * ALIGNMENT))


def brute_force(placed, size, first, last, residue):
    """The lowest offset (aligned, or `residue` modulo DIRECT_ALIGN) where `size` bytes are free
    during steps [first, last]: it is the lowest one or sits just above some region."""
    live = [r for r in placed if r.first <= last and first <= r.last]

    def up(x):
        return align(x) if residue is None else x + (residue - x) % DIRECT_ALIGN

    for c in sorted({up(0)} | {up(r.end) for r in live}):
        if all(c + size <= r.offset or r.end <= c for r in live):
            return c
    raise AssertionError("unreachable: above every region is free")


@settings(max_examples=300, deadline=None)
@given(regions, st.integers(1, 10_000), st.integers(0, 14), st.integers(0, 6), residues)
def test_lowest_fit_is_the_lowest_free_offset(placed, nbytes, first, length, residue):
    size = align(nbytes)
    got = Occupancy(placed).lowest_fit(size, first, first + length, residue)
    assert got == brute_force(placed, size, first, first + length, residue)


@settings(max_examples=200, deadline=None)
@given(regions, st.lists(st.integers(1, 10_000), max_size=10))
def test_full_span_gaps_place_as_lowest_fit_over_every_step(placed, sizes):
    gaps = FullSpanGaps(placed)
    busy = Occupancy(placed)
    everything = (0, 1 << 30)
    for nbytes in sizes:
        want = busy.lowest_fit(align(nbytes), *everything)
        assert gaps.place(align(nbytes), nbytes) == want
        busy.add(want, nbytes, *everything)
