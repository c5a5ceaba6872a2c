"""A real headless Chromium for page tests: load a URL, read its DOM, console log or screenshot."""

from __future__ import annotations

import asyncio
import re
import shutil
import struct
import zlib
from pathlib import Path

import pytest

CHROMIUM = shutil.which("chromium")
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
NEEDS_CHROMIUM = pytest.mark.skipif(
    CHROMIUM is None, reason="chromium not installed (Debian: apt-get install -y chromium; CI installs it)")


CONSOLE_LINE = re.compile(r"CONSOLE|Uncaught|console\.(error|warn)", re.IGNORECASE)


async def run_chromium(url: str, profile: Path, *options: str) -> tuple[bytes, str]:
    """Chromium's stdout and its stderr log (console messages included) for one page load."""
    assert CHROMIUM is not None
    process = await asyncio.create_subprocess_exec(
        CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
        "--disable-background-networking", "--disable-component-update", "--disable-sync",
        "--enable-logging=stderr", "--v=0", f"--user-data-dir={profile}", "--hide-scrollbars", *options, url,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
    )
    try:
        # The page is served from this event loop, so wait without blocking it.
        stdout, stderr = await asyncio.wait_for(process.communicate(), timeout=90)
    except TimeoutError:
        process.kill()
        await process.wait()
        pytest.fail(f"chromium took over 90 s on {url}")
    return stdout, stderr.decode(errors="replace")


def console_lines(log: str) -> list[str]:
    return [line for line in log.splitlines() if CONSOLE_LINE.search(line)]


def decode_png(data: bytes) -> tuple[int, int, list[bytes]]:
    """Width, height and RGB(A) pixels of an 8-bit truecolour PNG, enough to tell a blank image."""
    assert data[:8] == PNG_SIGNATURE, "not a PNG"
    position, chunks, header = 8, [], b""
    while position < len(data):
        (length,) = struct.unpack(">I", data[position:position + 4])
        kind, body = data[position + 4:position + 8], data[position + 8:position + 8 + length]
        crc = struct.unpack(">I", data[position + 8 + length:position + 12 + length])[0]
        assert zlib.crc32(kind + body) == crc, f"bad CRC in {kind!r} chunk"
        if kind == b"IHDR":
            header = body
        elif kind == b"IDAT":
            chunks.append(body)
        position += 12 + length
    width, height, depth, colour = struct.unpack(">IIBB", header[:10])
    assert depth == 8 and colour in (2, 6), f"unexpected PNG format: depth {depth}, colour type {colour}"
    channels = 3 if colour == 2 else 4
    raw = zlib.decompress(b"".join(chunks))
    stride = width * channels + 1
    assert len(raw) == stride * height, "PNG image data is truncated"
    # Filters are not undone: distinct filtered pixels still tell a flat image from a rendered one.
    pixels = [
        raw[row * stride + 1 + x:row * stride + 1 + x + channels]
        for row in range(height)
        for x in range(0, width * channels, channels)
    ]
    return width, height, pixels
