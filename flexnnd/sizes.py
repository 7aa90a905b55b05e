"""Byte sizes as people write them: 134217728, "128M", "1.5G", "512Mi", "300MB"."""

from __future__ import annotations

import re

# K/M/G/T are binary, as in systemd's MemoryMax= and free(1); "Mi"/"MiB" say so explicitly;
# "MB" and the like are decimal.
_UNITS = {"": 1, "B": 1}
for i, letter in enumerate("KMGT", start=1):
    _UNITS[letter] = _UNITS[f"{letter}I"] = _UNITS[f"{letter}IB"] = 1024**i
    _UNITS[f"{letter}B"] = 1000**i

_PATTERN = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([A-Za-z]*)\s*$")


def parse_size(value: int | str) -> int:
    """Bytes from an int or a size string; ValueError naming the value when it is not one."""
    if isinstance(value, bool):
        raise ValueError(f"not a size: {value!r}")
    if isinstance(value, int):
        if value < 0:
            raise ValueError(f"a size cannot be negative: {value}")
        return value
    match = _PATTERN.match(str(value))
    unit = match.group(2).upper() if match else None
    if not match or unit not in _UNITS:
        raise ValueError(f"not a size: {value!r} (write bytes, or a number with K, M, G, T, Mi, MB, ...)")
    return int(float(match.group(1)) * _UNITS[unit])


def format_size(n: int) -> str:
    for unit, scale in (("G", 1 << 30), ("M", 1 << 20), ("K", 1 << 10)):
        if n >= scale:
            return f"{n / scale:.1f}{unit}"
    return f"{n}B"
