"""Hard alignment negatives (issue 15, 2): same-category donors, twins, the category shortcut, the contrastive loss.

Pure PyTorch on CPU with tiny dims. The learning checks train a real CameNN with the training
loop's own step (``train_step`` on ``_MixedStep``) on alignment batches built by
``alignment_batch`` from an ``ItemStore``, and score it with ``alignment_scores``: the paths
train_fn and held_out_metrics use.
"""

from __future__ import annotations

import pytest
import torch

from camenn.inputs import ItemStore
from camenn.losses import hard_donors, make_alignment_examples, twin_key
from camenn.model import CameNN, CameNNBatch, CameNNConfig, ItemTokens
from camenn.training import _MixedStep, alignment_batch, alignment_scores, contrastive_loss, train_step

pytestmark = pytest.mark.usefixtures("one_torch_thread")

TEXT_DIM, IMAGE_DIM, L, P = 12, 10, 4, 4


def items_of(categories: list[int], seed: int = 0, twins: tuple[tuple[int, int], ...] = ()) -> ItemTokens:
    """Random items with the given category ids; each pair in ``twins`` shares its text (one product, two photos)."""
    g = torch.Generator().manual_seed(seed)
    B = len(categories)
    text = torch.randn(B, L, TEXT_DIM, generator=g)
    for a, b in twins:
        text[b] = text[a]
    feats = torch.stack([torch.tensor(categories), torch.zeros(B, dtype=torch.long)], dim=1)
    return ItemTokens(text, torch.ones(B, L, dtype=torch.bool), torch.randn(B, P, IMAGE_DIM, generator=g), feats)


def origin(pool: torch.Tensor, row: torch.Tensor) -> int:
    hits = [i for i in range(len(pool)) if torch.equal(pool[i], row)]
    assert len(hits) == 1
    return hits[0]


def test_hard_donors_share_the_category_and_are_never_the_item_or_its_twin():
    cats = [1, 1, 1, 2, 2, 3, 4, 4, 4, 4, 5, 6, 6]
    items = items_of(cats, twins=((0, 1), (11, 12)))   # 0/1 one product; category 6 is one product
    for seed in range(20):
        donor = hard_donors(items, torch.Generator().manual_seed(seed), "category")
        for i, d in enumerate(donor.tolist()):
            if cats[i] in (3, 5, 6):                    # no other product in the category
                assert d == -1, (i, d)
                continue
            assert d != i and cats[d] == cats[i]
            assert not torch.equal(items.text[d], items.text[i])   # no twin: its text is the item's own
        assert set(donor[:2].tolist()) == {2}           # 0 and 1 have only item 2 to take from
    near = hard_donors(items, torch.Generator().manual_seed(0), "neighbour", "image")
    assert (near >= 0).all() and all(d != i and not torch.equal(items.text[d], items.text[i])
                                     for i, d in enumerate(near.tolist()))
    assert twin_key(items)[0] == twin_key(items)[1] and len(set(twin_key(items).tolist())) == len(cats) - 2


@pytest.mark.parametrize("hard_kind", ["category", "neighbour"])
def test_hard_alignment_examples_keep_the_category_and_never_pair_an_item_with_itself(hard_kind):
    cats = [c for c in range(4) for _ in range(6)]          # 4 categories x 6 products
    items = items_of(cats, seed=1)
    ex, labels, _ = make_alignment_examples(items, torch.Generator().manual_seed(3), hard_share=1.0, hard_kind=hard_kind)
    B, n = len(items), (len(ex) - len(items)) // 2
    for r in range(B, B + 2 * n):
        text_swap = r < B + n
        own = origin(items.image if text_swap else items.text, ex.image[r] if text_swap else ex.text[r])
        donor = origin(items.text if text_swap else items.image, ex.text[r] if text_swap else ex.image[r])
        assert own != donor                                  # the positive is never its own negative
        assert torch.equal(ex.feats[r], items.feats[own])    # the row keeps the receiving item's fields
        if hard_kind == "category":
            assert cats[donor] == cats[own]                  # ... which are the donor's too: they cannot decide
        assert labels["ita" if text_swap else "tia"][r] == 0
    # share 0 is the random sampler, draw for draw (earlier runs stay reproducible)
    a = make_alignment_examples(items, torch.Generator().manual_seed(5))
    b = make_alignment_examples(items, torch.Generator().manual_seed(5), hard_share=0.0, hard_kind=hard_kind)
    assert torch.equal(a[0].text, b[0].text) and torch.equal(a[0].image, b[0].image)


def test_hard_share_mixes_hard_and_random_donors():
    cats = [c for c in range(8) for _ in range(16)]
    items = items_of(cats, seed=2)
    same = []
    for share in (0.0, 0.5, 1.0):
        ex, _, _ = make_alignment_examples(items, torch.Generator().manual_seed(0), hard_share=share)
        B, n = len(items), (len(ex) - len(items)) // 2
        rows = range(B, B + n)
        same.append(sum(cats[origin(items.text, ex.text[r])] == int(ex.feats[r, 0]) for r in rows) / n)
    assert same[0] < 0.3 and 0.35 < same[1] < 0.75 and same[2] == 1.0, same


# --- the category shortcut ---------------------------------------------------


def world(n_per_cat: int, n_cats: int, item_signal: float, seed: int = 0) -> ItemStore:
    """Items whose text and image carry their category (a prototype each) plus, with ``item_signal`` > 0,
    a vector of their own that text and photo share: the only thing a same-category swap changes."""
    g = torch.Generator().manual_seed(seed)
    cats = torch.arange(n_cats).repeat_interleave(n_per_cat)                       # (N,)
    N = len(cats)
    t_proto, i_proto = torch.randn(n_cats, TEXT_DIM, generator=g), torch.randn(n_cats, IMAGE_DIM, generator=g)
    own = torch.randn(N, 6, generator=g)                                           # (N, 6) item-specific
    t_own, i_own = own @ torch.randn(6, TEXT_DIM, generator=g), own @ torch.randn(6, IMAGE_DIM, generator=g)
    text = (t_proto[cats] + item_signal * t_own)[:, None] + 0.3 * torch.randn(N, L, TEXT_DIM, generator=g)
    image = (i_proto[cats] + item_signal * i_own)[:, None] + 0.3 * torch.randn(N, P, IMAGE_DIM, generator=g)
    feats = torch.stack([cats + 1, torch.zeros(N, dtype=torch.long)], dim=1)
    return ItemStore([f"i{k}" for k in range(N)], text, torch.ones(N, L, dtype=torch.bool), image, feats)


def train(store: ItemStore, train_idx: torch.Tensor, hard_share: float, n_cats: int, steps: int = 200,
          contrastive_weight: float = 0.0, same_category_swaps: str = "one_side") -> CameNN:
    torch.manual_seed(0)
    cfg = CameNNConfig(text_dim=TEXT_DIM, image_dim=IMAGE_DIM, n_patches=P, max_text_tokens=L, d_model=16, n_heads=2,
                       ffn_mult=2, n_experts=2, item_feature_sizes={"category": n_cats + 1, "price_bucket": 1},
                       user_feature_sizes={}, tasks=("ita", "tia"), dropout=0.0)
    model = CameNN(cfg)
    step = _MixedStep(model, contrastive_weight)
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)
    g = torch.Generator().manual_seed(1)
    for _ in range(steps):
        rows = train_idx[torch.randperm(len(train_idx), generator=g)[:64]]
        batch, labels, mask = alignment_batch(store, rows, g, True, hard_share=hard_share,
                                              same_category_swaps=same_category_swaps)
        model.train()
        train_step(step, opt, None, None, batch, labels, mask, {}, n_real=len(rows))
    return model


def auroc(model: CameNN, store: ItemStore, idx: torch.Tensor, hard: bool) -> dict[str, float]:
    from camenn.metrics import roc_auc

    return {t: roc_auc(y, p) for t, (y, p) in alignment_scores(model, store, idx, 256, "cpu", hard=hard).items()}


def test_category_alone_decides_random_negatives_but_not_same_category_ones():
    """Text and photo carry nothing but their category: a model of it beats chance only where the category differs."""
    n_cats, per = 6, 40
    store = world(per, n_cats, item_signal=0.0)
    is_test = torch.arange(len(store)) % per >= 30                      # 10 unseen items per category
    train_idx, test_idx = (~is_test).nonzero()[:, 0], is_test.nonzero()[:, 0]
    for share in (0.0, 1.0):
        model = train(store, train_idx, share, n_cats)
        rand, hard = auroc(model, store, test_idx, hard=False), auroc(model, store, test_idx, hard=True)
        if share == 0.0:   # the shortcut exists: a swap from another category is caught by the category alone
            assert min(rand.values()) > 0.8, rand   # (a sixth of random partners share the category)
        assert all(0.35 < v < 0.65 for v in hard.values()), (share, hard)


def test_hard_negatives_teach_what_only_text_and_photo_share():
    """The control: with an item-specific signal in text and photo, hard training beats chance on same-category swaps."""
    n_cats, per = 4, 60
    store = world(per, n_cats, item_signal=1.0, seed=3)
    is_test = torch.arange(len(store)) % per >= 45
    train_idx, test_idx = (~is_test).nonzero()[:, 0], is_test.nonzero()[:, 0]
    hard = auroc(train(store, train_idx, 1.0, n_cats, steps=300), store, test_idx, hard=True)
    assert min(hard.values()) > 0.75, hard


def accuracy(model: CameNN, store: ItemStore, idx: torch.Tensor, hard: bool) -> dict[str, float]:
    return {t: float(((p >= 0.5) == (y == 1)).mean()) for t, (y, p) in
            alignment_scores(model, store, idx, 256, "cpu", hard=hard).items()}


def test_a_same_category_swap_is_labelled_a_mismatch_on_both_sides():
    cats = [c for c in range(4) for _ in range(6)]
    items = items_of(cats, seed=6)
    g = lambda: torch.Generator().manual_seed(7)   # noqa: E731
    one, one_labels, _ = make_alignment_examples(items, g(), hard_share=0.5)
    both, labels, mask = make_alignment_examples(items, g(), hard_share=0.5, same_category_swaps="both_sides")
    assert torch.equal(one.text, both.text) and torch.equal(one.image, both.image)   # the same rows, other labels
    B, n = len(items), (len(both) - len(items)) // 2
    kinds = set()
    for r in range(B, B + 2 * n):
        text_swap = r < B + n
        own = origin(items.image if text_swap else items.text, both.image[r] if text_swap else both.text[r])
        donor = origin(items.text if text_swap else items.image, both.text[r] if text_swap else both.image[r])
        swapped, other = ("ita", "tia") if text_swap else ("tia", "ita")
        same = cats[donor] == cats[own]
        kinds.add(same)
        assert labels[swapped][r] == 0 and one_labels[swapped][r] == 0
        assert one_labels[other][r] == 1                      # one_side: the side not swapped is a match
        assert labels[other][r] == (0 if same else 1), (r, same)   # both_sides: only the category names a side
        assert mask[other][r]
    assert kinds == {True, False}                             # both kinds of swap were drawn
    assert (labels["ita"][:B] == 1).all() and (labels["tia"][:B] == 1).all()
    with pytest.raises(ValueError, match="same_category_swaps"):
        make_alignment_examples(items, g(), same_category_swaps="neither")


def test_labelling_both_sides_of_a_same_category_swap_lets_the_model_reject_it():
    """One-side labels give a same-category mismatch ITA 0 / TIA 1 and ITA 1 / TIA 0 equally often (the rows
    cannot be told apart), so the model answers about 0.5; both-side labels let it answer 0 to both."""
    n_cats, per = 4, 60
    store = world(per, n_cats, item_signal=1.0, seed=3)
    is_test = torch.arange(len(store)) % per >= 45
    train_idx, test_idx = (~is_test).nonzero()[:, 0], is_test.nonzero()[:, 0]
    acc = {rule: accuracy(train(store, train_idx, 1.0, n_cats, steps=300, same_category_swaps=rule), store, test_idx,
                          hard=True) for rule in ("one_side", "both_sides")}
    assert min(acc["both_sides"].values()) > 0.8, acc
    assert all(acc["both_sides"][t] > acc["one_side"][t] + 0.1 for t in ("ita", "tia")), acc


def test_contrastive_loss_prefers_matching_pairs_and_ignores_twins():
    cfg = CameNNConfig(text_dim=TEXT_DIM, image_dim=IMAGE_DIM, n_patches=P, max_text_tokens=L, d_model=16, n_heads=2,
                       ffn_mult=2, n_experts=2, item_feature_sizes={"category": 3, "price_bucket": 1},
                       user_feature_sizes={}, tasks=("ita", "tia"), dropout=0.0)
    model = CameNN(cfg)
    items = items_of([1] * 8, seed=4, twins=((0, 1),))
    loss = contrastive_loss(model, items)
    assert torch.isfinite(loss) and loss.requires_grad
    loss.backward()
    assert model.text_in[1].weight.grad.abs().sum() > 0 and model.image_in[1].weight.grad.abs().sum() > 0
    # a batch of twins only has no negatives left: every row's only logit is its own pair (loss 0)
    all_twins = ItemTokens(items.text[:1].expand(4, -1, -1), items.text_mask[:4], items.image[:4], items.feats[:4])
    assert float(contrastive_loss(model, all_twins).detach()) == pytest.approx(0.0, abs=1e-6)


def test_alignment_skip_adds_the_scaled_pooled_cosine_and_leaves_the_rest_of_the_model_as_it_was():
    def build(skip: bool) -> CameNN:
        torch.manual_seed(0)
        return CameNN(CameNNConfig(text_dim=TEXT_DIM, image_dim=IMAGE_DIM, n_patches=P, max_text_tokens=L, d_model=16,
                                   n_heads=2, ffn_mult=2, n_experts=2, item_feature_sizes={"category": 3, "price_bucket": 1},
                                   user_feature_sizes={}, tasks=("ita", "tia"), dropout=0.0, alignment_skip=skip))
    plain, skip = build(False), build(True)
    extra = set(skip.state_dict()) - set(plain.state_dict())
    assert extra == {"skip_scale.ita", "skip_scale.tia"}      # off: the state dict of every earlier model
    for k, v in plain.state_dict().items():                   # the skip draws nothing from the RNG
        assert torch.equal(v, skip.state_dict()[k]), k
    batch = CameNNBatch(target=items_of([1, 1, 2, 2, 1, 2], seed=8))
    t, v = skip.pooled_modalities(batch.target)
    cos = (t * v).sum(-1)
    a, b = plain.eval()(batch), skip.eval()(batch)
    for task in ("ita", "tia"):
        torch.testing.assert_close(b[task], a[task] + 10.0 * cos)
    # the cosine is the contrastive loss's pair score, so that loss trains what the skip reads
    assert contrastive_loss(skip, batch.target).requires_grad


def test_a_swap_never_takes_a_twins_text_or_photo():
    """Two photos of one product share their text: one's text on the other's photo is a match, not a negative."""
    cats = [c for c in range(2) for _ in range(6)]
    items = items_of(cats, seed=8, twins=tuple((a, a + 1) for a in range(0, 12, 2)))   # 6 products, 2 photos each
    product = [i // 2 for i in range(12)]
    for seed in range(20):
        for share in (0.0, 0.5):
            ex, _, mask = make_alignment_examples(items, torch.Generator().manual_seed(seed), hard_share=share)
            for r in range(len(items), len(ex)):
                of_text = {product[i] for i in range(len(items)) if torch.equal(items.text[i], ex.text[r])}
                assert product[origin(items.image, ex.image[r])] not in of_text, (seed, share, r)
                assert mask["ita"][r] and mask["tia"][r]
    # a batch of one product's photos holds no negative: its swapped rows are masked, not labelled 0
    one = ItemTokens(items.text[:1].expand(4, -1, -1), items.text_mask[:4], items.image[:4], items.feats[:4])
    ex, labels, mask = make_alignment_examples(one, torch.Generator().manual_seed(0))
    assert mask["ita"][:4].all() and not mask["ita"][4:].any() and not mask["tia"][4:].any()


def test_a_batch_computes_its_twin_key_once(monkeypatch):
    """make_alignment_examples hands its twin key to hard_donors (a ``torch.unique`` over the batch's
    text tokens), and hard_donors given a key draws what it draws when it computes the key itself."""
    import camenn.losses as losses

    items = items_of([c % 4 for c in range(24)], seed=2, twins=((0, 4), (1, 5)))
    key = twin_key(items)
    for side in ("text", "image"):
        assert torch.equal(hard_donors(items, torch.Generator().manual_seed(5), "category", side, key),
                           hard_donors(items, torch.Generator().manual_seed(5), "category", side))
    calls = []
    monkeypatch.setattr(losses, "twin_key", lambda it: calls.append(1) or twin_key(it))
    make_alignment_examples(items, torch.Generator().manual_seed(3), hard_share=0.5)
    assert len(calls) == 1
