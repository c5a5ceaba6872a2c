"""An answer's Content-Encoding undone piece by piece, never past the answer cap.

A compressed answer is decoded as it arrives, each step asked for at most what is left under
the cap, so a gzip bomb costs the cap's worth of work and memory, not what it would inflate to;
between steps the loop gets a turn. Servers are asked for `identity`, so this is for those that
compress anyway: gzip, zlib and raw deflate (both sent as "deflate"). Others, brotli among them,
are refused by name: no brotli decoder is a dependency of the gateway.
"""

from __future__ import annotations

import asyncio
import zlib
from collections.abc import Mapping
from typing import Protocol

_STEP = 256 * 1024  # decoded bytes per step: well under a millisecond of inflating


class UndecodableAnswer(Exception):
    """The body arrived but its encoding is unknown or broken; or it decodes past the cap."""


class AnswerTooLargeDecoded(UndecodableAnswer):
    pass


class AnswerDecoder(Protocol):
    async def feed(self, piece: bytes) -> bytes: ...

    async def flush(self) -> bytes: ...


def decoder_for(headers: Mapping[str, str], cap: int) -> AnswerDecoder:
    encoding = headers.get("Content-Encoding", "identity").strip().lower()
    if encoding in ("", "identity"):
        return _Identity()
    if encoding in ("gzip", "x-gzip"):
        return _Inflating(cap, 16 + zlib.MAX_WBITS)
    if encoding == "deflate":
        return _Inflating(cap, None)
    raise UndecodableAnswer(f"answer encoded as {encoding!r}, which the gateway does not decode (it asks for identity)")


class _Identity:
    async def feed(self, piece: bytes) -> bytes:
        return piece  # the wire cap is the cap

    async def flush(self) -> bytes:
        return b""


class _Inflating:
    """gzip, zlib or raw deflate; `wbits` None: "deflate", zlib-wrapped or raw, told by its first bytes."""

    def __init__(self, cap: int, wbits: int | None) -> None:
        self._left = cap
        self._cap = cap
        self._wbits = wbits
        self._head = b""
        self._inflater = zlib.decompressobj(wbits) if wbits is not None else None

    async def feed(self, piece: bytes) -> bytes:
        if self._inflater is None:
            self._head += piece
            if len(self._head) < 2:
                return b""
            piece, self._head = self._head, b""
            self._inflater = zlib.decompressobj(zlib.MAX_WBITS if _zlib_wrapped(piece) else -zlib.MAX_WBITS)
        out: list[bytes] = []
        while piece:
            try:
                decoded = self._inflater.decompress(piece, min(self._left + 1, _STEP))
            except zlib.error as exc:
                raise UndecodableAnswer(f"answer does not decode: {exc}") from None
            self._take(decoded)
            out.append(decoded)
            piece = self._inflater.unconsumed_tail
            if piece:
                await asyncio.sleep(0)  # a bomb's steps each take one short turn of the loop
        return b"".join(out)

    async def flush(self) -> bytes:
        if self._inflater is None or not self._inflater.eof:
            raise UndecodableAnswer("answer ends before its compressed stream does")
        rest = self._inflater.flush()
        self._take(rest)
        return rest

    def _take(self, decoded: bytes) -> None:
        self._left -= len(decoded)
        if self._left < 0:
            raise AnswerTooLargeDecoded(f"answer too large: over {self._cap} bytes once decoded")


def _zlib_wrapped(start: bytes) -> bool:
    # RFC 1950's header: deflate method (8) in the low nibble, and the two bytes a multiple of 31.
    return start[0] & 0x0F == 8 and (start[0] << 8 | start[1]) % 31 == 0
