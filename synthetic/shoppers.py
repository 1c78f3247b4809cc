"""The shoppers: user profiles, their favourite categories, their purchases and what they are shown.

A user's profile (age band, household, zone) puts a prior on categories (``_AGE_BOOST`` and
co.); 2 or 3 favourite categories are drawn from it. The purchase history (:func:`events_frame`)
is mostly from the favourites; impressions (:func:`impressions_frame`) are bought with
probability ``sigmoid(purchase_logit(...))``, which depends only on what the recommendation
model can observe; candidates (:func:`candidates_frame`) are the run date's items to score.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from synthetic.catalogue import CATEGORIES, N_CATEGORIES, _clean_attributes, _item_of_category, item_id, user_id
from synthetic.defects import item_attributes
from synthetic.randomness import KIND_CANDIDATE, KIND_EVENT, KIND_IMPRESSION, KIND_USER, _pick, _u

# ----------------------------------------------------------------------------------------------
# Users: profile and the prior it puts on favourite categories.
# ----------------------------------------------------------------------------------------------

AGE_BANDS = ("18-24", "25-34", "35-49", "50-64", "65+")
_AGE_P = np.array([0.12, 0.25, 0.28, 0.20, 0.15])
HOUSEHOLDS = ("single", "couple", "family_kids", "flatshare", "seniors")
_HOUSEHOLD_P = np.array([0.28, 0.25, 0.27, 0.10, 0.10])
ZONES = ("centre", "old_town", "harbour", "university", "north_suburbs", "south_suburbs", "riverside", "business_park")

_CAT = {name: i for i, name in enumerate(CATEGORIES)}


def _boosts(table: dict[str, dict[str, float]], keys: tuple[str, ...]) -> np.ndarray:
    out = np.ones((len(keys), N_CATEGORIES))
    for k, boosts in table.items():
        for cat, factor in boosts.items():
            out[keys.index(k), _CAT[cat]] = factor
    return np.log(out)


# Multiplicative boosts of the chance that a category is one of a user's favourites.
_AGE_BOOST = _boosts({
    "18-24": {"snacks": 4, "drinks": 4, "frozen": 2.5},
    "25-34": {"coffee_tea": 3, "berries": 2, "personal_care": 2},
    "35-49": {"meat": 3, "vegetables": 2, "household": 2},
    "50-64": {"fruit": 3, "seafood": 2.5, "deli": 2},
    "65+": {"bakery": 4, "eggs": 3, "flowers": 2.5},
}, AGE_BANDS)
_HOUSEHOLD_BOOST = _boosts({
    "single": {"frozen": 2, "drinks": 1.5, "deli": 2},
    "couple": {"flowers": 2.5, "seafood": 2, "coffee_tea": 1.5},
    "family_kids": {"baby": 8, "dairy": 3, "snacks": 2},
    "flatshare": {"pantry": 3, "snacks": 2, "drinks": 2},
    "seniors": {"bakery": 2, "spices": 1.5, "eggs": 2},
}, HOUSEHOLDS)
_ZONE_BOOST = _boosts({
    "centre": {"coffee_tea": 2, "flowers": 1.5},
    "old_town": {"bakery": 2, "deli": 2},
    "harbour": {"seafood": 4},
    "university": {"snacks": 2, "pantry": 2},
    "north_suburbs": {"pet": 4, "household": 2},
    "south_suburbs": {"pet": 3, "baby": 2},
    "riverside": {"vegetables": 2, "fruit": 1.5},
    "business_park": {"drinks": 2, "coffee_tea": 2},
}, ZONES)

# ----------------------------------------------------------------------------------------------
# The purchase model. logit p_buy = B0 + B_FAV * favourite(user, true category)
#                                   + B_BEST * bestseller + B_ORGANIC * organic + B_LOCAL * local
#                                   - B_PRICE * log(price / PRICE_REF)
# where the tags are those of the item's displayed text.
# ----------------------------------------------------------------------------------------------

B0, B_FAV, B_BEST, B_ORGANIC, B_LOCAL, B_PRICE, PRICE_REF = -3.3, 2.7, 0.9, 0.4, 0.4, 0.6, 4.0
P_HISTORY_FAV = 0.85       # share of history purchases from favourite categories
P_EXPOSURE_FAV = 0.45      # share of impressions / candidates that the matching stage picks by taste


def purchase_logit(favourite: np.ndarray, price: np.ndarray, bestseller: np.ndarray, organic: np.ndarray,
                   local: np.ndarray) -> np.ndarray:
    return (B0 + B_FAV * favourite + B_BEST * bestseller + B_ORGANIC * organic + B_LOCAL * local
            - B_PRICE * np.log(np.asarray(price, dtype=np.float64) / PRICE_REF))


# ----------------------------------------------------------------------------------------------
# Users, their history, impressions and candidates, for any slice of user indices.
# ----------------------------------------------------------------------------------------------

def _day0(world) -> np.datetime64:
    return np.datetime64(world.run_date, "s")


(_F_AGE, _F_HOUSEHOLD, _F_ZONE, _F_NFAV, _F_FAV, _F_NEARLY, _F_NLATE) = range(1, 8)


def user_attributes(world, idx) -> pd.DataFrame:
    """Profile, favourite categories (list of ints) and purchase counts of users ``idx``."""
    seed, idx = world.seed, np.asarray(idx, dtype=np.int64)
    u = lambda f, b=0: _u(seed, KIND_USER, idx, b, f)  # noqa: E731
    age = np.searchsorted(np.cumsum(_AGE_P), u(_F_AGE) * _AGE_P.sum(), side="right")
    household = np.searchsorted(np.cumsum(_HOUSEHOLD_P), u(_F_HOUSEHOLD) * _HOUSEHOLD_P.sum(), side="right")
    age, household = np.minimum(age, len(AGE_BANDS) - 1), np.minimum(household, len(HOUSEHOLDS) - 1)
    zone = _pick(u(_F_ZONE), len(ZONES))
    n_fav = 2 + (u(_F_NFAV) < 0.5).astype(np.int64)
    # Favourites: a draw without replacement from the profile's prior (Gumbel top-k).
    logw = _AGE_BOOST[age] + _HOUSEHOLD_BOOST[household] + _ZONE_BOOST[zone]                  # (n, C)
    gumbel = -np.log(-np.log(np.clip(_u(seed, KIND_USER, idx[:, None], np.arange(N_CATEGORIES)[None, :], _F_FAV),
                                     1e-12, 1 - 1e-12)))
    order = np.argsort(-(logw + gumbel), axis=1, kind="stable")
    favs = [order[k, :n_fav[k]].tolist() for k in range(len(idx))]
    n_early = 5 + _pick(u(_F_NEARLY), max(1, world.days // 6))
    n_late = _pick(u(_F_NLATE), max(1, world.days // 20) + 2)
    return pd.DataFrame({
        "index": idx, "user_id": user_id(idx), "age_band": np.asarray(AGE_BANDS, dtype=object)[age],
        "household": np.asarray(HOUSEHOLDS, dtype=object)[household], "zone": np.asarray(ZONES, dtype=object)[zone],
        "favourites": favs, "n_fav": n_fav, "n_early": n_early, "n_late": n_late,
    })


def _fav_matrix(users: pd.DataFrame) -> np.ndarray:
    fav = np.zeros((len(users), 3), dtype=np.int64) - 1
    for k, f in enumerate(users["favourites"]):
        fav[k, :len(f)] = f
    return fav


def _choose_category(world, kind: int, user_idx, j, fav: np.ndarray, n_fav: np.ndarray, p_fav: float):
    """A category per (user, j): one of the user's favourites with probability p_fav, else any."""
    seed = world.seed
    taste = _u(seed, kind, user_idx, j, 1) < p_fav
    which = _pick(_u(seed, kind, user_idx, j, 2), n_fav)
    fav_cat = fav[np.arange(len(fav)), which]
    any_cat = _pick(_u(seed, kind, user_idx, j, 3), N_CATEGORIES)
    return np.where(taste, fav_cat, any_cat)


def _window(world) -> int:
    """Days at the end of the history in which impressions happen."""
    return max(1, world.days // 4)


def events_frame(world, user_idx) -> pd.DataFrame:
    """Purchase history: early purchases before the impression window, a few inside it."""
    users = user_attributes(world, user_idx)
    n = (users["n_early"] + users["n_late"]).to_numpy()
    rows = np.repeat(np.arange(len(users)), n)
    j = np.arange(len(rows)) - np.repeat(np.cumsum(n) - n, n)
    uidx = users["index"].to_numpy()[rows]
    fav = _fav_matrix(users)[rows]
    cat = _choose_category(world, KIND_EVENT, uidx, j, fav, users["n_fav"].to_numpy()[rows], P_HISTORY_FAV)
    items = _item_of_category(world.n_items, cat, _u(world.seed, KIND_EVENT, uidx, j, 4))
    early = j < users["n_early"].to_numpy()[rows]
    W, D = _window(world) * 86400, world.days * 86400
    t = _u(world.seed, KIND_EVENT, uidx, j, 5)
    offset = np.where(early, W + t * (D - W - 1), t * W).astype(np.int64) + 1   # seconds before the run date
    ts = _day0(world) - offset.astype("timedelta64[s]")
    price = _clean_attributes(world.seed, items)["price"]
    return pd.DataFrame({"user_id": user_id(uidx), "item_id": item_id(items), "ts": ts.astype("datetime64[us]"),
                         "event": "purchase", "price": price})


def impressions_frame(world, user_idx) -> pd.DataFrame:
    """Impressions in the last days before the run date, with p_buy and the bought draw.

    Columns: user_id, item_id, ts, bought, p_buy, favourite (0/1), true_category.
    """
    users = user_attributes(world, user_idx)
    m = world.impressions_per_user
    rows = np.repeat(np.arange(len(users)), m)
    j = np.tile(np.arange(m), len(users))
    uidx = users["index"].to_numpy()[rows]
    fav = _fav_matrix(users)[rows]
    cat = _choose_category(world, KIND_IMPRESSION, uidx, j, fav, users["n_fav"].to_numpy()[rows], P_EXPOSURE_FAV)
    items = _item_of_category(world.n_items, cat, _u(world.seed, KIND_IMPRESSION, uidx, j, 4))
    a = item_attributes(world, items)
    true_cat = a["true_category"].to_numpy()
    favourite = (fav == true_cat[:, None]).any(axis=1).astype(np.float64)
    logit = purchase_logit(favourite, a["price"].to_numpy(), a["shown_bestseller"].to_numpy(),
                           a["shown_organic"].to_numpy(), a["shown_local"].to_numpy())
    p_buy = 1.0 / (1.0 + np.exp(-logit))
    bought = (_u(world.seed, KIND_IMPRESSION, uidx, j, 6) < p_buy).astype(np.int32)
    # One impression per slot of the window: timestamps are distinct per user.
    W = _window(world) * 86400
    slot = W / max(1, m)
    offset = (W - (j + _u(world.seed, KIND_IMPRESSION, uidx, j, 5)) * slot).astype(np.int64)
    offset = np.maximum(offset, 1)
    ts = _day0(world) - offset.astype("timedelta64[s]")
    return pd.DataFrame({"user_id": user_id(uidx), "item_id": item_id(items), "ts": ts.astype("datetime64[us]"),
                         "bought": bought, "p_buy": p_buy, "favourite": favourite.astype(np.int32),
                         "true_category": true_cat})


def candidates_frame(world, user_idx) -> pd.DataFrame:
    """Candidates for the run date: distinct items per user, part taste-driven, part random."""
    users = user_attributes(world, user_idx)
    m = min(world.candidates_per_user, world.n_items)
    draws = 4 * m + 8
    rows = np.repeat(np.arange(len(users)), draws)
    j = np.tile(np.arange(draws), len(users))
    uidx = users["index"].to_numpy()[rows]
    fav = _fav_matrix(users)[rows]
    cat = _choose_category(world, KIND_CANDIDATE, uidx, j, fav, users["n_fav"].to_numpy()[rows], 0.5)
    items = _item_of_category(world.n_items, cat, _u(world.seed, KIND_CANDIDATE, uidx, j, 4))
    df = pd.DataFrame({"u": uidx, "j": j, "item": items}).drop_duplicates(["u", "item"], keep="first")
    df = df[df.groupby("u").cumcount() < m]
    return pd.DataFrame({"run_date": [world.run_date] * len(df), "user_id": user_id(df["u"].to_numpy()),
                         "item_id": item_id(df["item"].to_numpy())})
