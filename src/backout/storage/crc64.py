"""CRC-64/Jones, the checksum Redis writes at the end of every RDB file (version 5+).

Parameters (Redis ``src/crc64.c``): polynomial 0xad93d23594c935a9, reflected input
and output, initial value 0, no final xor; check value ``crc64(b"123456789") ==
0xe9c6d914c4b8d9ca``. The RDB stores it as 8 little-endian bytes after the EOF
opcode, computed over everything before it; 0 means checksums were disabled
(``rdbchecksum no``).

Two implementations of the same function, in pure Python:

* ``crc64_table``: the classic byte-at-a-time loop over a 256-entry table. Simple
  and obviously right, but CPython manages only about 5 MB/s with it (every step
  is a 64-bit big-integer operation).
* ``CRC64``: streaming, for whole RDB files. CRC is polynomial arithmetic over
  GF(2): the remainder of ``M(x) * x^64`` modulo the polynomial. A chunk is turned
  into one big integer (bytes bit-reversed with ``bytes.translate``, since the CRC
  is reflected) and reduced by folding: the upper half times ``x^s mod P`` (a
  carry-less multiply by a 64-bit constant = ~32 shifts and xors of a big integer,
  all done in C) is xored onto the lower half, halving the size each round. About
  ten times faster than the table loop (see README, Performance).

The unit tests check both against the standard check value and against each other.

``CRC64`` itself uses the C implementation of ``anycrc`` (a dependency, its model
CRC64-REDIS: some 5 GB/s against 64 MB/s for the folding above) when it imports,
and the pure-Python folding otherwise; the pure-Python code stays the tests' oracle.
"""

from __future__ import annotations

from typing import Any

try:
    import anycrc  # type: ignore[import-untyped]
    _FAST: Any = anycrc.Model("CRC64-REDIS")
except Exception:  # not installed, or no wheel for this platform
    _FAST = None

POLY = 0xAD93D23594C935A9  # normal (MSB-first) form, x^64 implied
_P = (1 << 64) | POLY
_REFLECTED = int(f"{POLY:064b}"[::-1], 2)  # 0x95ac9329ac4bc9b5, for the table loop
_REV_BITS = bytes(int(f"{i:08b}"[::-1], 2) for i in range(256))
_PIECE = 1 << 16  # bytes folded at once (keeps the big integers cache-sized)


def _make_table() -> tuple[int, ...]:
    table = []
    for i in range(256):
        c = i
        for _ in range(8):
            c = (c >> 1) ^ _REFLECTED if c & 1 else c >> 1
        table.append(c)
    return tuple(table)


TABLE = _make_table()


def crc64_table(data: bytes, crc: int = 0) -> int:
    """The reference: one table lookup per byte."""
    table = TABLE
    for byte in data:
        crc = table[(crc ^ byte) & 0xFF] ^ (crc >> 8)
    return crc


def _clmul(a: int, b: int) -> int:
    """Carry-less product of a (any size) and b (small)."""
    out = 0
    while b:
        low = b & -b
        out ^= a << (low.bit_length() - 1)
        b ^= low
    return out


def _mod_small(v: int) -> int:
    """v mod P by long division; for v of at most a few hundred bits."""
    d = v.bit_length()
    while d > 64:
        v ^= _P << (d - 65)
        d = v.bit_length()
    return v


_XPOW: dict[int, int] = {}


def _x_pow_mod(s: int) -> int:
    """x^s mod P (square and multiply), cached: chunk sizes repeat."""
    cached = _XPOW.get(s)
    if cached is not None:
        return cached
    result, base, e = 1, 2, s
    while e:
        if e & 1:
            result = _mod_small(_clmul(result, base))
        base = _mod_small(_clmul(base, base))
        e >>= 1
    _XPOW[s] = result
    return result


def _reduce(v: int) -> int:
    d = v.bit_length()
    while d > 192:
        s = d // 2
        v = _clmul(v >> s, _x_pow_mod(s)) ^ (v & ((1 << s) - 1))
        d = v.bit_length()
    return _mod_small(v)


class FoldingCRC64:
    """Streaming CRC-64/Jones in pure Python: ``update`` with chunks of any size, then
    ``value``."""

    def __init__(self) -> None:
        self._rem = 0  # (message so far) * x^64 mod P, in normal bit order

    def update(self, data: bytes) -> None:
        for start in range(0, len(data), _PIECE):
            piece = data[start:start + _PIECE]
            bits = 8 * len(piece)
            value = int.from_bytes(piece.translate(_REV_BITS), "big")
            self._rem = _reduce((self._rem << bits) ^ (value << 64))

    def value(self) -> int:
        return int(f"{self._rem:064b}"[::-1], 2)


class _CCRC64:
    """The same function through anycrc's C code (each update continues the last)."""

    def __init__(self) -> None:
        self._crc = 0

    def update(self, data: bytes) -> None:
        if data:
            self._crc = int(_FAST.calc(data, self._crc))

    def value(self) -> int:
        return self._crc


def CRC64() -> FoldingCRC64 | _CCRC64:  # named as the class it replaced
    """A streaming CRC-64/Jones: the C one when anycrc imports, else pure Python."""
    return _CCRC64() if _FAST is not None else FoldingCRC64()


def crc64(data: bytes) -> int:
    crc = CRC64()
    crc.update(data)
    return crc.value()
