"""Image decoding and conversion to the model's input.

Training, evaluation and serving all call these functions, so an image goes through the
same steps whether it comes from an IDX file, an image folder or an HTTP request. Only
numpy, Pillow and torch are imported: this module ships inside the .mar.
"""

from __future__ import annotations

import io
from collections.abc import Sequence

import numpy as np
import torch
from PIL import Image, UnidentifiedImageError

# Decompression-bomb guard for images that arrive over the network.
Image.MAX_IMAGE_PIXELS = 40_000_000


class ImageDecodeError(ValueError):
    """The bytes are not an image Pillow can read."""


def decode_image(data: bytes) -> Image.Image:
    if not data:
        raise ImageDecodeError("empty image")
    try:
        img = Image.open(io.BytesIO(data))
        img.load()
    except UnidentifiedImageError as exc:
        raise ImageDecodeError(
            f"not a readable image ({len(data)} bytes; PNG or JPEG expected)"
        ) from exc
    except (OSError, SyntaxError, ValueError) as exc:
        raise ImageDecodeError(f"damaged or truncated image: {exc}") from exc
    except Image.DecompressionBombError as exc:
        raise ImageDecodeError(str(exc)) from exc
    return img


def image_to_array(img: Image.Image, size: int, channels: int) -> np.ndarray:
    """Convert any Pillow image to uint8 (channels, size, size).

    Transparent pixels are composited onto black, the background of Fashion-MNIST.
    """
    if img.mode in ("RGBA", "LA", "PA") or (img.mode == "P" and "transparency" in img.info):
        rgba = img.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (0, 0, 0, 255))
        img = Image.alpha_composite(background, rgba)
    if img.mode in ("I", "I;16", "I;16B", "I;16L", "I;16N", "F"):
        # Wide grayscale: scale to 8 bits (Pillow's convert("L") would clip at 255).
        wide = np.asarray(img, dtype=np.float64)
        peak = float(wide.max()) if wide.size else 0.0
        if img.mode.startswith("I;16") or peak > 255:
            full = 65535.0
        elif img.mode == "F" and peak <= 1.0:
            full = 1.0
        else:
            full = 255.0
        img = Image.fromarray(np.clip(wide / full * 255.0 + 0.5, 0, 255).astype(np.uint8), "L")
    target = "L" if channels == 1 else "RGB"
    if img.mode != target:
        img = img.convert(target)
    if img.size != (size, size):
        img = img.resize((size, size), Image.Resampling.BILINEAR)
    arr = np.asarray(img, dtype=np.uint8)
    if channels == 1:
        return arr[None, :, :]
    return np.ascontiguousarray(arr.transpose(2, 0, 1))


def bytes_to_array(data: bytes, size: int, channels: int) -> np.ndarray:
    img = decode_image(data)
    try:
        return image_to_array(img, size, channels)
    except (ValueError, OSError) as exc:
        raise ImageDecodeError(f"unsupported image ({img.mode}, {img.format}): {exc}") from exc


def encode_png(array: np.ndarray) -> bytes:
    """Encode a uint8 (C, H, W) or (H, W) array as PNG (lossless)."""
    arr = np.asarray(array, dtype=np.uint8)
    if arr.ndim == 3:
        arr = arr[0] if arr.shape[0] == 1 else arr.transpose(1, 2, 0)
    buf = io.BytesIO()
    Image.fromarray(arr).save(buf, format="PNG")
    return buf.getvalue()


def normalize(batch: torch.Tensor, mean: Sequence[float], std: Sequence[float]) -> torch.Tensor:
    """uint8 or [0, 1] float (N, C, H, W) -> normalised float32."""
    x = batch.float()
    if batch.dtype == torch.uint8:
        x = x / 255.0
    m = torch.tensor(mean, dtype=torch.float32).view(1, -1, 1, 1)
    s = torch.tensor(std, dtype=torch.float32).view(1, -1, 1, 1)
    return (x - m) / s
