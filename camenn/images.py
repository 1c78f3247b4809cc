"""Item images: decode untrusted bytes and cut them into the paper's grid of patches.

CameNN sees an item image as ``grid x grid`` non-overlapping patches in natural (row-major)
order, each encoded separately by the image CNN. Decoding happens on CPU workers; patches are
kept as uint8 until they reach the encoder's device (4x less memory and host-to-device traffic
than float), where :func:`normalize_patches` applies the encoder's mean/std.
"""

from __future__ import annotations

import io
import re
from collections.abc import Sequence

import numpy as np
import torch
import torchvision.transforms.v2.functional as TF
from PIL import Image, ImageFile, ImageOps

__all__ = [
    "ImageDecodeError",
    "decode_image",
    "image_to_patches",
    "normalize_patches",
    "decode_to_patches",
    "random_view",
    "view_seed",
]

# Transparent product shots (PNG cut-outs) are meant to be seen on a white page, not on the
# black that dropping the alpha channel would leave behind.
_BACKGROUND = (255, 255, 255)


_OBJECT_AT = re.compile(r"<[\w.]+ object at 0x[0-9a-fA-F]+>")


class ImageDecodeError(ValueError):
    """The bytes are not a usable image; ``reason`` is short enough for a quarantine row."""

    def __init__(self, reason: str):
        super().__init__(reason)
        self.reason = reason


def decode_image(data: bytes | bytearray | memoryview | None, min_size: int | None = None) -> Image.Image:
    """Decode any PIL-readable image to an upright RGB image.

    ``min_size``: the decoder may downscale a JPEG by a power of two while decoding
    (``Image.draft``) as long as both sides stay >= ``min_size``; this makes multi-megapixel
    catalogue photos several times cheaper to decode when only ``grid * patch_size`` pixels are
    needed. Raises :class:`ImageDecodeError` for empty, truncated or undecodable data.
    """
    if data is None or len(data) == 0:
        raise ImageDecodeError("empty")
    if ImageFile.LOAD_TRUNCATED_IMAGES:
        # With this process-wide Pillow switch on, a cut-off upload decodes "successfully" with
        # a grey lower half and would be cached as a real item; refuse to run rather than
        # silently accept broken images.
        raise RuntimeError(
            "PIL.ImageFile.LOAD_TRUNCATED_IMAGES is True in this process; truncated images "
            "would be accepted. Something imported before camenn switched it on; switch it off."
        )
    try:
        with Image.open(io.BytesIO(bytes(data))) as img:
            if min_size is not None:
                img.draft(None, (min_size, min_size))
            # Pillow decodes lazily: only load() reads the whole stream and notices truncation.
            img.load()
            upright = ImageOps.exif_transpose(img)
            return _to_rgb(upright)
    except Image.DecompressionBombError as e:
        raise ImageDecodeError(f"too large ({e})") from e
    except Exception as e:  # noqa: BLE001
        # Malformed files raise a zoo of exception types from Pillow's plugins (OSError,
        # SyntaxError, struct.error, IndexError, ...); any of them means "bad row", not "bad run".
        # PIL names the stream it read ("<_io.BytesIO object at 0x7f...>"): an address would make the
        # same bad bytes give a different quarantine reason on every run
        raise ImageDecodeError(f"{type(e).__name__}: {_OBJECT_AT.sub('<bytes>', str(e))}") from e


def _to_rgb(img: Image.Image) -> Image.Image:
    if img.mode in ("RGBA", "LA", "PA") or (img.mode == "P" and "transparency" in img.info):
        rgba = img.convert("RGBA")
        canvas = Image.new("RGBA", rgba.size, _BACKGROUND + (255,))
        return Image.alpha_composite(canvas, rgba).convert("RGB")
    return img.convert("RGB")


def image_to_patches(
    img: Image.Image, grid: int, patch_size: int, resample: int = Image.Resampling.BICUBIC
) -> torch.Tensor:
    """Cut an RGB image into ``grid x grid`` patches of ``patch_size`` pixels, row-major.

    The whole image is resized to ``grid * patch_size`` square once and then cut, which equals
    cutting first and resizing each cell except within the filter's support (a couple of
    pixels) of the seams. Non-square images are stretched so every patch covers the same
    fraction of the item. Returns uint8 (grid*grid, 3, patch_size, patch_size).
    """
    side = grid * patch_size
    resized = img.convert("RGB").resize((side, side), resample=resample)
    pixels = torch.from_numpy(np.array(resized))  # (side, side, 3) uint8, y then x
    # (row, y, col, x, ch) -> (row, col, ch, y, x): patch index = row * grid + col.
    cells = pixels.view(grid, patch_size, grid, patch_size, 3).permute(0, 2, 4, 1, 3)
    return cells.reshape(grid * grid, 3, patch_size, patch_size).contiguous()  # (P, 3, S, S)


def normalize_patches(
    patches: torch.Tensor, mean: Sequence[float], std: Sequence[float], dtype: torch.dtype = torch.float32
) -> torch.Tensor:
    """uint8 patches (..., 3, S, S) -> float (..., 3, S, S) in the encoder's input space."""
    x = TF.to_dtype(patches, dtype, scale=True)  # (..., 3, S, S) in [0, 1]
    return TF.normalize(x, mean=list(mean), std=list(std))  # (..., 3, S, S)


def decode_to_patches(
    data: bytes | bytearray | memoryview | None,
    grid: int,
    patch_size: int,
    mean: Sequence[float],
    std: Sequence[float],
    resample: int = Image.Resampling.BICUBIC,
) -> torch.Tensor:
    """Bytes -> normalised float patches (grid*grid, 3, patch_size, patch_size)."""
    img = decode_image(data, min_size=grid * patch_size)
    return normalize_patches(image_to_patches(img, grid, patch_size, resample), mean, std)


def random_view(photo: Image.Image, rng: np.random.Generator, colour: float = 0.0) -> Image.Image:
    """A crop of 25-100% of ``photo``'s area (aspect 3:4 to 4:3), mirrored half the time, brightness x0.8-1.2;
    with ``colour`` = s > 0 also each RGB channel x exp(U(-s, s)) (white balance) and saturation and
    contrast x exp(U(-2s, 2s)).

    The one view of a photo in the project: the GroceryStore benchmarks train on such views and
    the nightly job scores a photo over itself and a few of them (``scoring.test_time_views``).
    Why views: the model reads a photo of another framing and light worse than the ones it trained
    on (docs/results/grocery-store.md). The colour draws come after the others, so colour 0 gives the same
    crop, mirror and light as without it.
    """
    from PIL import ImageEnhance

    W, H = photo.size
    area, aspect = rng.uniform(0.25, 1.0) * W * H, float(np.exp(rng.uniform(np.log(3 / 4), np.log(4 / 3))))
    w, h = min(W, round((area * aspect) ** 0.5)), min(H, round((area / aspect) ** 0.5))
    x, y = int(rng.integers(0, W - w + 1)), int(rng.integers(0, H - h + 1))
    view = photo.crop((x, y, x + w, y + h))
    if rng.random() < 0.5:
        view = view.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
    view = ImageEnhance.Brightness(view).enhance(float(rng.uniform(0.8, 1.2)))
    if colour > 0:
        gains = np.exp(rng.uniform(-colour, colour, size=3))
        view = Image.merge("RGB", [band.point(lambda v, g=g: min(255, round(v * g)))
                                   for band, g in zip(view.split(), gains, strict=True)])
        view = ImageEnhance.Color(view).enhance(float(np.exp(rng.uniform(-2 * colour, 2 * colour))))
        view = ImageEnhance.Contrast(view).enhance(float(np.exp(rng.uniform(-2 * colour, 2 * colour))))
    return view


def view_seed(content_hash: str) -> int:
    """The seed of an item's test-time views: its content hash's first 64 bits, so the same photo and
    text get the same views on every night, worker and retry, and a changed listing new ones."""
    return int(content_hash[:16], 16)
