"""GroceryStore: how many random alignment swaps took a twin (the same product) as the donor, before and after the fix.

    .venv/bin/python benchmarks/grocery_twin_donors.py --views 2 --json benchmarks/results/grocery_twin_donors.json

Every photo of a product shares the product's text, and an augmented view shares its photo's: they are
twins, and one's text on the other's photo is a match. Until 2026-12-06 the random donors of
``make_alignment_examples`` came from a derangement of the batch alone, which pairs a row with a twin
as often as with any other item, and the swap was labelled 0. This counts such swaps over batches
drawn as the alignment-only training draws them (uniformly from the training job's "train" split of
the training photos and their ``--views`` views each), with the derangement alone and with
``make_alignment_examples`` as it is now. No encoder runs: an item's text stands for its product.
"""

from __future__ import annotations

import argparse
import datetime as dt
import sys
from pathlib import Path

_ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(_ROOT))
sys.path.insert(0, str(_ROOT / "benchmarks"))

import torch  # noqa: E402
from _common import write_json  # noqa: E402
from bench_grocery import DATA, read_classes, read_split  # noqa: E402

from camenn.config import load_config  # noqa: E402
from camenn.losses import derangement, make_alignment_examples  # noqa: E402
from camenn.model import ItemTokens  # noqa: E402
from camenn.training import item_split  # noqa: E402


def main(argv=None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--conf", default=str(_ROOT / "conf" / "grocery.yaml"))
    p.add_argument("--data", default=str(DATA))
    p.add_argument("--views", type=int, default=2, help="augmented views a training photo (bench_grocery --augment)")
    p.add_argument("--batches", type=int, default=2000)
    p.add_argument("--json", default=None)
    args = p.parse_args(argv)
    config = load_config(args.conf, [])
    sp, batch = config.training.split, config.training.alignment_batch_size
    data = Path(args.data).resolve()
    photos = read_split(data, "train", read_classes(data), None)
    product = torch.tensor([r["fine_class"] for r in photos
                            if item_split(r["photo_id"], sp.test_fraction, sp.valid_fraction, sp.seed) == "train"])
    product = product.repeat_interleave(1 + args.views)                  # (N,) the photo and its views
    batch = min(batch, len(product))
    g = torch.Generator().manual_seed(0)
    old = new = swaps = 0
    for _ in range(args.batches):
        b = product[torch.randperm(len(product), generator=g)[:batch]]   # (B,) the batch's products
        old += int((b[derangement(batch, g)] == b).sum())
        text = torch.nn.functional.one_hot(b, int(product.max()) + 1).float()[:, None, :]   # (B, 1, C) the product as text
        image = torch.arange(batch, dtype=torch.float32)[:, None, None]                    # (B, 1, 1) which row's photo
        feats = torch.zeros(batch, 2, dtype=torch.long)
        ex, _, mask = make_alignment_examples(ItemTokens(text, torch.ones(batch, 1, dtype=torch.bool), image, feats), g)
        swapped = slice(batch, len(ex))
        same = ex.text[swapped, 0].argmax(-1) == b[ex.image[swapped, 0, 0].long()]          # (2n,) text and photo one product
        new += int((same & mask["ita"][swapped]).sum())
        swaps += len(ex) - batch
    figures = {"benchmark": "grocery_twin_donors", "created": dt.datetime.now().isoformat(timespec="seconds"),
               "command": " ".join(["benchmarks/grocery_twin_donors.py", *(argv if argv is not None else sys.argv[1:])]),
               "items": len(product), "batch": batch, "batches": args.batches,
               "twin_share_derangement": old / (args.batches * batch), "twin_share_now": new / swaps}
    print(f"{len(product)} training items ({1 + args.views} a photo), batches of {batch}: a random donor is a twin in "
          f"{figures['twin_share_derangement']:.4f} of swaps with the derangement alone, {figures['twin_share_now']:.4f} now")
    write_json(args.json, figures)
    return figures


if __name__ == "__main__":
    main()
