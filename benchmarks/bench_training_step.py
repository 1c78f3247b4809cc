"""Training-step cost of CameNN on this machine: what sizes the demo's 15-minute budget.

    python benchmarks/bench_training_step.py                 # about a minute on 2 cores
    python benchmarks/bench_training_step.py --threads 1 --batch 64
    python benchmarks/bench_training_step.py --match frame       # the evaluation's frames only

One training step (forward + backward) of a full CVR batch (user + 5 behaviour items + the
target, 32 text tokens and 9 patches per item) and of the item-only alignment batch that goes
with it (3 rows per item: as is, text-swapped, image-swapped), on random inputs of the real
shapes, for several model sizes. Each time is the best of --repeats; every ratio is taken
against the first row, measured in the same run (the machines are shared and noisy).

Rows:
- the demo size (d_model 32, 2 heads) and the paper-like size (d_model 64, 4 and 8 heads);
- the demo size with pooled behaviour items (model.behaviour_tokens: pooled, 3 tokens per
  behaviour item instead of its whole run), with --behaviour items and with 10, which is what
  conf/demo.yaml trains;
- attention dropout 0.1 against 0 (the default): PyTorch's CPU attention leaves its fused
  kernel for the math path when dropout is on;
- every tower on every batch, the towers without labels entering the loss times 0 (and so
  the backward pass), against only the towers the batch has labels for (what training does);
- the evaluation's other frames at the demo size: MMoE (MLP experts) and MoSE (LSTM bottom and
  experts), the latter also with the LSTM run the textbook way, as one packed bidirectional
  call, which is what the LSTM block did before (rows of mixed length leave oneDNN's kernel).

Text lengths vary from row to row (a third of --text-tokens up to all of it), as real titles do;
the transformer frames pay for the padding anyway, the LSTM reads only real tokens.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import torch
import torch.nn as nn

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from camenn.model import CameNN, CameNNBatch, ItemTokens, LSTMBlock, frame_config  # noqa: E402

DEMO = dict(d_model=32, n_heads=2)  # the first row: the demo's size with the paper's full behaviour runs
CASES = [  # name, frame, model overrides, towers computed (None = all)
    ("demo: d32 h2", "camenn", DEMO, "labelled"),
    ("demo, pooled behaviour items", "camenn", {**DEMO, "behaviour_tokens": "pooled"}, "labelled"),
    ("demo, 10 pooled behaviour items (the demo)", "camenn", {**DEMO, "behaviour_tokens": "pooled", "max_behaviour": 10},
     "labelled"),
    ("d64 h4", "camenn", dict(d_model=64, n_heads=4), "labelled"),
    ("d64 h8", "camenn", dict(d_model=64, n_heads=8), "labelled"),
    ("d64 h8, all towers", "camenn", dict(d_model=64, n_heads=8), None),
    ("d64 h8, all towers, attention dropout 0.1", "camenn", dict(d_model=64, n_heads=8, attn_dropout=0.1), None),
    ("MMoE frame, d32 h2", "mmoe", DEMO, "labelled"),
    ("MoSE frame, d32 h2", "mose", DEMO, "labelled"),
    ("MoSE frame, d32 h2, packed LSTM (before)", "mose", DEMO, "labelled"),
]


class PackedLSTMBlock(LSTMBlock):
    """The LSTM block as it was before: one packed bidirectional LSTM (fresh weights; only its time is measured)."""

    def forward(self, x: torch.Tensor, pad: torch.Tensor) -> torch.Tensor:
        B, T, D = x.shape
        order = torch.argsort(pad.to(torch.uint8), dim=1, stable=True)  # (B, T) real tokens first
        index = order[..., None].expand(B, T, D)  # (B, T, D)
        h = torch.gather(self.ln(x), 1, index)  # (B, T, D)
        packed = nn.utils.rnn.pack_padded_sequence(h, (~pad).sum(1).clamp_min(1), batch_first=True, enforce_sorted=False)
        h, _ = self.packed(packed)
        h, _ = nn.utils.rnn.pad_packed_sequence(h, batch_first=True, total_length=T)  # (B, T, 2D)
        h = self.drop(self.proj(h))  # (B, T, D)
        return x + torch.zeros_like(h).scatter(1, index, h)  # (B, T, D)


def use_packed_lstm(model: CameNN) -> None:
    for module in model.modules():
        if isinstance(module, LSTMBlock):
            module.__class__ = PackedLSTMBlock
            module.packed = nn.LSTM(model.cfg.d_model, model.cfg.d_model, batch_first=True, bidirectional=True)


def random_items(lead: tuple[int, ...], L: int, cfg, gen: torch.Generator) -> ItemTokens:
    lengths = torch.randint(max(1, L // 3), L + 1, lead, generator=gen)  # lead
    return ItemTokens(torch.randn(*lead, L, cfg.text_dim, generator=gen), torch.arange(L) < lengths[..., None],
                      torch.randn(*lead, cfg.n_patches, cfg.image_dim, generator=gen),
                      torch.ones(*lead, len(cfg.item_feature_sizes), dtype=torch.long))


def step_seconds(model: CameNN, full: CameNNBatch, align: CameNNBatch, towers: str | None, repeats: int) -> tuple[float, float]:
    cvr = "cvr" if towers else None
    ita_tia = ("ita", "tia") if towers else None
    best_full = best_align = float("inf")
    for _ in range(repeats):
        model.zero_grad(set_to_none=True)
        t0 = time.perf_counter()
        out = model(full, cvr)
        unlabelled = sum(out[t].sum() for t in ("ita", "tia") if t in out)
        (out["cvr"].sum() + 0.0 * unlabelled).backward()  # as the loss was: 0 x the towers without labels
        t1 = time.perf_counter()
        out = model(align, ita_tia)
        (out["ita"].sum() + out["tia"].sum() + 0.0 * out.get("cvr", torch.zeros(())).sum()).backward()
        t2 = time.perf_counter()
        best_full, best_align = min(best_full, t1 - t0), min(best_align, t2 - t1)
    return best_full, best_align


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch", type=int, default=128, help="CVR rows per step; as many items in the alignment batch")
    parser.add_argument("--text-tokens", type=int, default=32)
    parser.add_argument("--behaviour", type=int, default=5)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--match", default="", help="only the rows whose name contains this (the demo row always runs)")
    parser.add_argument("--json", help="also write the rows to this file")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    gen = torch.Generator().manual_seed(0)
    rows = []
    print(f"{args.batch} CVR rows (+{args.behaviour} behaviour items) and {args.batch} alignment items "
          f"({3 * args.batch} rows) per step, {args.text_tokens} text tokens, {args.threads} thread(s)")
    print(f"{'model':<46}{'full s':>8}{'align s':>9}{'step s':>8}{'x first':>9}")
    for name, frame, overrides, towers in [c for c in CASES if c is CASES[0] or args.match in c[0]]:
        cfg = frame_config(frame, **{"max_behaviour": args.behaviour, **overrides}, n_experts=4,
                           max_text_tokens=args.text_tokens, item_feature_sizes={"category": 31, "price_bucket": 12},
                           user_feature_sizes={"age_band": 6, "household": 6, "zone": 9})
        model = CameNN(cfg).train()
        if "packed" in name:
            use_packed_lstm(model)
        full = CameNNBatch(random_items((args.batch,), args.text_tokens, cfg, gen),
                           random_items((args.batch, cfg.max_behaviour), args.text_tokens, cfg, gen), None,
                           torch.ones(args.batch, 3, dtype=torch.long))
        align = CameNNBatch(random_items((3 * args.batch,), args.text_tokens, cfg, gen))
        f, a = step_seconds(model, full, align, towers, args.repeats)
        rows.append({"model": name, "full_s": f, "align_s": a, "step_s": f + a})
        print(f"{name:<46}{f:>8.2f}{a:>9.2f}{f + a:>8.2f}{(f + a) / rows[0]['step_s']:>9.2f}", flush=True)
    if args.json:
        Path(args.json).write_text(json.dumps(rows, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
