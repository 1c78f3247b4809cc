"""CameNN model, gating, padding invariance, frames, losses and a small learning check (CPU, tiny dims).

One file (~705 lines) as camenn/model.py is one: each test sits next to the tests of the
same layer, and they share the tiny configs and the random-gate helpers defined at the top.
"""

from __future__ import annotations

import json
import time
from dataclasses import fields

import pytest
import torch
from torch.nn.attention import SDPBackend, sdpa_kernel
from torch.utils.flop_counter import FlopCounterMode

from camenn.losses import derangement, make_alignment_examples, multitask_loss
from camenn.model import (
    CameNN,
    CameNNBatch,
    CameNNConfig,
    ItemTokens,
    LSTMBlock,
    count_flops_per_item,
    create_model,
    create_model_from_config,
    cv_squared,
    frame_config,
    list_frames,
)

TINY = dict(text_dim=12, image_dim=10, n_patches=4, max_text_tokens=8, d_model=16, n_heads=2, ffn_mult=2,
            n_experts=3, max_behaviour=6, item_feature_sizes={"category": 7, "price_bucket": 4},
            user_feature_sizes={"age_band": 5, "zone": 3}, dropout=0.1)


pytestmark = pytest.mark.usefixtures("one_torch_thread")


def tiny_config(**overrides) -> CameNNConfig:
    return CameNNConfig(**{**TINY, **overrides})


def untrained_model(cfg: CameNNConfig) -> CameNN:
    """A fresh model whose heads and gates are random rather than zero (their real init), so
    outputs and gate weights depend on the inputs and invariance tests can fail."""
    model = create_model_from_config(cfg)
    gen = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for layer in [*model.heads.values(), *model.gates.values()]:
            layer.weight.copy_(torch.randn(layer.weight.shape, generator=gen))
            layer.bias.copy_(torch.randn(layer.bias.shape, generator=gen))
    return model


def random_items(cfg: CameNNConfig, lead: tuple[int, ...], L: int, gen: torch.Generator) -> ItemTokens:
    """Random items; every item has at least one real text token, padding at the end of its text."""
    lengths = torch.randint(1, L + 1, lead, generator=gen)  # lead
    text_mask = torch.arange(L) < lengths[..., None]  # (*lead, L)
    feats = torch.stack([torch.randint(0, n, lead, generator=gen) for n in cfg.item_feature_sizes.values()], dim=-1)
    return ItemTokens(
        text=torch.randn(*lead, L, cfg.text_dim, generator=gen),
        text_mask=text_mask,
        image=torch.randn(*lead, cfg.n_patches, cfg.image_dim, generator=gen),
        feats=feats,
    )


def random_batch(cfg: CameNNConfig, B: int, N: int = 3, L: int = 5, item_only: bool = False, seed: int = 0) -> CameNNBatch:
    gen = torch.Generator().manual_seed(seed)
    target = random_items(cfg, (B,), L, gen)
    if item_only:
        return CameNNBatch(target)
    n_real = torch.randint(0, N + 1, (B,), generator=gen)  # (B,) some rows with no behaviour at all
    behaviour_mask = torch.arange(N) < n_real[:, None]  # (B, N) slots filled from the front
    user_feats = torch.stack([torch.randint(0, n, (B,), generator=gen) for n in cfg.user_feature_sizes.values()], dim=-1)
    return CameNNBatch(target, random_items(cfg, (B, N), L, gen), behaviour_mask, user_feats)


def pad_items(items: ItemTokens, extra_text: int, gen: torch.Generator) -> ItemTokens:
    """The same items with ``extra_text`` more text positions of loud garbage, masked out."""
    lead = items.text.shape[:-2]
    junk = 100 * torch.randn(*lead, extra_text, items.text.shape[-1], generator=gen)
    return ItemTokens(
        text=torch.cat([items.text, junk], dim=-2),
        text_mask=torch.cat([items.text_mask, torch.zeros(*lead, extra_text, dtype=torch.bool)], dim=-1),
        image=items.image,
        feats=items.feats,
    )


def padded_batch(cfg: CameNNConfig, batch: CameNNBatch, extra_slots: int, extra_text: int) -> CameNNBatch:
    """``batch`` with more (masked, garbage-filled) behaviour slots and text positions."""
    gen = torch.Generator().manual_seed(123)
    beh = pad_items(batch.behaviour, extra_text, gen)
    B, N, L = beh.text_mask.shape
    junk = random_items(cfg, (B, extra_slots), L, gen)
    junk = ItemTokens(100 * junk.text, torch.ones_like(junk.text_mask), 100 * junk.image, junk.feats)
    return CameNNBatch(
        target=pad_items(batch.target, extra_text, gen),
        behaviour=ItemTokens(*(torch.cat([getattr(beh, f), getattr(junk, f)], dim=1) for f in ("text", "text_mask", "image", "feats"))),
        behaviour_mask=torch.cat([batch.behaviour_mask, torch.zeros(B, extra_slots, dtype=torch.bool)], dim=1),
        user_feats=batch.user_feats,
    )


def assert_outputs_close(a: dict, b: dict, tasks, atol=1e-5):
    for t in tasks:
        torch.testing.assert_close(a[t], b[t], atol=atol, rtol=0)
        torch.testing.assert_close(a["gates"][t], b["gates"][t], atol=atol, rtol=0)


# --- config ------------------------------------------------------------------


def test_config_json_round_trip():
    cfg = tiny_config(top_k=2, tasks=("ita", "cvr"), expert_type="lstm")
    back = CameNNConfig.from_dict(json.loads(json.dumps(cfg.to_dict())))
    assert back == cfg
    assert back.tasks == ("ita", "cvr") and isinstance(back.tasks, tuple)
    assert list(back.item_feature_sizes) == ["category", "price_bucket"]  # column order survives


@pytest.mark.parametrize("overrides, message", [
    (dict(d_model=15, n_heads=2), "divisible by n_heads"),
    (dict(top_k=4, n_experts=3), "top_k"),
    (dict(tasks=("cvr", "ctr")), "unknown task"),
    (dict(tasks=()), "at least one task"),
    (dict(expert_type="gru"), "expert_type"),
    (dict(dropout=1.0), "dropout"),
    (dict(gate_balance_weight=-0.1), "gate_balance_weight"),
])
def test_config_rejects_bad_values(overrides, message):
    with pytest.raises(ValueError, match=message):
        tiny_config(**overrides)


def test_config_from_dict_rejects_unknown_keys():
    with pytest.raises(ValueError, match="unknown CameNNConfig key"):
        CameNNConfig.from_dict({**tiny_config().to_dict(), "n_layers": 3})


def test_factory_frames_and_overrides():
    assert set(list_frames()) >= {"camenn", "mmoe", "mose", "single_task"}
    base = {k: v for k, v in TINY.items() if k != "n_experts"}
    m = create_model("single_task", **base)
    assert m.cfg.tasks == ("cvr",) and m.cfg.n_experts == 1 and set(m.heads) == {"cvr"}
    assert create_model("single_task", **base, n_experts=2).cfg.n_experts == 2  # overrides win
    m = create_model("mose", **TINY)
    assert (m.cfg.bottom_type, m.cfg.expert_type) == ("lstm", "lstm")
    with pytest.raises(ValueError, match="unknown frame"):
        create_model("bert4rec", **TINY)


# --- shapes, gates, invariances ----------------------------------------------


@pytest.mark.parametrize("item_only", [True, False])
def test_output_shapes(item_only):
    cfg = tiny_config()
    out = create_model_from_config(cfg)(random_batch(cfg, B=4, item_only=item_only))
    assert set(out) == {"cvr", "ita", "tia", "gates", "gate_aux_loss"}
    for t in cfg.tasks:
        assert out[t].shape == (4,) and out[t].dtype == torch.float32
        assert out["gates"][t].shape == (4, cfg.n_experts)
    probs = create_model_from_config(cfg).predict(random_batch(cfg, B=4, item_only=item_only))
    assert all(((p >= 0) & (p <= 1)).all() and p.shape == (4,) for p in probs.values())


def test_forward_computes_only_the_tasks_asked_for():
    cfg = tiny_config()
    model = untrained_model(cfg).eval()
    batch = random_batch(cfg, B=4)
    every = model(batch)
    cvr_only = model(batch, "cvr")
    assert set(cvr_only) == {"cvr", "gates", "gate_aux_loss"} and set(cvr_only["gates"]) == {"cvr"}
    torch.testing.assert_close(cvr_only["cvr"], every["cvr"])
    align = model.predict(batch, ("ita", "tia"))
    assert set(align) == {"ita", "tia"}
    torch.testing.assert_close(align["tia"], torch.sigmoid(every["tia"]))
    # the towers of tasks not asked for get no gradient: they were never run
    model.train()
    model(batch, "cvr")["cvr"].sum().backward()
    assert model.towers["ita"].blocks[0].mlp.fc.weight.grad is None
    assert model.towers["cvr"].blocks[0].mlp.fc.weight.grad is not None
    with pytest.raises(ValueError, match="this model has tasks"):
        create_model_from_config(tiny_config(tasks=("cvr",)))(batch, "ita")


def test_gates_sum_to_one_per_task():
    cfg = tiny_config()
    out = untrained_model(cfg)(random_batch(cfg, B=5))
    for t in cfg.tasks:
        g = out["gates"][t]
        torch.testing.assert_close(g.sum(-1), torch.ones(5))
        assert (g > 0).all()


@pytest.mark.parametrize("training", [True, False], ids=["train-noisy", "eval"])
def test_top_k_keeps_exactly_k_experts(training):
    cfg = tiny_config(n_experts=4, top_k=2)
    model = untrained_model(cfg).train(training)
    out = model(random_batch(cfg, B=8))
    for t in cfg.tasks:
        g = out["gates"][t]
        assert ((g != 0).sum(-1) == 2).all()
        torch.testing.assert_close(g.sum(-1), torch.ones(8))
    # in eval (no noise) the kept weights are the softmax over the two largest gate logits, renormalised
    model.eval()
    pooled = torch.randn(8, cfg.d_model)
    logits = model.gates["cvr"](pooled)
    top, idx = logits.topk(2, dim=-1)
    g = model.gate_weights("cvr", pooled)
    torch.testing.assert_close(g.gather(-1, idx), top.softmax(-1))


@pytest.mark.parametrize("frame, behaviour_tokens", [("camenn", "full"), ("camenn", "pooled"), ("mmoe", "full"),
                                                     ("mose", "full"), ("mose", "pooled")])
def test_padding_invariance(frame, behaviour_tokens):
    cfg = frame_config(frame, **TINY, behaviour_tokens=behaviour_tokens)
    model = untrained_model(cfg).eval()
    batch = random_batch(cfg, B=6, N=2, L=4)
    padded = padded_batch(cfg, batch, extra_slots=3, extra_text=3)
    assert padded.behaviour.text.shape[1:3] == (5, 7)
    assert_outputs_close(model(batch), model(padded), cfg.tasks)


def packed_bidirectional_reference(block: LSTMBlock, x: torch.Tensor, pad: torch.Tensor) -> torch.Tensor:
    """The textbook way: each row's real tokens as a packed sequence through one bidirectional LSTM."""
    D = x.shape[-1]
    lstm = torch.nn.LSTM(D, D, batch_first=True, bidirectional=True)
    with torch.no_grad():
        for name, p in block.forward_lstm.named_parameters():
            getattr(lstm, name).copy_(p)
        for name, p in block.reverse_lstm.named_parameters():
            getattr(lstm, name + "_reverse").copy_(p)
    out = torch.zeros(*x.shape[:2], 2 * D)  # (B, T, 2D)
    for b in range(x.shape[0]):
        real = (~pad[b]).nonzero().squeeze(-1)  # (n,)
        y, _ = lstm(block.ln(x[b, real])[None])  # (1, n, 2D)
        out[b, real] = y[0]
    return x + block.proj(out)  # (B, T, D); only real positions are compared


def test_lstm_block_equals_a_bidirectional_lstm_over_the_real_tokens():
    cfg = tiny_config(bottom_type="lstm", dropout=0.0)
    block = LSTMBlock(cfg).eval()
    gen = torch.Generator().manual_seed(3)
    x = torch.randn(5, 11, cfg.d_model, generator=gen)  # (B, T, D)
    pad = torch.rand(5, 11, generator=gen) < 0.4  # (B, T) padding anywhere, as between items
    pad[:, 0] = False
    with torch.no_grad():
        got, want = block(x, pad), packed_bidirectional_reference(block, x, pad)
    torch.testing.assert_close(got[~pad], want[~pad], atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("frame, behaviour_tokens", [("camenn", "full"), ("camenn", "pooled"), ("mose", "full")])
def test_item_only_equals_all_behaviour_masked(frame, behaviour_tokens):
    cfg = frame_config(frame, **TINY, behaviour_tokens=behaviour_tokens)
    model = untrained_model(cfg).eval()
    full = random_batch(cfg, B=4, N=3)
    empty = CameNNBatch(full.target, full.behaviour, torch.zeros_like(full.behaviour_mask), None)
    assert_outputs_close(model(CameNNBatch(full.target)), model(empty), cfg.tasks)
    # and behaviour does matter when it is there
    assert not torch.allclose(model(full)["cvr"], model(empty)["cvr"], atol=1e-4)


def test_pooled_behaviour_items_are_three_tokens_of_their_run():
    cfg = tiny_config(behaviour_tokens="pooled", dropout=0.0)
    model = untrained_model(cfg).eval()
    batch = random_batch(cfg, B=3, N=2, L=5)
    batch.behaviour.text_mask[0, 1] = False  # one behaviour item without any text
    x, pad, cls_idx = model.embed(batch)
    n_user = len(cfg.user_feature_sizes)
    assert x.shape[1] == n_user + 2 * 3 + (5 + 2 + cfg.n_patches) and cls_idx == n_user + 2 * 3
    # the text token is the mean of the item's real projected text tokens, at the first text position
    items = batch.behaviour
    with torch.no_grad():
        proj = model.text_in(items.text[1, 0])[items.text_mask[1, 0]].mean(0)  # (D,) row 1, slot 1
        want = proj + model.position.weight[1] + model.segment.weight[0] + model.slot.weight[1]
    torch.testing.assert_close(x[1, n_user + 1], want, atol=1e-5, rtol=0)
    # an item without text has no text token, and nothing else is padding in a real slot
    rows = pad[:, n_user:n_user + 6].reshape(3, 2, 3)  # (B, N, 3)
    real_slot = batch.behaviour_mask
    assert rows[0, 1].tolist() == [False, True, False] if real_slot[0, 1] else rows[0, 1].all()
    assert not rows[1][real_slot[1]].any()
    # the cost model counts the same tokens
    from camenn.model import sequence_length

    assert sequence_length(cfg, n_behaviour=2, n_text_tokens=5) == x.shape[1]


def test_pooled_items_embed_alike_from_encoder_outputs_and_from_projected_tokens():
    # training pools encoder outputs (mean, then one projection); the nightly job pools its cached
    # projected tokens: the same numbers, items without text included
    cfg = tiny_config(behaviour_tokens="pooled", dropout=0.0)
    model = untrained_model(cfg).eval()
    items = random_batch(cfg, B=5, N=1, L=6).target
    items.text_mask[2] = False
    slot = torch.arange(5) % 2
    with torch.no_grad():
        raw_x, raw_pad = model.embed_items_pooled(items, slot)  # (5, 3, D)
        proj_x, proj_pad = model.embed_items_pooled(model.project_items(items), slot)
    assert torch.equal(raw_pad, proj_pad) and raw_pad[2].tolist() == [False, True, False]
    torch.testing.assert_close(raw_x[~raw_pad], proj_x[~proj_pad], atol=1e-5, rtol=1e-5)


def test_eval_is_deterministic_and_train_is_not():
    cfg = tiny_config(dropout=0.3)
    model = untrained_model(cfg)
    batch = random_batch(cfg, B=4)
    model.eval()
    a, b = model(batch), model(batch)
    assert all(torch.equal(a[t], b[t]) for t in cfg.tasks)
    model.train()
    assert not torch.equal(model(batch)["cvr"], model(batch)["cvr"])
    assert model.predict(batch)["cvr"].requires_grad is False
    assert model.training  # predict restores the mode it found


@pytest.mark.parametrize("frame", ["camenn", "mmoe", "mose", "single_task"])
def test_every_frame_runs_forward_and_backward(frame):
    model = untrained_model(frame_config(frame, **TINY))
    batch = random_batch(model.cfg, B=4, N=2)
    out = model(batch)
    loss = sum(out[t].sum() for t in model.cfg.tasks)
    loss.backward()
    for name, p in model.named_parameters():
        assert p.grad is not None, f"{name} got no gradient"
        assert torch.isfinite(p.grad).all(), f"{name} has a non-finite gradient"
    # the frame's blocks are the ones it claims
    kinds = {type(b).__name__ for b in model.experts[0].blocks}
    assert kinds == {"camenn": {"TransformerBlock"}, "mmoe": {"MLPBlock"}, "mose": {"LSTMBlock"},
                     "single_task": {"TransformerBlock"}}[frame]


def test_bad_inputs_fail_clearly():
    cfg = tiny_config()
    model = create_model_from_config(cfg)
    batch = random_batch(cfg, B=2, item_only=True)
    bad = CameNNBatch(ItemTokens(batch.target.text, batch.target.text_mask, batch.target.image, batch.target.feats[:, :1]))
    with pytest.raises(ValueError, match="feature column"):
        model(bad)
    feats = batch.target.feats.clone()
    feats[0, 0] = 7  # category vocabulary is [0, 7)
    with pytest.raises(ValueError, match="'category' ids must be in"):
        model(CameNNBatch(ItemTokens(batch.target.text, batch.target.text_mask, batch.target.image, feats)))
    with pytest.raises(ValueError, match="max_behaviour"):
        model(random_batch(cfg, B=2, N=cfg.max_behaviour + 1))


def test_flop_count_matches_torch_counter():
    # the math SDPA backend decomposes attention into matmuls the counter sees; the LSTM frame is not checked
    for frame in ("camenn", "mmoe", "single_task"):
        cfg = frame_config(frame, **TINY)
        model = untrained_model(cfg).eval()
        for n_beh in (0, 3):
            batch = random_batch(cfg, B=1, N=3, L=cfg.max_text_tokens, item_only=n_beh == 0)
            if n_beh:
                batch.behaviour_mask[:] = True
            with sdpa_kernel(SDPBackend.MATH), FlopCounterMode(display=False) as counter:
                model(batch)
            assert count_flops_per_item(cfg, n_behaviour=n_beh) == counter.get_total_flops(), (frame, n_beh)


# --- losses and alignment examples -------------------------------------------


def test_multitask_loss_masks_rows_and_never_nans():
    logits = {"cvr": torch.tensor([2.0, float("nan"), -1.0], requires_grad=True),
              "ita": torch.tensor([0.5, 0.5, 0.5], requires_grad=True), "gates": {}}
    labels = {"cvr": torch.tensor([1.0, 0.0, 0.0]), "ita": torch.tensor([1.0, 1.0, 0.0])}
    mask = {"cvr": torch.tensor([True, False, True]), "ita": torch.zeros(3, dtype=torch.bool)}
    total, per = multitask_loss(logits, labels, mask, {"cvr": 2.0, "ita": 1.0})
    bce = torch.nn.functional.binary_cross_entropy_with_logits
    expected_cvr = (bce(torch.tensor(2.0), torch.tensor(1.0)) + bce(torch.tensor(-1.0), torch.tensor(0.0))) / 2
    torch.testing.assert_close(per["cvr"], expected_cvr)
    assert per["ita"].item() == 0.0
    torch.testing.assert_close(total, 2.0 * expected_cvr)
    total.backward()
    assert torch.isfinite(logits["cvr"].grad).all() and logits["cvr"].grad[1] == 0
    assert torch.equal(logits["ita"].grad, torch.zeros(3))


def test_balanced_tasks_weigh_each_class_half_whatever_their_counts():
    # the alignment examples' prior: 3 positives (one masked out) to 1 negative
    z = torch.tensor([2.0, 1.0, -0.5, 0.3, 7.0])
    y = torch.tensor([1.0, 1.0, 1.0, 0.0, 1.0])
    m = torch.tensor([True, True, True, True, False])
    bce = torch.nn.functional.binary_cross_entropy_with_logits(z, y, reduction="none")
    _, plain = multitask_loss({"tia": z}, {"tia": y}, {"tia": m})
    _, balanced = multitask_loss({"tia": z}, {"tia": y}, {"tia": m}, balanced=("tia",))
    torch.testing.assert_close(plain["tia"], bce[:4].mean())
    torch.testing.assert_close(balanced["tia"], 0.5 * (bce[:3].mean() + bce[3]))
    # a batch with one class only: that class alone, never a division by zero
    _, one = multitask_loss({"tia": z[:3]}, {"tia": y[:3]}, {"tia": m[:3]}, balanced=("tia",))
    torch.testing.assert_close(one["tia"], 0.5 * bce[:3].mean())
    # logit adjustment: the plain loss of the logit plus the batch's log prior odds, log(3 / 1)
    _, adjusted = multitask_loss({"tia": z}, {"tia": y}, {"tia": m}, logit_adjusted=("tia",))
    shifted = torch.nn.functional.binary_cross_entropy_with_logits(z[:4] + torch.log(torch.tensor(3.0)), y[:4])
    torch.testing.assert_close(adjusted["tia"], shifted)
    _, single = multitask_loss({"tia": z[:3]}, {"tia": y[:3]}, {"tia": m[:3]}, logit_adjusted=("tia",))
    torch.testing.assert_close(single["tia"], bce[:3].mean())   # one class: no prior to correct


def test_derangement_has_no_fixed_point():
    gen = torch.Generator().manual_seed(0)
    for n in (2, 3, 17):
        for _ in range(20):
            d = derangement(n, gen)
            assert sorted(d.tolist()) == list(range(n)) and (d != torch.arange(n)).all()
    with pytest.raises(ValueError):
        derangement(1, gen)


@pytest.mark.parametrize("attribute_side", [True, False])
def test_alignment_examples_swap_the_right_side(attribute_side):
    cfg = tiny_config()
    B = 8
    items = random_batch(cfg, B=B, item_only=True).target
    ex, labels, mask = make_alignment_examples(items, torch.Generator().manual_seed(1), swap_fraction=0.5,
                                               attribute_side=attribute_side)
    n = 4
    assert len(ex) == B + 2 * n and labels["ita"].shape == (B + 2 * n,)
    assert torch.equal(ex.select(torch.arange(B)).text, items.text)  # positives first, untouched

    def origin(field: str, row: int) -> int:  # the one original item holding exactly this row's field
        hits = [i for i in range(B) if torch.equal(getattr(ex, field)[row], getattr(items, field)[i])]
        assert len(hits) == 1
        return hits[0]

    for r in range(B, B + n):  # text-swapped: own image and feats, another item's text
        own, donor = origin("image", r), origin("text", r)
        assert own != donor and torch.equal(ex.feats[r], items.feats[own])
        assert torch.equal(ex.text_mask[r], items.text_mask[donor])
        assert labels["ita"][r] == 0 and mask["ita"][r]
        assert labels["tia"][r] == 1 and bool(mask["tia"][r]) == attribute_side
    for r in range(B + n, B + 2 * n):  # image-swapped: own text, another item's image
        own, donor = origin("text", r), origin("image", r)
        assert own != donor and torch.equal(ex.feats[r], items.feats[own])
        assert labels["tia"][r] == 0 and mask["tia"][r]
        assert labels["ita"][r] == 1 and bool(mask["ita"][r]) == attribute_side
    assert (labels["ita"][:B] == 1).all() and (labels["tia"][:B] == 1).all()
    assert mask["ita"][:B].all() and mask["tia"][:B].all()


# --- noisy top-k gating ------------------------------------------------------


def top_k_model(seed: int = 0, **overrides) -> CameNN:
    """A top-2-of-4 model at its REAL initialisation (gates not overwritten)."""
    torch.manual_seed(seed)
    return create_model_from_config(tiny_config(n_experts=4, top_k=2, **overrides))


def test_top_k_real_init_selects_every_expert():
    model = top_k_model()
    assert model.training
    out = model(random_batch(model.cfg, B=16))
    for t in model.cfg.tasks:
        chosen = out["gates"][t] > 0  # (B, M)
        assert (chosen.sum(-1) == 2).all()
        assert chosen.any(0).all(), (t, chosen.sum(0))  # every expert is some row's choice
    # without noise (eval) the small random gate weights still route rows by their input, not
    # all to the same pair by topk's tie-break, as all-zero gate weights would
    model.eval()
    out = model(random_batch(model.cfg, B=16))
    for t in model.cfg.tasks:
        assert (out["gates"][t] > 0).any(0).sum() > 2, t


def test_top_k_every_expert_gets_gradient_within_a_few_steps():
    model = top_k_model()
    cfg = model.cfg
    batch = random_batch(cfg, B=8)
    labels = {t: (torch.arange(8) % 2).float() for t in cfg.tasks}
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    trained = torch.zeros(cfg.n_experts, dtype=torch.bool)
    noise_trained = set()
    for _ in range(3):
        out = model(batch)
        loss, _ = multitask_loss(out, labels, {})
        assert out["gate_aux_loss"].requires_grad and out["gate_aux_loss"].item() > 0
        opt.zero_grad(set_to_none=True)
        (loss + cfg.gate_balance_weight * out["gate_aux_loss"]).backward()
        for m, expert in enumerate(model.experts):
            trained[m] |= any(p.grad is not None and bool(p.grad.abs().sum() > 0) for p in expert.parameters())
        noise_trained |= {t for t, layer in model.gate_noise.items() if layer.weight.grad is not None
                          and bool(layer.weight.grad.abs().sum() > 0)}
        opt.step()
    assert trained.all(), trained
    assert noise_trained == set(cfg.tasks)


def balanced_gate_model(training: bool, collapsed: bool) -> tuple[CameNN, torch.Tensor]:
    """A top-2-of-4 model whose cvr gate logits are 10 x the first 4 input dims, with tiny noise,
    and inputs that split 4 rows evenly over experts {0, 1} and {2, 3} (or all onto {0, 1})."""
    model = top_k_model().train(training)
    D = model.cfg.d_model
    with torch.no_grad():
        model.gates["cvr"].weight.copy_(10 * torch.eye(4, D))
        model.gates["cvr"].bias.zero_()
        model.gate_noise["cvr"].weight.zero_()
        model.gate_noise["cvr"].bias.fill_(-30.0)  # noise std = softplus(-30) + 1e-2 ~ 0.01
    a, b = torch.zeros(D), torch.zeros(D)
    a[:2], b[2:4] = 1.0, 1.0
    pooled = torch.stack([a, a, a, a] if collapsed else [a, b, a, b])  # (4, D)
    return model, pooled


@pytest.mark.parametrize("training", [True, False], ids=["train-smooth-load", "eval-hard-load"])
def test_gate_aux_loss_is_zero_when_balanced_and_large_when_collapsed(training):
    torch.manual_seed(0)
    assert float(cv_squared(torch.full((4,), 2.0))) == 0.0
    assert float(cv_squared(torch.tensor([4.0, 0.0, 0.0, 0.0]))) == pytest.approx(3.0)
    model, pooled = balanced_gate_model(training, collapsed=False)
    g, aux = model.gate("cvr", pooled)
    torch.testing.assert_close(g.sum(0), torch.ones(4), atol=0.02, rtol=0)  # each expert: half of 2 rows
    assert aux.item() < 1e-3
    model, pooled = balanced_gate_model(training, collapsed=True)
    _, aux = model.gate("cvr", pooled)
    # importance (2, 2, 0, 0) and load (4, 4, 0, 0): CV^2 = 1 each
    assert aux.item() == pytest.approx(2.0, abs=1e-2)


def test_train_step_adds_the_weighted_gate_loss_of_both_passes():
    from camenn.training import _MixedStep, train_step

    results = {}
    for w in (0.0, 0.5):
        model = top_k_model(dropout=0.0, gate_balance_weight=w)
        full = random_batch(model.cfg, 8)
        align_items = random_batch(model.cfg, 6, item_only=True, seed=1).target
        examples, align_labels, align_mask = make_alignment_examples(align_items, torch.Generator().manual_seed(0))
        opt = torch.optim.SGD(model.parameters(), lr=0.0)
        torch.manual_seed(1)  # the same gate noise for both weights
        results[w] = train_step(_MixedStep(model), opt, full, (torch.arange(8) % 2).float(), CameNNBatch(examples),
                                align_labels, align_mask, {})
    (loss0, per0), (loss1, per1) = results[0.0], results[0.5]
    assert set(per1) == {"cvr", "ita", "tia", "gate_aux"}
    torch.testing.assert_close(per0["gate_aux"], per1["gate_aux"])
    assert float(per1["gate_aux"]) > 0
    torch.testing.assert_close(loss1 - loss0, 0.5 * per1["gate_aux"])


def test_top_k_eval_is_deterministic_and_training_is_noisy():
    model = top_k_model(dropout=0.0)
    batch = random_batch(model.cfg, B=6)
    a, b = model.predict(batch), model.predict(batch)
    assert all(torch.equal(a[t], b[t]) for t in model.cfg.tasks)
    model.eval()
    x, y = model(batch), model(batch)
    assert all(torch.equal(x["gates"][t], y["gates"][t]) for t in model.cfg.tasks)
    model.train()  # no dropout: the gate noise alone makes two training passes differ
    assert not torch.equal(model(batch)["gates"]["cvr"], model(batch)["gates"]["cvr"])


@pytest.mark.parametrize("top_k", [None, 4], ids=["top_k-None", "top_k-all"])
def test_dense_gating_is_unchanged(top_k):
    cfg = tiny_config(n_experts=4, top_k=top_k)
    model = create_model_from_config(cfg)
    assert not cfg.sparse_gating and model.gate_noise is None
    assert not any("gate_noise" in k for k in model.state_dict())
    for layer in model.gates.values():  # zero gates: uniform mixing at the start
        assert torch.equal(layer.weight, torch.zeros_like(layer.weight))
    batch = random_batch(cfg, B=5)
    out = model(batch)  # training mode: dense gating has no noise
    for t in cfg.tasks:
        assert torch.equal(out["gates"][t], torch.full((5, 4), 0.25))
    assert float(out["gate_aux_loss"]) == 0.0 and not out["gate_aux_loss"].requires_grad
    # the dense gate is exactly the softmax of the gate logits, in training as in eval
    model = untrained_model(cfg)
    pooled = torch.randn(5, cfg.d_model)
    assert torch.equal(model.gate_weights("cvr", pooled), model.gates["cvr"](pooled).softmax(-1))
    # a top-k model draws the same initial weights as the dense one, gates and noise aside
    torch.manual_seed(7)
    dense = create_model_from_config(tiny_config(n_experts=4)).state_dict()
    torch.manual_seed(7)
    sparse = create_model_from_config(tiny_config(n_experts=4, top_k=2)).state_dict()
    assert {k for k in sparse if not k.startswith("gate_noise.")} == set(dense)
    for k, v in dense.items():
        if not k.startswith("gates."):
            assert torch.equal(v, sparse[k]), k


def test_top_k_noise_weights_round_trip_through_an_artifact(tmp_path):
    from camenn.checkpoint import load_artifact, save_artifact

    model = top_k_model()
    with torch.no_grad():
        for layer in model.gate_noise.values():
            layer.weight.normal_()
    art = load_artifact(save_artifact(tmp_path / "model", model, {}))
    for t in model.cfg.tasks:
        assert torch.equal(art.model.gate_noise[t].weight, model.gate_noise[t].weight)


def test_gate_balance_weight_reaches_the_model_from_the_app_config():
    from pathlib import Path

    from camenn.config import load_config
    from camenn.inputs import FeatureVocab
    from camenn.training import model_config_from_spec

    conf = Path(__file__).resolve().parents[1] / "conf" / "demo.yaml"
    config = load_config(conf, ["model.gate_balance_weight=0.25", "model.n_experts=4", "model.top_k=2"])
    spec = {"model": config.model.model_dump(mode="json"), "n_patches": 4, "max_text_tokens": 8}
    cfg = model_config_from_spec(spec, FeatureVocab(["a", "b"], [1.0]), text_dim=12, image_dim=10)
    assert (cfg.gate_balance_weight, cfg.top_k, cfg.sparse_gating) == (0.25, 2, True)


def test_the_app_config_takes_every_model_default_from_the_model_config():
    from camenn.config import ModelSettings

    shared = set(ModelSettings.model_fields) & {f.name for f in fields(CameNNConfig)}
    assert shared >= {"d_model", "n_heads", "top_k", "gate_balance_weight", "max_behaviour", "behaviour_tokens"}
    settings, model = ModelSettings(), CameNNConfig()
    assert {k: getattr(settings, k) for k in shared} == {k: getattr(model, k) for k in shared}


# --- learning ------------------------------------------------------------------

K = 6  # categories in the synthetic world


class World:
    """Items whose text and image both carry their category; a user buys what they bought before."""

    def __init__(self, cfg: CameNNConfig, seed: int):
        self.cfg = cfg
        self.gen = torch.Generator().manual_seed(seed)
        self.text_proto = torch.randn(K, cfg.text_dim, generator=self.gen)  # (K, Dt)
        self.image_proto = torch.randn(K, cfg.image_dim, generator=self.gen)  # (K, Di)

    def items(self, cat: torch.Tensor) -> ItemTokens:
        lead = cat.shape
        L, P = self.cfg.max_text_tokens, self.cfg.n_patches
        text = self.text_proto[cat][..., None, :] + 0.5 * torch.randn(*lead, L, self.cfg.text_dim, generator=self.gen)
        image = self.image_proto[cat][..., None, :] + 0.5 * torch.randn(*lead, P, self.cfg.image_dim, generator=self.gen)
        lengths = torch.randint(1, L + 1, lead, generator=self.gen)
        price = torch.randint(1, 4, lead, generator=self.gen)
        return ItemTokens(text, torch.arange(L) < lengths[..., None], image, torch.stack([cat + 1, price], dim=-1))

    def cvr_batch(self, B: int, N: int = 3):
        """Each user has a taste: every real behaviour item is of one category, and the target
        is bought iff it is of that category. Empty slots hold items of random categories, so a
        model that read them would be misled."""
        taste = torch.randint(0, K, (B,), generator=self.gen)
        n_real = torch.randint(1, N + 1, (B,), generator=self.gen)
        beh_mask = torch.arange(N) < n_real[:, None]  # (B, N)
        beh_cat = torch.where(beh_mask, taste[:, None], torch.randint(0, K, (B, N), generator=self.gen))
        # half the targets are of the user's taste, so the classes are balanced
        tgt_cat = torch.where(torch.rand(B, generator=self.gen) < 0.5, taste, torch.randint(0, K, (B,), generator=self.gen))
        bought = (tgt_cat == taste).float()
        users = torch.stack([torch.randint(0, n, (B,), generator=self.gen) for n in self.cfg.user_feature_sizes.values()], -1)
        batch = CameNNBatch(self.items(tgt_cat), self.items(beh_cat), beh_mask, users)
        return batch, {"cvr": bought}, {"cvr": torch.ones(B, dtype=torch.bool)}

    def alignment_batch(self, n_groups: int):
        """Groups of K items of distinct categories, so every swap pairs two different
        categories and the labels carry no noise."""
        parts = [make_alignment_examples(self.items(torch.randperm(K, generator=self.gen)), self.gen, swap_fraction=1.0)
                 for _ in range(n_groups)]
        examples = ItemTokens.cat([p[0] for p in parts])
        labels = {t: torch.cat([p[1][t] for p in parts]) for t in ("ita", "tia")}
        mask = {t: torch.cat([p[2][t] for p in parts]) for t in ("ita", "tia")}
        return CameNNBatch(examples), labels, mask


def test_training_drives_all_three_losses_down():
    torch.manual_seed(0)
    cfg = tiny_config(dropout=0.0, d_model=32, n_heads=4, n_experts=2, max_text_tokens=2, n_patches=1,
                      item_feature_sizes={"category": K + 1, "price_bucket": 4})
    model = create_model_from_config(cfg)
    world = World(cfg, seed=0)
    held_cvr, held_align = world.cvr_batch(256), world.alignment_batch(20)

    def held_out_losses():
        model.eval()
        with torch.no_grad():
            _, cvr = multitask_loss(model(held_cvr[0]), held_cvr[1], held_cvr[2])
            _, align = multitask_loss(model(held_align[0]), held_align[1], held_align[2])
        model.train()
        return {"cvr": cvr["cvr"].item(), "ita": align["ita"].item(), "tia": align["tia"].item()}

    before = held_out_losses()
    opt = torch.optim.Adam(model.parameters(), lr=3e-3, betas=(0.95, 0.999), weight_decay=1e-4)
    start = time.perf_counter()
    for _ in range(80):
        batch, y, m = world.cvr_batch(64)
        loss_cvr, _ = multitask_loss(model(batch), y, m)
        batch, y, m = world.alignment_batch(4)
        loss_align, _ = multitask_loss(model(batch), y, m)
        opt.zero_grad(set_to_none=True)
        (loss_cvr + loss_align).backward()
        opt.step()
    after = held_out_losses()
    print("held-out BCE before", before, "after", after, f"{time.perf_counter() - start:.1f}s")
    # the zero-initialised heads start at ln 2; a constant predictor of the ITA/TIA prior (2:1)
    # reaches 0.64, so clearing 0.6 x ln 2 = 0.42 needs the inputs, not just the label rates
    for t in ("cvr", "ita", "tia"):
        assert before[t] == pytest.approx(0.693, abs=1e-3)
        assert after[t] < 0.6 * before[t], (t, before[t], after[t])
