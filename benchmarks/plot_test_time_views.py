"""A picture of what the nightly job scores with ``scoring.test_time_views``: photos and their views.

    .venv/bin/python benchmarks/plot_test_time_views.py --out docs/img/test_time_views.jpg

Each row: a GroceryStore validation photo and K views of it drawn by the product's own code
(``camenn.images.random_view`` with ``view_seed``), seeded here by the photo's path hash, where
the night uses the listing's content hash. Not a measurement; a picture for docs/results/grocery-store.md.
"""

from __future__ import annotations

import argparse
import hashlib
import sys
from pathlib import Path

_ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(_ROOT))

import numpy as np  # noqa: E402

from camenn.images import decode_image, random_view, view_seed  # noqa: E402

DATA = _ROOT.parent / "shared" / "data" / "grocery-store"
PHOTOS = ("val/Fruit/Apple/Golden-Delicious/Golden-Delicious_001.jpg",
          "val/Fruit/Peach/Peach_003.jpg", "val/Packages/Milk/Arla-Standard-Milk/Arla-Standard-Milk_003.jpg")


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--data", default=str(DATA))
    p.add_argument("--views", type=int, default=4)
    p.add_argument("--out", default=str(_ROOT / "docs" / "img" / "test_time_views.jpg"))
    args = p.parse_args(argv)
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    photos = list(PHOTOS)
    missing = [rel for rel in photos if not (Path(args.data) / rel).exists()]
    if missing:
        raise SystemExit(f"not under {args.data}: {missing} (--data: the GroceryStore folder)")
    fig, axes = plt.subplots(len(photos), args.views + 1, figsize=(2 * (args.views + 1), 2 * len(photos)), squeeze=False)
    for row, rel in zip(axes, photos):
        photo = decode_image((Path(args.data) / rel).read_bytes())
        rng = np.random.default_rng(view_seed(hashlib.sha256(rel.encode()).hexdigest()))
        for j, ax in enumerate(row):
            ax.imshow(photo if j == 0 else random_view(photo, rng))
            ax.set_title("the photo" if j == 0 else f"view {j}", fontsize=9)
            ax.axis("off")
        row[0].text(-0.05, 0.5, Path(rel).parent.name, transform=row[0].transAxes, rotation=90, ha="right",
                    va="center", fontsize=9)
    fig.suptitle("ITA / TIA = the mean logit over the photo and its views", fontsize=10)
    fig.tight_layout()
    fig.savefig(args.out, dpi=80, pil_kwargs={"quality": 85})   # photos: a JPEG is a fraction of the PNG
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
