"""The synthetic intra-city world: a grocery catalogue, users and purchases with known truth.

Pure numpy/pandas/PIL (no pyspark, no torch). Every row is a pure function of
``(seed, kind, index)``: a counter-based hash (splitmix64) gives each field of each row its own
uniform number, so any slice of any table can be generated on its own, in any order and on any
number of Spark partitions, with identical results. Nothing needs a join or a lookup:

- item ``i`` has true category ``i % n_categories``; the items of category ``c`` are
  ``c, c + C, c + 2C, ...``, so a user's history or a swapped text can pick an item of a
  category by index alone;
- a swapped text is simply item ``j``'s clean text, a swapped image item ``j``'s clean image.

The purchase model (:func:`purchase_logit`) depends only on what the recommendation model can
observe: the user's favourite categories (profile prior + purchase history), the item's true
category (image and text), its price and the popularity words of its displayed text. The
Bernoulli draw is the only irreducible noise.

The modules, by what they simulate (each imports only those above it):

- ``randomness`` - the counter-based hash: ``_u``, ``_pick``, ``_normal``, ``_rng``, ``KIND_*``;
- ``catalogue`` - categories, products, words, ids, and what each item truly is (clean
  attributes and text);
- ``defects`` - the planted defects and what a listing shows: ``item_attributes``, ``item_text``;
- ``pictures`` - the item pictures (canvas, backgrounds, one motif per product), the image
  defects applied, encoding, the contact sheet;
- ``shoppers`` - user profiles, favourite categories, the purchase model, the events,
  impressions and candidates;
- ``tables`` - the items, truth_items and users tables as frames.

``python -m synthetic --contact-sheet data/contact_sheet.png`` draws example images of
every category (and of the image defects) into one PNG. The world's AUCs are computed with
:mod:`camenn.metrics` (the Bayes AUC: ``roc_auc(bought, p_buy)``).
"""

# Also here, not in __all__: _check (the config check pipeline.world runs before writing) and
# _draw_clean (an item's clean picture, for the tests).
from synthetic.catalogue import CATEGORIES, N_CATEGORIES, TAG_SENTENCES, item_id, merchant_id, user_id
from synthetic.defects import DEFECTS, item_attributes, item_text
from synthetic.defects import _check as _check
from synthetic.pictures import _draw_clean as _draw_clean
from synthetic.pictures import contact_sheet, encode_image, item_image, render_item_image
from synthetic.shoppers import (
    AGE_BANDS,
    HOUSEHOLDS,
    ZONES,
    candidates_frame,
    events_frame,
    impressions_frame,
    purchase_logit,
    user_attributes,
)
from synthetic.tables import items_frame, truth_items_frame, users_frame

__all__ = [
    "CATEGORIES", "N_CATEGORIES", "DEFECTS", "AGE_BANDS", "HOUSEHOLDS", "ZONES",
    "item_id", "user_id", "merchant_id",
    "item_attributes", "item_text", "item_image", "render_item_image", "encode_image",
    "items_frame", "truth_items_frame", "users_frame", "user_attributes",
    "events_frame", "impressions_frame", "candidates_frame",
    "purchase_logit", "TAG_SENTENCES", "contact_sheet",
]
