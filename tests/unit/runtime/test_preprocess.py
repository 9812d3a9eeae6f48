"""Tests for atelier.runtime.preprocess: decoding, conversion, PNG encoding and normalisation."""

from __future__ import annotations

import io

import numpy as np
import pytest
import torch
from PIL import Image

from atelier.runtime.preprocess import (
    ImageDecodeError,
    bytes_to_array,
    decode_image,
    encode_png,
    image_to_array,
    normalize,
)

pytestmark = pytest.mark.unit


def to_bytes(img: Image.Image, fmt: str = "PNG", **kwargs: object) -> bytes:
    buf = io.BytesIO()
    img.save(buf, format=fmt, **kwargs)
    return buf.getvalue()


def check(arr: np.ndarray, channels: int = 1, size: int = 28) -> None:
    assert arr.shape == (channels, size, size)
    assert arr.dtype == np.uint8


def test_rgb_to_grayscale() -> None:
    arr = bytes_to_array(to_bytes(Image.new("RGB", (28, 28), (255, 0, 0))), 28, 1)
    check(arr)
    assert np.all(arr == 76)  # ITU-R 601-2 luma of pure red


def test_rgb_keeps_channel_order() -> None:
    arr = bytes_to_array(to_bytes(Image.new("RGB", (28, 28), (255, 128, 0))), 28, 3)
    check(arr, channels=3)
    assert arr.flags["C_CONTIGUOUS"]
    assert np.all(arr[0] == 255)
    assert np.all(arr[1] == 128)
    assert np.all(arr[2] == 0)


def test_rgba_transparent_pixels_become_black() -> None:
    rgba = np.zeros((28, 28, 4), dtype=np.uint8)
    rgba[:, :14] = (255, 255, 255, 0)  # left half: transparent white
    rgba[:, 14:] = (255, 255, 255, 255)  # right half: opaque white
    arr = bytes_to_array(to_bytes(Image.fromarray(rgba, "RGBA")), 28, 1)
    check(arr)
    assert np.all(arr[0, :, :14] == 0)
    assert np.all(arr[0, :, 14:] == 255)


def test_palette_image() -> None:
    img = Image.new("P", (28, 28), 0)
    img.putpalette([0, 0, 0, 255, 255, 255] + [0] * (254 * 3))
    img.paste(1, (0, 0, 28, 14))  # top half uses palette entry 1 (white)
    arr = bytes_to_array(to_bytes(img), 28, 1)
    check(arr)
    assert np.all(arr[0, :14] == 255)
    assert np.all(arr[0, 14:] == 0)


def test_palette_transparency_becomes_black() -> None:
    img = Image.new("P", (28, 28), 0)
    img.putpalette([200, 200, 200, 255, 255, 255] + [0] * (254 * 3))
    img.paste(1, (0, 0, 28, 14))
    # Entry 1 is transparent: the top half becomes black, the bottom stays grey.
    arr = bytes_to_array(to_bytes(img, transparency=1), 28, 1)
    check(arr)
    assert np.all(arr[0, :14] == 0)
    assert np.all(arr[0, 14:] == 200)


def test_16_bit_grayscale_decodes_to_uint8() -> None:
    img = Image.fromarray(np.full((28, 28), 100, dtype=np.uint16))
    data = to_bytes(img)
    assert decode_image(data).mode == "I;16"
    check(bytes_to_array(data, 28, 1))


def test_16_bit_grayscale_is_scaled_to_8_bits() -> None:
    # A mid-grey 16-bit image should become mid-grey, not white.
    img = Image.fromarray(np.full((28, 28), 32768, dtype=np.uint16))
    arr = bytes_to_array(to_bytes(img), 28, 1)
    assert abs(int(arr.mean()) - 128) <= 1


def test_jpeg_is_resized() -> None:
    data = to_bytes(Image.new("RGB", (100, 60), (128, 128, 128)), fmt="JPEG")
    img = decode_image(data)
    assert img.size == (100, 60)
    arr = bytes_to_array(data, 28, 1)
    check(arr)
    assert abs(float(arr.mean()) - 128) < 3


def test_resize_to_other_sizes() -> None:
    img = Image.new("L", (10, 40), 50)
    check(image_to_array(img, 16, 3), channels=3, size=16)
    assert np.all(image_to_array(img, 16, 1) == 50)


@pytest.mark.parametrize("shape", [(28, 28), (1, 28, 28)])
def test_png_round_trip_grayscale(shape: tuple[int, ...]) -> None:
    arr = np.random.default_rng(0).integers(0, 256, shape, dtype=np.uint8)
    out = bytes_to_array(encode_png(arr), 28, 1)
    check(out)
    np.testing.assert_array_equal(out, arr.reshape(1, 28, 28))


def test_png_round_trip_rgb() -> None:
    arr = np.random.default_rng(1).integers(0, 256, (3, 28, 28), dtype=np.uint8)
    out = bytes_to_array(encode_png(arr), 28, 3)
    np.testing.assert_array_equal(out, arr)


def test_encode_png_is_a_png() -> None:
    assert encode_png(np.zeros((28, 28), dtype=np.uint8)).startswith(b"\x89PNG\r\n\x1a\n")


def _truncated_png() -> bytes:
    # Noise does not compress, so half the file cuts the pixel data.
    png = encode_png(np.random.default_rng(2).integers(0, 256, (28, 28), dtype=np.uint8))
    return png[: len(png) // 2]


@pytest.mark.parametrize(
    "data",
    [b"", np.random.default_rng(3).bytes(500), _truncated_png()],
    ids=["empty", "random", "truncated-png"],
)
def test_undecodable_bytes(data: bytes) -> None:
    with pytest.raises(ImageDecodeError):
        decode_image(data)
    with pytest.raises(ImageDecodeError):
        bytes_to_array(data, 28, 1)


def test_normalize_uint8() -> None:
    batch = torch.tensor([0, 51, 255], dtype=torch.uint8).view(1, 1, 1, 3)
    out = normalize(batch, mean=[0.5], std=[0.5])
    assert out.dtype == torch.float32
    torch.testing.assert_close(out, torch.tensor([-1.0, -0.6, 1.0]).view(1, 1, 1, 3))


def test_normalize_float_is_not_rescaled() -> None:
    batch = torch.tensor([0.0, 0.5, 1.0], dtype=torch.float64).view(1, 1, 1, 3)
    out = normalize(batch, mean=[0.25], std=[0.5])
    assert out.dtype == torch.float32
    torch.testing.assert_close(out, torch.tensor([-0.5, 0.5, 1.5]).view(1, 1, 1, 3))


def test_normalize_per_channel() -> None:
    batch = torch.full((2, 3, 2, 2), 255, dtype=torch.uint8)
    out = normalize(batch, mean=[0.0, 0.5, 1.0], std=[1.0, 0.5, 0.25])
    assert out.shape == (2, 3, 2, 2)
    torch.testing.assert_close(out[:, 0], torch.full((2, 2, 2), 1.0))
    torch.testing.assert_close(out[:, 1], torch.full((2, 2, 2), 1.0))
    torch.testing.assert_close(out[:, 2], torch.full((2, 2, 2), 0.0))


def test_32_bit_and_float_grayscale_are_scaled() -> None:
    wide = Image.fromarray(np.full((28, 28), 40000, dtype=np.int32), mode="I")
    assert abs(int(image_to_array(wide, 28, 1).mean()) - 156) <= 1
    unit = Image.fromarray(np.full((28, 28), 0.5, dtype=np.float32), mode="F")
    assert abs(int(image_to_array(unit, 28, 1).mean()) - 128) <= 1


def test_pixel_budget_is_charged_from_the_header() -> None:
    from atelier.runtime.preprocess import PixelBudget, PixelBudgetError
    from support.hostile_images import png_bomb

    budget = PixelBudget(max_image_pixels=100 * 100, max_request_pixels=150 * 100)
    ok = bytes_to_array(png_bomb(100, 100, bit_depth=16), 28, 1, budget, "a")
    assert ok.shape == (1, 28, 28) and budget.used == 10_000
    with pytest.raises(PixelBudgetError, match="b: 100x60 brings the request to 16,000"):
        bytes_to_array(png_bomb(100, 60), 28, 1, budget, "b")
    # A full 8,900 x 8,900 16-bit image (158 MB of pixels in a ~150 KB file) is refused
    # before decoding; only its header was read.
    with pytest.raises(PixelBudgetError, match="8900x8900 = 79,210,000 pixels"):
        bytes_to_array(png_bomb(8900, 8900, bit_depth=16), 28, 1, PixelBudget(), "c")


def test_wide_images_scale_in_float32_and_refuse_nan() -> None:
    from support.hostile_images import float_tiff, nan_tiff, sixteen_bit_png

    ramp = np.linspace(0, 65535, 28 * 28).reshape(28, 28).astype(np.uint16)
    arr = bytes_to_array(sixteen_bit_png(ramp), 28, 1)
    assert arr.dtype == np.uint8 and arr.min() == 0 and arr.max() == 255
    unit = np.linspace(0, 1, 28 * 28).reshape(28, 28)
    assert bytes_to_array(float_tiff(unit), 28, 1).max() == 255
    inf = unit.copy()
    inf[3, 3] = np.inf
    for data in (nan_tiff(), float_tiff(inf)):
        with pytest.raises(ImageDecodeError, match="NaN or infinite"):
            bytes_to_array(data, 28, 1)
