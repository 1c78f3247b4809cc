"""Featurizer on real encoders and real image files (generated here with Pillow)."""

import os

os.environ["HF_HUB_OFFLINE"] = "1"

import io
import random

import pytest
import torch
from PIL import Image, ImageFile

from camenn.featurizer import (
    FeaturizerConfig,
    ItemFeaturizer,
    pack_item_features,
    pack_views,
    unpack_item_features,
)
from camenn.images import ImageDecodeError, decode_image, decode_to_patches, image_to_patches, random_view

# Nine clearly distinct colours, one per cell of a 3x3 grid, row-major.
CELL_COLOURS = [
    (255, 0, 0), (0, 255, 0), (0, 0, 255),
    (255, 255, 0), (255, 0, 255), (0, 255, 255),
    (128, 0, 0), (0, 128, 0), (255, 255, 255),
]  # fmt: skip
SIZE, CELL = 96, 32
PATCH = 64


def grid_image(colours=CELL_COLOURS) -> Image.Image:
    img = Image.new("RGB", (SIZE, SIZE))
    for k, colour in enumerate(colours):
        r, c = divmod(k, 3)
        img.paste(colour, (c * CELL, r * CELL, (c + 1) * CELL, (r + 1) * CELL))
    return img


def encode_image(img: Image.Image, fmt: str, **save_kwargs) -> bytes:
    buf = io.BytesIO()
    img.save(buf, fmt, **save_kwargs)
    return buf.getvalue()


def noise_jpeg(seed: int) -> bytes:
    rng = random.Random(seed)
    img = Image.frombytes("RGB", (SIZE, SIZE), bytes(rng.randrange(256) for _ in range(SIZE * SIZE * 3)))
    return encode_image(img, "JPEG", quality=90)


def centre_colours(patches: torch.Tensor) -> list[tuple[int, ...]]:
    """Mean colour of the central half of each uint8 patch, far from the resize seams."""
    q = patches.shape[-1] // 4
    centre = patches[:, :, q:-q, q:-q].float().mean(dim=(2, 3))  # (P, 3)
    return [tuple(round(v) for v in row.tolist()) for row in centre]


@pytest.fixture(scope="module")
def featurizer():
    # batch_size 2 so that a handful of rows already spans several encoder chunks.
    return ItemFeaturizer.from_config(FeaturizerConfig(patch_size=PATCH, batch_size=2))


# ---------------------------------------------------------------- images


def test_patches_come_out_in_natural_order():
    patches = image_to_patches(decode_image(encode_image(grid_image(), "PNG")), grid=3, patch_size=PATCH)
    assert patches.shape == (9, 3, PATCH, PATCH) and patches.dtype == torch.uint8
    assert centre_colours(patches) == CELL_COLOURS


def test_rgba_png_is_composited_on_white():
    img = Image.new("RGBA", (SIZE, SIZE), (0, 0, 0, 0))
    img.paste((200, 30, 40, 255), (0, 0, SIZE // 2, SIZE))  # opaque left half, transparent right
    rgb = decode_image(encode_image(img, "PNG"))
    assert rgb.mode == "RGB" and rgb.size == (SIZE, SIZE)
    assert rgb.getpixel((10, 10)) == (200, 30, 40)
    assert rgb.getpixel((SIZE - 10, 10)) == (255, 255, 255)


def test_grayscale_png_becomes_rgb():
    img = Image.linear_gradient("L").resize((SIZE, SIZE))
    rgb = decode_image(encode_image(img, "PNG"))
    assert rgb.mode == "RGB"
    value = img.getpixel((5, 70))
    assert rgb.getpixel((5, 70)) == (value, value, value)


def test_exif_orientation_is_applied_before_patching():
    upright = grid_image()
    # Orientation 6: the viewer rotates the stored pixels 90 degrees clockwise to show them, so
    # store the upright picture rotated 90 degrees counter-clockwise.
    stored = upright.transpose(Image.Transpose.ROTATE_90)
    exif = Image.Exif()
    exif[0x0112] = 6
    data = encode_image(stored, "JPEG", quality=95, exif=exif.tobytes())
    patches = image_to_patches(decode_image(data), grid=3, patch_size=PATCH)
    for got, want in zip(centre_colours(patches), CELL_COLOURS):
        assert max(abs(a - b) for a, b in zip(got, want)) <= 12, (got, want)


@pytest.mark.parametrize(
    "data",
    [
        pytest.param(noise_jpeg(1)[: len(noise_jpeg(1)) // 2], id="truncated-jpeg"),
        pytest.param(random.Random(2).randbytes(4000), id="random-bytes"),
        pytest.param(b"", id="empty"),
        pytest.param(None, id="none"),
    ],
)
def test_undecodable_bytes_raise_image_decode_error(data):
    with pytest.raises(ImageDecodeError) as err:
        decode_image(data)
    assert err.value.reason


def test_truncated_images_are_never_silently_accepted(monkeypatch):
    monkeypatch.setattr(ImageFile, "LOAD_TRUNCATED_IMAGES", True)
    with pytest.raises(RuntimeError, match="LOAD_TRUNCATED_IMAGES"):
        decode_image(noise_jpeg(1))


def test_normalised_patches_use_the_encoder_statistics(featurizer):
    # tf_efficientnet_lite0 expects mean = std = 0.5: black -> -1, white -> +1.
    assert featurizer.image_mean == (0.5, 0.5, 0.5) and featurizer.image_std == (0.5, 0.5, 0.5)
    x = decode_to_patches(encode_image(grid_image(), "PNG"), 3, PATCH, featurizer.image_mean, featurizer.image_std)
    assert x.shape == (9, 3, PATCH, PATCH) and x.dtype == torch.float32
    assert x[8, :, 32, 32].tolist() == [1.0, 1.0, 1.0]  # white cell
    assert x[0, :, 32, 32].tolist() == [1.0, -1.0, -1.0]  # red cell


# ---------------------------------------------------------------- prepare


def test_prepare_reports_errors_per_row_and_truncates_long_text(featurizer):
    png = encode_image(grid_image(), "PNG")
    long_description = "organic strawberries picked this morning " * 40
    prepared = featurizer.prepare(
        ["Strawberries", "", "Soap", None, "Lemons", "Basil"],
        [long_description, "  ", "lemon scented", None, "", "fresh"],
        [png, png, None, b"not an image", png, random.Random(3).randbytes(500)],
    )
    assert prepared.errors[0] is None
    assert prepared.errors[1] == "text: empty title and description"
    assert prepared.errors[2] == "image: missing"
    assert prepared.errors[3].startswith("text: empty title and description; image: cannot decode (")
    assert prepared.errors[4] is None  # a title alone is enough
    assert prepared.errors[5].startswith("image: cannot decode (")
    assert prepared.valid.tolist() == [True, False, False, False, True, False]

    tok = featurizer.tokenizer
    ids = prepared.input_ids[0]
    assert len(ids) == featurizer.max_text_tokens == 50
    tokens = tok.convert_ids_to_tokens(ids)
    # The short title survives whole; the long description is what gets cut.
    assert tokens[:4] == ["[CLS]", "straw", "##berries", "[SEP]"] and tokens[-1] == "[SEP]"
    assert prepared.token_type_ids[0][:4] == [0, 0, 0, 0] and prepared.token_type_ids[0][4] == 1
    assert tok.convert_ids_to_tokens(prepared.input_ids[4]) == ["[CLS]", "lemon", "##s", "[SEP]"]
    assert prepared.input_ids[1] == [] and not prepared.patches[1].any()


# ---------------------------------------------------------------- encode


@pytest.fixture(scope="module")
def catalogue():
    titles = ["Fresh strawberries 500g", "Dish soap", "", "Basil", "Oat milk 1L", "Tea"]
    descriptions = ["Sweet red berries from local farms", "Lemon scented, 750 ml", "", "", "barista edition " * 30, "Green"]
    images = [encode_image(grid_image(CELL_COLOURS[k:] + CELL_COLOURS[:k]), "PNG") for k in range(4)] + [
        noise_jpeg(4),
        None,
    ]
    return titles, descriptions, images


def test_encode_shapes_and_invalid_rows(featurizer, catalogue):
    enc = featurizer.featurize(*catalogue)
    b = len(catalogue[0])
    assert featurizer.text_dim == 384 and featurizer.image_dim == 1280 and featurizer.n_patches == 9
    assert enc.valid.tolist() == [True, True, False, True, True, False]
    lengths = enc.text_mask.sum(1)
    assert enc.text.shape == (b, int(lengths.max()), 384) and enc.text.dtype == torch.float32
    assert enc.image.shape == (b, 9, 1280) and enc.image.dtype == torch.float32
    assert lengths[4] == 50 and lengths[2] == 0 and lengths[5] == 0
    assert enc.text[2].abs().sum() == 0 and enc.image[5].abs().sum() == 0
    assert enc.text[~enc.text_mask].abs().sum() == 0  # padding is zeroed
    # Different colour arrangements give different patch features.
    assert not torch.allclose(enc.image[0], enc.image[1], atol=1e-3)


def test_encode_is_deterministic_and_rows_are_independent_of_the_batch(featurizer, catalogue):
    full = featurizer.featurize(*catalogue)
    again = featurizer.featurize(*catalogue)
    assert torch.equal(full.text, again.text) and torch.equal(full.image, again.image)
    for i in (0, 4):
        alone = featurizer.featurize(*[[col[i]] for col in catalogue])
        n = int(alone.text_mask.sum())
        torch.testing.assert_close(alone.text[0, :n], full.text[i, :n], atol=1e-4, rtol=1e-4)
        torch.testing.assert_close(alone.image[0], full.image[i], atol=1e-4, rtol=1e-4)


def test_cpu_bf16_autocast_is_close_to_fp32(featurizer, catalogue):
    fp32 = featurizer.featurize(*catalogue)
    bf16 = featurizer.featurize(*catalogue, autocast_dtype=torch.bfloat16)
    assert bf16.text.dtype == torch.float32 and torch.equal(bf16.text_mask, fp32.text_mask)
    rows = fp32.valid
    cos_text = torch.nn.functional.cosine_similarity(bf16.text[rows], fp32.text[rows], dim=-1)[fp32.text_mask[rows]]
    cos_image = torch.nn.functional.cosine_similarity(bf16.image[rows], fp32.image[rows], dim=-1)
    assert cos_text.min() > 0.98 and cos_image.min() > 0.98
    assert not torch.equal(bf16.image, fp32.image)  # autocast really ran in bf16
    with pytest.raises(ValueError, match="autocast_dtype"):
        featurizer.encode(featurizer.prepare(*[[c[0]] for c in catalogue]), autocast_dtype=torch.float64)


# ---------------------------------------------------------------- storage


def test_pack_unpack_round_trip(featurizer, catalogue):
    enc = featurizer.featurize(*catalogue)
    blobs = pack_item_features(enc)
    assert [b is None for b in blobs] == (~enc.valid).tolist()
    kept = [i for i, b in enumerate(blobs) if b is not None]
    text_embs, counts, image_embs = zip(*[blobs[i] for i in kept])
    assert list(counts) == enc.text_mask.sum(1)[kept].tolist()
    assert len(text_embs[0]) == counts[0] * 384 * 2 and len(image_embs[0]) == 9 * 1280 * 2

    text, mask, image = unpack_item_features(text_embs, counts, image_embs, 384, 1280, 9)
    longest = max(counts)
    assert text.shape == (len(kept), longest, 384) and image.shape == (len(kept), 9, 1280)
    assert text.dtype == image.dtype == torch.float32
    assert torch.equal(mask, enc.text_mask[kept, :longest])
    torch.testing.assert_close(text, enc.text[kept, :longest], atol=2e-3, rtol=1e-3)
    torch.testing.assert_close(image, enc.image[kept], atol=2e-3, rtol=1e-3)

    with pytest.raises(ValueError, match="row 0"):
        unpack_item_features([text_embs[0][:-2]], [counts[0]], [image_embs[0]], 384, 1280, 9)


def test_config_is_validated_with_the_key_name():
    with pytest.raises(ValueError, match=r"featurizer\.patch_grid"):
        FeaturizerConfig(patch_grid=0)
    with pytest.raises(ValueError, match=r"featurizer\.max_text_tokens"):
        FeaturizerConfig(max_text_tokens=2)
    with pytest.raises(AttributeError):
        FeaturizerConfig().patch_size = 32  # frozen


# ---------------------------------------------------------------- test-time views


def test_a_test_time_view_is_encoded_as_the_same_picture_listed_as_a_photo(featurizer):
    """prepare_views / encode_views give view j of a photo the tokens the featurizer gives that
    picture as a listing's own photo; the views follow the seed alone; a bad photo has no views."""
    import numpy as np

    photos = [encode_image(grid_image(), "PNG"), noise_jpeg(3), b"not an image"]
    seeds = [11, 12, 13]
    views = featurizer.prepare_views(photos, seeds, 2)   # (B, K, P, 3, S, S)
    assert views.shape == (3, 2, 9, 3, PATCH, PATCH) and views.dtype == torch.uint8
    assert torch.equal(views, featurizer.prepare_views(photos, seeds, 2))
    assert not torch.equal(views[0], featurizer.prepare_views(photos[:1], [99], 2)[0])   # another seed, other views
    assert not torch.equal(views[0, 0], views[0, 1]) and views[2].sum() == 0
    # a third view leaves the first two as they were: a night that asks for more views extends the old ones
    assert torch.equal(featurizer.prepare_views(photos, seeds, 3)[:, :2], views)

    tokens = featurizer.encode_views(views)   # (B, K, P, Di)
    assert tokens.shape == (3, 2, 9, featurizer.image_dim)
    rng = np.random.default_rng(seeds[1])
    photo = decode_image(photos[1], min_size=3 * PATCH)
    for j in range(2):
        view = random_view(photo, rng)   # the same draws prepare_views made for row 1
        as_photo = featurizer.featurize(["t"], ["d"], [encode_image(view, "PNG")]).image[0]   # (P, Di)
        torch.testing.assert_close(tokens[1, j], as_photo, atol=1e-4, rtol=1e-4)

    valid = torch.tensor([True, True, False])
    blobs = pack_views(tokens, valid)
    one_view = 9 * featurizer.image_dim * 2   # fp16 bytes of one photo's image tokens
    assert [None if b is None else len(b) for b in blobs] == [2 * one_view, 2 * one_view, None]
    second = np.frombuffer(blobs[1][one_view:], dtype="<f2").reshape(9, featurizer.image_dim)
    torch.testing.assert_close(torch.from_numpy(second.astype("float32")), tokens[1, 1], atol=2e-3, rtol=2e-3)
