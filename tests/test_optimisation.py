"""The optimisation pieces of camenn.training: the lr schedule and the (mixed-precision) training step.

Pure PyTorch on CPU. Training runs autocast only on CUDA; these tests run the same step function
under CPU autocast, so the code path a GPU executor takes (autocast forward, fp32 loss,
loss scaling for fp16) is exercised here too.
"""

from __future__ import annotations

import math

import pytest
import torch
from test_model import random_batch, tiny_config

from camenn.losses import make_alignment_examples
from camenn.model import CameNNBatch, create_model_from_config
from camenn.training import _MixedStep, lr_schedule, train_step, training_autocast_dtype

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def lrs_of(kind: str, warmup: int, total: int, min_ratio: float = 0.0, base: float = 2e-3) -> list[float]:
    param = torch.nn.Parameter(torch.zeros(1))
    opt = torch.optim.Adam([param], lr=base)
    schedule = lr_schedule(opt, kind, warmup, total, min_ratio)
    out = []
    for _ in range(total):
        out.append(opt.param_groups[0]["lr"])
        opt.step()
        schedule.step()
    return out


def test_constant_schedule_is_the_configured_lr_after_warmup():
    assert lrs_of("constant", 0, 50) == [2e-3] * 50
    warm = lrs_of("constant", 4, 20)
    assert warm[:4] == pytest.approx([5e-4, 1e-3, 1.5e-3, 2e-3]) and warm[4:] == [2e-3] * 16


def test_cosine_schedule_warms_up_then_decays_to_its_floor():
    lrs = lrs_of("cosine", 10, 210, min_ratio=0.1)
    assert lrs[:10] == pytest.approx([2e-3 * (i + 1) / 10 for i in range(10)])
    decay = lrs[10:]
    assert decay[0] == pytest.approx(2e-3)
    assert all(a >= b for a, b in zip(decay, decay[1:]))             # never rises again
    assert decay[100] == pytest.approx(2e-3 * (0.1 + 0.9 * 0.5), rel=1e-6)  # half-way: mid-point of the cosine
    assert decay[-1] == pytest.approx(2e-4, rel=0.01)


def test_unknown_schedule_and_autocast_fail_clearly():
    opt = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=0.1)
    with pytest.raises(ValueError, match="lr_schedule"):
        lr_schedule(opt, "linear", 0, 10)
    with pytest.raises(ValueError, match="autocast"):
        training_autocast_dtype(torch.device("cpu"), "int8")


def test_autocast_applies_on_cuda_only():
    cpu, cuda = torch.device("cpu"), torch.device("cuda", 0)
    assert training_autocast_dtype(cpu, "bf16") is None
    assert training_autocast_dtype(cuda, "bf16") is torch.bfloat16
    assert training_autocast_dtype(cuda, "fp16") is torch.float16
    assert training_autocast_dtype(cuda, "none") is None


def _step_inputs(seed: int = 0):
    cfg = tiny_config(dropout=0.0)
    torch.manual_seed(seed)
    model = create_model_from_config(cfg)
    full = random_batch(cfg, 8, seed=seed)
    labels = (torch.arange(8) % 2).float()
    align_items = random_batch(cfg, 6, item_only=True, seed=seed + 1).target
    examples, align_labels, align_mask = make_alignment_examples(align_items, torch.Generator().manual_seed(seed))
    return model, full, labels, CameNNBatch(examples), align_labels, align_mask


def _linear_output_dtypes(model) -> tuple[list, list]:
    seen: list[torch.dtype] = []
    hooks = [m.register_forward_hook(lambda _m, _i, out: seen.append(out.dtype))
             for m in model.modules() if isinstance(m, torch.nn.Linear)]
    return seen, hooks


@pytest.mark.parametrize("amp", [None, torch.bfloat16, torch.float16], ids=["fp32", "bf16", "fp16-scaled"])
def test_train_step_updates_every_task_under_autocast(amp):
    model, full, labels, align, align_labels, align_mask = _step_inputs()
    before = {k: v.detach().clone() for k, v in model.state_dict().items()}
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    scaler = torch.amp.GradScaler("cpu") if amp == torch.float16 else None
    seen, hooks = _linear_output_dtypes(model)
    loss, per = train_step(_MixedStep(model), opt, full, labels, align, align_labels, align_mask, {}, amp, scaler)
    for h in hooks:
        h.remove()
    assert set(seen) == {amp or torch.float32}          # the forward ran at the precision asked for
    assert loss.dtype == torch.float32 and math.isfinite(float(loss))
    assert set(per) == {"cvr", "ita", "tia"}
    for name, p in model.named_parameters():
        assert p.dtype == torch.float32, name            # master weights stay fp32
    changed = [k for k, v in model.state_dict().items() if not torch.equal(v, before[k])]
    # every task's head moved: one step trained CVR on the full batch and ITA/TIA on the item-only one
    assert {f"heads.{t}.weight" for t in ("cvr", "ita", "tia")} <= set(changed)


def test_bf16_step_tracks_the_fp32_step():
    """Mixed precision changes the rounding, not the update: one step's loss and new weights stay close."""
    results = []
    for amp in (None, torch.bfloat16):
        model, full, labels, align, align_labels, align_mask = _step_inputs(seed=3)
        opt = torch.optim.SGD(model.parameters(), lr=0.1)
        loss, _ = train_step(_MixedStep(model), opt, full, labels, align, align_labels, align_mask, {}, amp)
        results.append((float(loss), torch.cat([p.detach().flatten() for p in model.parameters()])))
    (loss32, w32), (loss16, w16) = results
    assert loss16 == pytest.approx(loss32, rel=0.02)
    assert torch.allclose(w16, w32, atol=5e-3)
