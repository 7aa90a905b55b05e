"""Byte sizes as people write them: 134217728, "128M", "1.5G", "512Mi", "300MB"."""

from __future__ import annotations

import re

# K/M/G/T are binary, as in systemd's MemoryMax= and free(1); "Mi"/"MiB" say so explicitly;
# "MB" and the like are decimal.
_UNITS = {"": 1, "B": 1}
for i, letter in enumerate("KMGT", start=1):
    _UNITS[letter] = _UNITS[f"{letter}I"] = _UNITS[f"{letter}IB"] = 1024**i
    _UNITS[f"{letter}B"] = 1000**i

_PATTERN = re.compile(r"^\s*([0-9]{1,30}(?:\.[0-9]{1,30})?)\s*([A-Za-z]*)\s*$", re.ASCII)
MAX_SIZE = 1 << 62  # far above any memory; keeps every size a plain int64 for the wire and the kernel


def parse_size(value: int | str) -> int:
    """Bytes from an int or a size string; ValueError naming the value when it is not one."""
    if isinstance(value, bool):
        raise ValueError(f"not a size: {value!r}")
    if isinstance(value, int):
        if not 0 <= value <= MAX_SIZE:
            raise ValueError(f"a size must be between 0 and {MAX_SIZE:,} bytes: {value}")
        return value
    if str(value).strip().startswith("-"):
        raise ValueError(f"a size cannot be negative: {str(value)[:40]!r}")
    match = _PATTERN.match(str(value))
    unit = match.group(2).upper() if match else None
    if not match or unit not in _UNITS:
        raise ValueError(
            f"not a size: {str(value)[:40]!r} (write bytes, or a number with K, M, G, T, Mi, MB, ...)"
        )
    size = float(match.group(1)) * _UNITS[unit]
    if size > MAX_SIZE:
        raise ValueError(f"not a size: {str(value)[:40]!r} is above {MAX_SIZE:,} bytes")
    return int(size)


def format_size(n: int) -> str:
    for unit, scale in (("G", 1 << 30), ("M", 1 << 20), ("K", 1 << 10)):
        if n >= scale:
            return f"{n / scale:.1f}{unit}"
    return f"{n}B"
