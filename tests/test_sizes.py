"""Byte sizes as people write them, and everything else refused with a ValueError."""

from __future__ import annotations

import pytest
from flexnn_api.sizes import MAX_SIZE, format_size, parse_size
from hypothesis import given, settings
from hypothesis import strategies as st


@pytest.mark.parametrize(
    ("text", "size"),
    [
        ("134217728", 134217728),
        ("128M", 128 << 20),
        ("1.5G", 3 << 29),
        ("512Mi", 512 << 20),
        ("300MB", 300_000_000),
        (" 64 k ", 64 << 10),
        ("0", 0),
        (4096, 4096),
    ],
)
def test_sizes_people_write(text, size):
    assert parse_size(text) == size


@pytest.mark.parametrize(
    "text",
    [
        "",
        "M",
        "-1M",
        "1e9",
        "12 parsecs",
        "٣M",
        "１２M",
        "9" * 400,
        "99999999999999999999999999G",
        1 << 70,
        -1,
        True,
        "1.5.2G",
        "0x10M",
    ],
)
def test_everything_else_is_a_value_error_with_a_short_message(text):
    with pytest.raises(ValueError) as e:
        parse_size(text)
    assert len(str(e.value)) < 200


@settings(max_examples=300, derandomize=True, database=None)
@given(st.one_of(st.text(max_size=50), st.integers()))
def test_any_input_is_a_size_in_range_or_a_value_error(value):
    try:
        size = parse_size(value)
    except ValueError:
        return
    assert isinstance(size, int) and 0 <= size <= MAX_SIZE


def test_format_size_reads_back_within_rounding():
    for n in (512, 5 << 10, 123 << 20, 3 << 30):
        assert abs(parse_size(format_size(n)) - n) <= 0.05 * n
