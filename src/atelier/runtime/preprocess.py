"""Image decoding and conversion to the model's input.

Training, evaluation and serving all call these functions, so an image goes through the
same steps whether it comes from an IDX file, an image folder or an HTTP request. Only
numpy, Pillow and torch are imported: this module ships inside the .mar.
"""

from __future__ import annotations

import io
import warnings
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch
from PIL import Image, UnidentifiedImageError

# Pillow's own decompression-bomb guard (it refuses above twice this). Network input has a
# much smaller budget of our own (`PixelBudget`), checked from the header before decoding.
Image.MAX_IMAGE_PIXELS = 40_000_000
# Its warning between 1x and 2x that limit would only repeat in the log what the budget
# refuses with a typed error.
warnings.filterwarnings("ignore", category=Image.DecompressionBombWarning)

WIDE_MODES = ("I", "I;16", "I;16B", "I;16L", "I;16N", "F")
# The network input's pixel budget (protocol.Limits takes its defaults from these).
MAX_IMAGE_PIXELS = 2048 * 2048
MAX_REQUEST_PIXELS = 4 * MAX_IMAGE_PIXELS


class ImageDecodeError(ValueError):
    """The bytes are not an image Pillow can read."""


class PixelBudgetError(ImageDecodeError):
    """The image's declared size breaks the pixel budget (checked before decoding)."""


@dataclass
class PixelBudget:
    """Pixels one image and one request may decode, charged from each image's header before
    its pixels are decoded, so a small file that declares a huge image costs nothing.

    With the defaults (2,048 x 2,048 per image, 4x that per request) the worst single image
    decodes into at most ~60 MB (a 16-bit or float image: its own buffer, one float32 copy
    and the 8-bit result; an RGBA composite: three 4-byte buffers), one at a time.
    """

    max_image_pixels: int = MAX_IMAGE_PIXELS
    max_request_pixels: int = MAX_REQUEST_PIXELS
    used: int = 0

    def charge(self, width: int, height: int, where: str) -> None:
        pixels = width * height
        if pixels > self.max_image_pixels:
            raise PixelBudgetError(
                f"{where}: {width}x{height} = {pixels:,} pixels, over the limit of "
                f"{self.max_image_pixels:,} per image"
            )
        if self.used + pixels > self.max_request_pixels:
            raise PixelBudgetError(
                f"{where}: {width}x{height} brings the request to {self.used + pixels:,} "
                f"pixels, over the limit of {self.max_request_pixels:,} per request"
            )
        self.used += pixels


def decode_image(
    data: bytes, budget: PixelBudget | None = None, where: str = "image", size: int = 0
) -> Image.Image:
    """Decode image bytes. With a `budget`, the header's size is charged to it before any
    pixel is decoded; with `size`, a JPEG is decoded at the smallest scale that is still at
    least `size` pixels (Pillow's draft mode)."""
    if not data:
        raise ImageDecodeError("empty image")
    try:
        img = Image.open(io.BytesIO(data))
        if budget is not None:
            budget.charge(img.width, img.height, where)
        if size and img.format == "JPEG":
            img.draft(img.mode, (size, size))
        img.load()
    except ImageDecodeError:
        raise
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
    if img.mode in WIDE_MODES:
        img = _wide_to_l(img)
    target = "L" if channels == 1 else "RGB"
    if img.mode != target:
        img = img.convert(target)
    if img.size != (size, size):
        img = img.resize((size, size), Image.Resampling.BILINEAR)
    arr = np.asarray(img, dtype=np.uint8)
    if channels == 1:
        return arr[None, :, :]
    return np.ascontiguousarray(arr.transpose(2, 0, 1))


def _wide_to_l(img: Image.Image) -> Image.Image:
    """16-bit, 32-bit integer and float grayscale to 8 bits, in float32 and in place (Pillow's
    convert("L") would clip at 255). NaN or infinite pixels are refused."""
    wide = np.asarray(img)
    if wide.dtype.kind == "f" and not np.isfinite(wide).all():
        raise ImageDecodeError(f"{img.mode} image with NaN or infinite pixels")
    peak = float(wide.max()) if wide.size else 0.0
    if img.mode.startswith("I;16") or peak > 255:
        full = 65535.0
    elif img.mode == "F" and peak <= 1.0:
        full = 1.0
    else:
        full = 255.0
    scaled = wide.astype(np.float32)  # the one copy: 4 bytes a pixel, never float64
    del wide
    scaled *= np.float32(255.0 / full)
    scaled += np.float32(0.5)
    np.clip(scaled, 0, 255, out=scaled)
    return Image.fromarray(scaled.astype(np.uint8), "L")


def bytes_to_array(
    data: bytes, size: int, channels: int, budget: PixelBudget | None = None, where: str = "image"
) -> np.ndarray:
    img = decode_image(data, budget, where, size)
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
