"""Rows to model inputs: vocabularies and the item store behave the same for training and scoring."""

from __future__ import annotations

import torch

from camenn.featurizer import EncodedItems, pack_item_features
from camenn.inputs import FeatureVocab, ItemStore, full_batch, item_only_batch

DT, DI, P = 8, 6, 9


def encoded(n_tokens: list[int]) -> EncodedItems:
    longest = max(n_tokens)
    mask = torch.tensor([[j < n for j in range(longest)] for n in n_tokens])           # (B, L)
    text = torch.randn(len(n_tokens), longest, DT) * mask.unsqueeze(-1)               # (B, L, Dt)
    return EncodedItems(text=text, text_mask=mask, image=torch.randn(len(n_tokens), P, DI),
                        valid=torch.ones(len(n_tokens), dtype=torch.bool))


def store_of(n_tokens: list[int], vocab: FeatureVocab) -> ItemStore:
    blobs = pack_item_features(encoded(n_tokens))
    feats = vocab.item_feats(["fruit"] * len(n_tokens), [1.0] * len(n_tokens))
    return ItemStore.from_blobs([f"i{k}" for k in range(len(n_tokens))], *zip(*blobs), feats, DT, DI, P)


def test_vocab_ids_and_unknowns():
    vocab = FeatureVocab.fit(["fruit", "dairy", "fruit", None], [1.0, 2.0, 3.0, 4.0],
                             {"age_band": ["18-25", "26-40"], "zone": ["north"]}, n_price_buckets=2)
    feats = vocab.item_feats(["dairy", "fruit", "spaceships"], [0.5, 3.5, None])
    assert feats.tolist() == [[1, 1], [2, 2], [0, 0]]
    users = vocab.user_feats({"age_band": ["26-40", "99+"], "zone": ["north", None]})
    assert users.tolist() == [[2, 0, 1], [0, 0, 0]]
    assert FeatureVocab.from_dict(vocab.to_dict()) == vocab
    assert vocab.item_feature_sizes == {"category": 3, "price_bucket": 3}


def test_store_gathers_behaviour_with_padding():
    vocab = FeatureVocab.fit(["fruit"], [1.0], {})
    store = store_of([3, 5, 2], vocab)
    batch = full_batch(store, torch.tensor([0, 2]), torch.tensor([[1, 2], [1, -1]]),
                       torch.zeros(2, 3, dtype=torch.long))
    assert batch.behaviour.text.shape == (2, 2, 5, DT)
    assert batch.behaviour_mask.tolist() == [[True, True], [True, False]]
    assert batch.behaviour.text_mask[1, 1].sum() == 0 and batch.behaviour.feats[1, 1].sum() == 0
    assert batch.behaviour.text_mask[0, 0].sum() == 5 and batch.target.text_mask[1].sum() == 2
    only = item_only_batch(store, store.lookup(["i1", "i0"]))
    assert only.item_only and torch.equal(only.target.image[1], store.image[0].float())
    assert store.lookup(["nope"]).tolist() == [-1]
