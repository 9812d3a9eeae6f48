"""Images a hostile or careless client may send, built without holding them in memory.

A decompression bomb is a small file that declares (and may really hold) a huge image. The
PNG writer here streams zero rows through zlib, so an 8,900 x 8,900 16-bit image (158 MB of
pixels) becomes a ~150 KB file without the test process ever holding the pixels.
"""

from __future__ import annotations

import io
import struct
import zlib

import numpy as np
from PIL import Image

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
# colour type -> (channels, name): 0 grayscale, 2 RGB, 3 palette, 4 gray+alpha, 6 RGBA
CHANNELS = {0: 1, 2: 3, 3: 1, 4: 2, 6: 4}


def _chunk(kind: bytes, data: bytes) -> bytes:
    return (
        struct.pack(">I", len(data))
        + kind
        + data
        + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)
    )


def png_bomb(
    width: int, height: int, *, bit_depth: int = 8, colour_type: int = 0, rows: int | None = None
) -> bytes:
    """A PNG of `width` x `height` zero pixels; with `rows`, only that many rows of pixel data
    follow the header (a bomb "by header": it declares the size and holds almost nothing)."""
    header = struct.pack(">IIBBBBB", width, height, bit_depth, colour_type, 0, 0, 0)
    row = b"\x00" + bytes(width * CHANNELS[colour_type] * bit_depth // 8)  # filter 0 + zeros
    packer = zlib.compressobj(9)
    parts = [packer.compress(row) for _ in range(height if rows is None else rows)]
    parts.append(packer.flush())
    out = PNG_SIGNATURE + _chunk(b"IHDR", header)
    if colour_type == 3:
        out += _chunk(b"PLTE", bytes(range(256)) * 3)
    return out + _chunk(b"IDAT", b"".join(parts)) + _chunk(b"IEND", b"")


def float_tiff(values: np.ndarray) -> bytes:
    """A 32-bit float grayscale TIFF (Pillow mode F) of the given 2-D values."""
    buf = io.BytesIO()
    Image.fromarray(np.asarray(values, dtype=np.float32), "F").save(buf, format="TIFF")
    return buf.getvalue()


def nan_tiff(size: int = 28) -> bytes:
    return float_tiff(np.full((size, size), np.nan, dtype=np.float32))


def sixteen_bit_png(values: np.ndarray) -> bytes:
    """A real 16-bit grayscale PNG of the given 2-D uint16 values."""
    buf = io.BytesIO()
    Image.fromarray(np.asarray(values, dtype=np.uint16)).save(buf, format="PNG")
    return buf.getvalue()
