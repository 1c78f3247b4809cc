"""The synthetic intra-city world: a grocery catalogue, users and purchases with known truth.

One file of ~1,750 lines for now, because the catalogue, the shoppers and the planted defects
share one counter-based random scheme and one ground truth; splitting it into a package of its
own (catalogue and images, shoppers, defects, truth) is issue 18's open work.

Pure numpy/PIL (no pyspark). Every row is a pure function of ``(seed, kind, index)``: a
counter-based hash (splitmix64) gives each field of each row its own uniform number, so any
slice of any table can be generated on its own, in any order and on any number of Spark
partitions, with identical results. Nothing needs a join or a lookup:

- item ``i`` has true category ``i % n_categories``; the items of category ``c`` are
  ``c, c + C, c + 2C, ...``, so a user's history or a swapped text can pick an item of a
  category by index alone;
- a swapped text is simply item ``j``'s clean text, a swapped image item ``j``'s clean image.

The purchase model (:func:`purchase_logit`) depends only on what the recommendation model can
observe: the user's favourite categories (profile prior + purchase history), the item's true
category (image and text), its price and the popularity words of its displayed text. The
Bernoulli draw is the only irreducible noise.

``python -m camenn.world --contact-sheet data/contact_sheet.png`` draws example images of
every category (and of the image defects) into one PNG.
"""

from __future__ import annotations

import colorsys
import io
import math
from dataclasses import dataclass

import numpy as np
import pandas as pd
from PIL import Image, ImageColor, ImageDraw, ImageFilter

__all__ = [
    "CATEGORIES", "N_CATEGORIES", "DEFECTS", "AGE_BANDS", "HOUSEHOLDS", "ZONES",
    "item_id", "user_id", "merchant_id",
    "item_attributes", "item_text", "item_image", "render_item_image", "encode_image",
    "items_frame", "truth_items_frame", "users_frame", "user_attributes",
    "events_frame", "impressions_frame", "candidates_frame",
    "purchase_logit", "TAG_SENTENCES", "auc", "auc_from_counts", "contact_sheet",
]

# Kinds of rows: each is a separate stream of the hash, so tables never share random numbers.
KIND_ITEM, KIND_IMAGE, KIND_USER, KIND_EVENT, KIND_IMPRESSION, KIND_CANDIDATE = 1, 2, 3, 4, 5, 6

DEFECTS = ("none", "text_swap", "image_swap", "vague_text", "blurred_image", "wrong_category")

# ----------------------------------------------------------------------------------------------
# Counter-based randomness: uniform(seed, kind, a, b, field) in [0, 1), vectorised over a and b.
# ----------------------------------------------------------------------------------------------

_M1, _M2, _GOLDEN = np.uint64(0xBF58476D1CE4E5B9), np.uint64(0x94D049BB133111EB), np.uint64(0x9E3779B97F4A7C15)


def _mix(x: np.ndarray) -> np.ndarray:
    x = (x ^ (x >> np.uint64(30))) * _M1
    x = (x ^ (x >> np.uint64(27))) * _M2
    return x ^ (x >> np.uint64(31))


_MASK = (1 << 64) - 1
_M1_INT, _M2_INT, _GOLDEN_INT = int(_M1), int(_M2), int(_GOLDEN)


def _mix_int(x: int) -> int:
    x = ((x ^ (x >> 30)) * _M1_INT) & _MASK
    x = ((x ^ (x >> 27)) * _M2_INT) & _MASK
    return x ^ (x >> 31)


def _hash(*parts) -> np.ndarray:
    """A 64-bit hash of integer parts (scalars or broadcastable arrays)."""
    if all(isinstance(p, (int, np.integer)) for p in parts):   # the same hash, without numpy's overhead
        h = _GOLDEN_INT
        for part in parts:
            h = _mix_int(h ^ ((int(part) + _GOLDEN_INT) & _MASK))
        return np.uint64(h)
    with np.errstate(over="ignore"):
        h = np.zeros(np.broadcast_shapes(*(np.shape(p) for p in parts)), dtype=np.uint64) + _GOLDEN
        for part in parts:
            h = _mix(h ^ (np.asarray(part).astype(np.int64).astype(np.uint64) + _GOLDEN))
    return h


def _u(seed: int, kind: int, a, b=0, field: int = 0) -> np.ndarray:
    """Uniform [0, 1) numbers, one per (a, b) pair, for one field of one kind of row."""
    h = _hash(seed, kind, a, b, field)
    if np.ndim(h) == 0:
        return (int(h) >> 11) * (1.0 / (1 << 53))
    return (h >> np.uint64(11)).astype(np.float64) * (1.0 / (1 << 53))


def _pick(u: np.ndarray, n) -> np.ndarray:
    """Integer in [0, n) from a uniform (n may be an array)."""
    return np.minimum((np.asarray(u) * n).astype(np.int64), np.asarray(n) - 1)


def _normal(u1: np.ndarray, u2: np.ndarray) -> np.ndarray:
    return np.sqrt(-2.0 * np.log1p(-u1)) * np.cos(2.0 * np.pi * u2)


def _rng(seed: int, kind: int, index: int) -> np.random.Generator:
    return np.random.default_rng(int(_hash(seed, kind, index)))


# ----------------------------------------------------------------------------------------------
# The catalogue's vocabulary: categories, products (each with its picture motif), words.
# ----------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class Product:
    name: str
    motif: str
    colors: tuple[str, ...]
    sizes: tuple[str, ...]


@dataclass(frozen=True)
class Category:
    name: str
    base_price: float
    food: bool
    fresh: bool
    backgrounds: tuple[str, ...]
    products: tuple[Product, ...]
    quality: tuple[str, ...]
    uses: tuple[str, ...]
    origins: tuple[str, ...]


def _p(name, motif, colors, sizes):
    return Product(name, motif, tuple(colors), tuple(sizes))


_FRUIT_SIZES = ("500 g", "1 kg", "2 kg", "6 pcs")
_CATALOGUE: tuple[Category, ...] = (
    Category("fruit", 2.6, True, True, ("#f7f3e8", "#fffaf0", "#eef3e6", "#e9dcc5"), (
        _p("Gala Apples", "round_fruit", ["#c62828"], _FRUIT_SIZES),
        _p("Granny Smith Apples", "round_fruit", ["#7cb342"], _FRUIT_SIZES),
        _p("Navel Oranges", "citrus", ["#fb8c00"], _FRUIT_SIZES),
        _p("Bananas", "bananas", ["#fdd835"], ("1 kg", "5 pcs", "bunch")),
        _p("Conference Pears", "pears", ["#c0ca33"], _FRUIT_SIZES)),
        ("Crisp and juicy, picked this week.", "Sweet and ripe, ready to eat.", "Hand-picked at peak ripeness.",
         "Fresh from the orchard."),
        ("Perfect for snacking and lunch boxes.", "Great in fruit salads and smoothies.", "A healthy everyday fruit."),
        ("Spain", "Italy", "New Zealand", "South Africa", "Costa Rica")),
    Category("vegetables", 2.0, True, True, ("#f4f1ea", "#e8efe0", "#efe6d8"), (
        _p("Carrots", "carrots", ["#ef6c00"], ("500 g", "1 kg", "bunch")),
        _p("Broccoli", "broccoli", ["#2e7d32"], ("400 g", "1 head", "2 heads")),
        _p("Cucumbers", "cucumbers", ["#33691e"], ("1 pc", "2 pcs", "3 pcs")),
        _p("Baby Potatoes", "potatoes", ["#b08968"], ("1 kg", "2 kg", "750 g")),
        _p("Iceberg Lettuce", "lettuce", ["#9ccc65"], ("1 head", "2 heads"))),
        ("Farm fresh vegetables, harvested this week.", "Crunchy and full of flavour.", "Freshly harvested and washed."),
        ("Ideal for roasting, soups and salads.", "Great steamed or stir-fried.", "A staple of every kitchen."),
        ("the Netherlands", "Spain", "France", "Poland", "Morocco")),
    Category("berries", 3.8, True, True, ("#fdf6f0", "#f6eef6", "#ffffff"), (
        _p("Strawberries", "strawberries", ["#e53935"], ("250 g", "400 g", "500 g")),
        _p("Raspberries", "berry_cluster", ["#d81b60"], ("125 g", "250 g")),
        _p("Blueberries", "berry_cluster", ["#283593"], ("125 g", "250 g", "500 g")),
        _p("Blackberries", "berry_cluster", ["#4a148c"], ("125 g", "250 g"))),
        ("Sweet, juicy berries picked at dawn.", "Plump and fragrant berries.", "Delicate berries, freshly picked."),
        ("Perfect with yoghurt, cereal or desserts.", "Great for smoothies and baking.", "A sweet summer treat."),
        ("Spain", "Portugal", "Morocco", "Peru", "Chile")),
    Category("dairy", 1.9, True, True, ("#e3f2fd", "#f5f5f5", "#e8eaf6"), (
        _p("Whole Milk", "milk_cartons", ["#1565c0"], ("1 L", "2 L", "500 ml")),
        _p("Semi-Skimmed Milk", "milk_cartons", ["#2e7d32"], ("1 L", "2 L")),
        _p("Greek Yoghurt", "yoghurt", ["#f8bbd0", "#90caf9", "#ffffff"], ("150 g", "500 g", "4 x 125 g")),
        _p("Aged Gouda Cheese", "cheese", ["#fbc02d"], ("200 g", "400 g")),
        _p("Salted Butter", "butter", ["#ffe082"], ("250 g", "500 g"))),
        ("Fresh and creamy, from grass-fed cows.", "Rich and smooth dairy.", "Pasteurised and chilled daily."),
        ("Great for breakfast, coffee and baking.", "Keep refrigerated.", "An everyday dairy essential."),
        ("the Netherlands", "Denmark", "Ireland", "France", "Germany")),
    Category("bakery", 2.4, True, True, ("#d7b98e", "#c8a27a", "#efe1c6"), (
        _p("Sourdough Loaf", "loaf", ["#a0632a"], ("800 g", "500 g", "1 loaf")),
        _p("French Baguette", "baguette", ["#d9a25f"], ("1 pc", "2 pcs", "250 g")),
        _p("Butter Croissants", "croissant", ["#d99a3d"], ("4 pcs", "6 pcs", "2 pcs")),
        _p("Soft Bread Rolls", "rolls", ["#c68642"], ("6 pcs", "4 pcs", "12 pcs"))),
        ("Freshly baked this morning.", "Crusty outside, soft inside.", "Baked daily with a slow-rise dough."),
        ("Perfect for sandwiches and breakfast.", "Great with butter or soup.", "Best enjoyed the same day."),
        ("France", "Germany", "Italy", "Austria")),
    Category("meat", 7.0, True, True, ("#ffffff", "#f0e6dc", "#e6e6e6"), (
        _p("Ribeye Steak", "steak", ["#9b1c1c"], ("250 g", "400 g", "2 x 200 g")),
        _p("Beef Mince", "mince", ["#b23a3a"], ("500 g", "1 kg", "400 g")),
        _p("Chicken Drumsticks", "drumsticks", ["#f0c2a0"], ("1 kg", "600 g", "8 pcs")),
        _p("Pork Chops", "steak", ["#e89a9a"], ("500 g", "4 pcs"))),
        ("Dry-aged and hand-cut by our butcher.", "Tender, well-marbled cuts.", "Freshly cut this morning."),
        ("Perfect for the grill or the pan.", "Great for family dinners.", "Keep refrigerated, cook thoroughly."),
        ("Ireland", "Argentina", "Scotland", "Germany", "Uruguay")),
    Category("seafood", 8.0, True, True, ("#dff3f8", "#cfe8ef", "#e6f0f2"), (
        _p("Sea Bream", "fish", ["#9eaab5"], ("1 fish", "2 fish", "500 g")),
        _p("Atlantic Mackerel", "fish", ["#4f7596"], ("2 fish", "400 g")),
        _p("Salmon Fillet", "salmon", ["#ff8a65"], ("250 g", "400 g", "2 x 125 g")),
        _p("King Prawns", "prawns", ["#ff7043"], ("200 g", "400 g", "1 kg"))),
        ("Caught this week and kept on ice.", "Fresh from the morning market.", "Sustainably caught, firm and fresh."),
        ("Perfect grilled, baked or pan-fried.", "Great with lemon and herbs.", "Cook within two days."),
        ("Norway", "Scotland", "Greece", "Spain", "Iceland")),
    Category("eggs", 3.0, True, True, ("#f5efe6", "#eeeeee", "#e4d8c4"), (
        _p("Free-Range Eggs", "eggs", ["#d39b63"], ("6 eggs", "10 eggs", "12 eggs")),
        _p("White Eggs", "eggs", ["#f6f2ea"], ("6 eggs", "10 eggs")),
        _p("Quail Eggs", "quail_eggs", ["#d8c3a5"], ("12 eggs", "18 eggs"))),
        ("Laid this week by happy hens.", "Farm fresh eggs with golden yolks.", "Collected daily from the farm."),
        ("Perfect for breakfast and baking.", "Great boiled, fried or scrambled.", "Store in a cool place."),
        ("the Netherlands", "Germany", "France", "Belgium")),
    Category("drinks", 1.6, True, False, ("#f0f4f8", "#fff8e1", "#eceff1"), (
        _p("Orange Juice", "bottles", ["#ffa000"], ("1 L", "1.5 L", "330 ml")),
        _p("Cola", "cans", ["#c62828"], ("6 x 330 ml", "330 ml", "12 x 330 ml")),
        _p("Sparkling Water", "bottles", ["#b3e5fc"], ("1.5 L", "6 x 1.5 L", "500 ml")),
        _p("Lemonade", "cans", ["#fdd835"], ("6 x 330 ml", "330 ml"))),
        ("Refreshing and best served chilled.", "Crisp, cool and thirst-quenching.", "No artificial colours."),
        ("Great for parties and picnics.", "Perfect with lunch.", "A refreshing everyday drink."),
        ("Germany", "Belgium", "Italy", "France")),
    Category("coffee_tea", 5.0, True, False, ("#efe6dd", "#d7ccc8", "#f5f0e8"), (
        _p("Espresso Beans", "coffee_bag", ["#3e2723"], ("250 g", "500 g", "1 kg")),
        _p("Ground Coffee", "coffee_bag", ["#6d4c41"], ("250 g", "500 g")),
        _p("Cappuccino Pods", "coffee_cups", ["#5d4037"], ("10 pods", "20 pods")),
        _p("Green Tea", "tea_box", ["#558b2f"], ("20 bags", "40 bags", "100 g")),
        _p("Earl Grey Tea", "tea_box", ["#283593"], ("20 bags", "50 bags"))),
        ("Slow-roasted for a rich aroma.", "Smooth, full-bodied flavour.", "Freshly roasted in small batches."),
        ("Perfect for a morning cup.", "Great for espresso and filter.", "Brew for three minutes."),
        ("Colombia", "Ethiopia", "Brazil", "India", "Kenya", "Sri Lanka")),
    Category("snacks", 2.1, True, False, ("#fffde7", "#fce4ec", "#f3e5f5"), (
        _p("Sea Salt Crisps", "crisps", ["#d32f2f"], ("150 g", "40 g", "200 g")),
        _p("Paprika Crisps", "crisps", ["#6a1b9a"], ("150 g", "200 g")),
        _p("Chocolate Chip Cookies", "cookies", ["#c9955c"], ("200 g", "300 g")),
        _p("Salted Mixed Nuts", "nuts", ["#b5835a"], ("200 g", "400 g"))),
        ("Crunchy and irresistibly tasty.", "A delicious crunchy treat.", "Baked, not fried."),
        ("Perfect for movie nights and parties.", "Great for sharing.", "A tasty snack on the go."),
        ("the United Kingdom", "Belgium", "Germany", "Spain")),
    Category("frozen", 4.0, True, False, ("#d6ecfa", "#cde3f5", "#e3f1fb"), (
        _p("Frozen Garden Peas", "frozen_peas", ["#43a047"], ("1 kg", "500 g")),
        _p("Vanilla Ice Cream", "ice_cream", ["#fff3c4"], ("500 ml", "1 L", "4 cones")),
        _p("Frozen Margherita Pizza", "frozen_box", ["#1565c0"], ("1 pizza", "2 pizzas")),
        _p("Ice Cubes", "ice_cubes", ["#e1f5fe"], ("2 kg", "1 kg"))),
        ("Frozen at peak freshness.", "Deep-frozen to lock in flavour.", "Keep frozen at -18 C."),
        ("Ready in minutes from the freezer.", "A handy freezer standby.", "Great for quick dinners."),
        ("Belgium", "Italy", "the Netherlands", "Denmark")),
    Category("pantry", 2.5, True, False, ("#ece4d4", "#f2ede3", "#e0d6c2"), (
        _p("Spaghetti", "spaghetti", ["#f0c75e"], ("500 g", "1 kg")),
        _p("Penne Pasta", "pasta", ["#e9b949"], ("500 g", "1 kg")),
        _p("Basmati Rice", "rice_bag", ["#fafafa"], ("1 kg", "2 kg", "5 kg")),
        _p("Tomato Passata", "jars", ["#b71c1c"], ("500 g", "700 g")),
        _p("Wildflower Honey", "jars", ["#f9a825"], ("250 g", "450 g"))),
        ("A store-cupboard essential with a long shelf life.", "Made from carefully selected ingredients.",
         "Traditional recipe, slowly dried."),
        ("Perfect for quick weeknight meals.", "Great for family cooking.", "Store in a cool dry place."),
        ("Italy", "India", "Greece", "Spain", "Turkey")),
    Category("spices", 3.0, True, False, ("#3e3a36", "#2f3b40", "#4a3b2e"), (
        _p("Sweet Paprika", "spice_heaps", ["#c62828"], ("50 g", "100 g")),
        _p("Ground Turmeric", "spice_heaps", ["#f9a825"], ("50 g", "100 g")),
        _p("Ground Cumin", "spice_heaps", ["#a1887f"], ("50 g", "80 g")),
        _p("Cinnamon Sticks", "cinnamon", ["#8d5524"], ("30 g", "50 g")),
        _p("Black Peppercorns", "peppercorns", ["#212121"], ("50 g", "100 g"))),
        ("Aromatic and freshly ground.", "Intense aroma and warm flavour.", "Sun-dried and carefully milled."),
        ("Perfect for curries, stews and rubs.", "A pinch transforms any dish.", "Great for marinades."),
        ("India", "Sri Lanka", "Turkey", "Hungary", "Vietnam")),
    Category("baby", 6.0, False, False, ("#fce4ec", "#e3f2fd", "#f3e5f5"), (
        _p("Baby Bottle", "baby_bottle", ["#f48fb1"], ("260 ml", "2 x 260 ml", "150 ml")),
        _p("Nappies Size 3", "nappies", ["#81d4fa"], ("52 pcs", "28 pcs", "90 pcs")),
        _p("Baby Fruit Puree", "pouches", ["#ffb74d"], ("4 x 90 g", "90 g"))),
        ("Gentle and safe for little ones.", "Soft, gentle and dermatologically tested.", "Made with care for babies."),
        ("Suitable from 6 months.", "Trusted by parents.", "BPA free."),
        ("Germany", "Sweden", "France", "the United Kingdom")),
    Category("household", 4.0, False, False, ("#e0f7fa", "#eceff1", "#f1f8e9"), (
        _p("Multi-Surface Spray", "spray", ["#0288d1"], ("500 ml", "750 ml")),
        _p("Laundry Detergent", "detergent", ["#ff6f00"], ("1.5 L", "3 L")),
        _p("Kitchen Sponges", "sponges", ["#fdd835"], ("3 pcs", "6 pcs")),
        _p("Toilet Paper", "toilet_rolls", ["#fafafa"], ("9 rolls", "4 rolls", "24 rolls"))),
        ("Tough on dirt, gentle on surfaces.", "Powerful cleaning with a fresh scent.", "Long-lasting and effective."),
        ("Great for kitchen and bathroom.", "For a spotless home.", "Keep out of reach of children."),
        ("Germany", "Belgium", "Poland", "Italy")),
    Category("personal_care", 4.5, False, False, ("#fdeef4", "#eef7f6", "#f7f2fa"), (
        _p("Whitening Toothpaste", "toothpaste", ["#00897b"], ("75 ml", "2 x 75 ml")),
        _p("Repair Shampoo", "pump_bottle", ["#ab47bc"], ("250 ml", "400 ml")),
        _p("Lavender Hand Soap", "soap", ["#ce93d8"], ("2 bars", "100 g", "300 ml")),
        _p("Moisturising Body Lotion", "pump_bottle", ["#4dd0e1"], ("400 ml", "250 ml"))),
        ("Gentle care with a fresh fragrance.", "Dermatologically tested formula.", "Nourishing and mild."),
        ("For everyday use.", "Suitable for sensitive skin.", "Leaves you feeling fresh."),
        ("France", "Germany", "Switzerland", "Italy")),
    Category("pet", 6.0, False, False, ("#f3e9dc", "#e8f5e9", "#fff3e0"), (
        _p("Dry Dog Food", "kibble", ["#8d5524"], ("2 kg", "5 kg", "12 kg")),
        _p("Cat Treats", "kibble", ["#b5651d"], ("60 g", "150 g")),
        _p("Dog Chew Bones", "bones", ["#f5deb3"], ("5 pcs", "10 pcs")),
        _p("Wet Cat Food Tins", "pet_tins", ["#26a69a"], ("12 x 85 g", "6 x 85 g"))),
        ("Complete and balanced nutrition.", "Tasty and healthy for your pet.", "Vet recommended recipe."),
        ("For dogs and cats of all ages.", "Rich in protein.", "Your pet will love it."),
        ("France", "Germany", "the United Kingdom", "Denmark")),
    Category("flowers", 9.0, False, True, ("#f1f8e9", "#fffde7", "#fce4ec"), (
        _p("Tulip Bouquet", "bouquet", ["#e91e63", "#ffeb3b", "#ff5722"], ("10 stems", "20 stems")),
        _p("Red Roses", "bouquet", ["#c2185b", "#b71c1c"], ("12 stems", "24 stems")),
        _p("Sunflowers", "sunflowers", ["#fbc02d"], ("5 stems", "3 stems")),
        _p("Potted Orchid", "orchid", ["#ba68c8"], ("1 pot", "12 cm pot"))),
        ("Freshly cut this morning.", "Long-lasting, vibrant blooms.", "Hand-tied by our florist."),
        ("A perfect gift for any occasion.", "Brightens up any room.", "Trim stems and change water daily."),
        ("the Netherlands", "Kenya", "Colombia", "Ecuador")),
    Category("deli", 5.0, True, True, ("#f5f0e6", "#eae0d0", "#ffffff"), (
        _p("Milano Salami", "salami", ["#8b1e2b"], ("100 g", "200 g")),
        _p("Cooked Ham", "ham", ["#f4a6a6"], ("150 g", "300 g")),
        _p("Green Olives", "olives", ["#7c8c2a"], ("200 g", "350 g")),
        _p("Kalamata Olives", "olives", ["#4a2238"], ("200 g", "350 g"))),
        ("Sliced fresh at our deli counter.", "Cured the traditional way.", "Full of Mediterranean flavour."),
        ("Perfect for antipasti and sandwiches.", "Great on a sharing board.", "Keep refrigerated."),
        ("Italy", "Spain", "Greece", "France")),
)

CATEGORIES: tuple[str, ...] = tuple(c.name for c in _CATALOGUE)
N_CATEGORIES = len(CATEGORIES)
_BASE_PRICE = np.array([c.base_price for c in _CATALOGUE])
_N_PRODUCTS = np.array([len(c.products) for c in _CATALOGUE])
_MAX_SIZES = max(len(p.sizes) for c in _CATALOGUE for p in c.products)
_SIZE_MULT = (1.0, 1.5, 2.2, 3.0)
_FOOD = np.array([c.food for c in _CATALOGUE])
_FRESH = np.array([c.fresh for c in _CATALOGUE])
_N_SIZES = np.array([[len(p.sizes) for p in c.products] + [1] * (max(_N_PRODUCTS) - len(c.products)) for c in _CATALOGUE])

# Texts with no category in them (vague_text defect).
_VAGUE_TITLES = ("Good item", "Fresh produce", "Best quality", "Great value", "Daily essentials", "New arrival",
                 "Item", "Special offer", "Shop favourite", "Product")
_VAGUE_DESCRIPTIONS = ("Good quality.", "Buy now.", "See pictures.", "", "Great price, order today.",
                       "Available while stocks last.", "Quality product.")

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
PNG_SHARE = 0.15           # share of images encoded as PNG (the rest JPEG)


def purchase_logit(favourite: np.ndarray, price: np.ndarray, bestseller: np.ndarray, organic: np.ndarray,
                   local: np.ndarray) -> np.ndarray:
    return (B0 + B_FAV * favourite + B_BEST * bestseller + B_ORGANIC * organic + B_LOCAL * local
            - B_PRICE * np.log(np.asarray(price, dtype=np.float64) / PRICE_REF))


# ----------------------------------------------------------------------------------------------
# Ids and items.
# ----------------------------------------------------------------------------------------------

def item_id(i) -> np.ndarray | str:
    return f"it{int(i):09d}" if np.isscalar(i) else np.char.add("it", np.char.zfill(np.asarray(i).astype(str), 9))


def user_id(u) -> np.ndarray | str:
    return f"u{int(u):08d}" if np.isscalar(u) else np.char.add("u", np.char.zfill(np.asarray(u).astype(str), 8))


def merchant_id(m) -> np.ndarray | str:
    return f"m{int(m):06d}" if np.isscalar(m) else np.char.add("m", np.char.zfill(np.asarray(m).astype(str), 6))


def _check(world) -> None:
    if world.n_items < N_CATEGORIES:
        raise ValueError(f"world.n_items must be >= {N_CATEGORIES} (one item per category), got {world.n_items}")
    rates = world.defects.model_dump()
    if sum(rates.values()) > 1:
        raise ValueError(f"world.defects rates add up to {sum(rates.values()):.3f} > 1: {rates}")


def _items_in_category(n_items: int, c) -> np.ndarray:
    return (n_items - np.asarray(c) + N_CATEGORIES - 1) // N_CATEGORIES


def _item_of_category(n_items: int, c, u) -> np.ndarray:
    """Index of an item of category c, chosen by uniform u (items of c are c, c + C, c + 2C, ...)."""
    c = np.asarray(c, dtype=np.int64)
    return c + N_CATEGORIES * _pick(u, _items_in_category(n_items, c))


# Item fields: one hash field each.
(_F_PRODUCT, _F_SIZE, _F_ORGANIC, _F_LOCAL, _F_BEST, _F_PREMIUM, _F_VALUE, _F_PRICE1, _F_PRICE2, _F_MERCHANT,
 _F_UPDATED, _F_DEFECT, _F_OTHER_CAT, _F_OTHER_ITEM, _F_QUALITY, _F_USE, _F_ORIGIN, _F_VAGUE1, _F_VAGUE2,
 _F_PNG, _F_BLUR) = range(1, 22)


def _clean_attributes(seed: int, idx: np.ndarray) -> dict[str, np.ndarray]:
    """What an item is, before any defect: category, product, size, tags, price (vectorised)."""
    idx = np.asarray(idx, dtype=np.int64)
    cat = idx % N_CATEGORIES
    u = lambda f: _u(seed, KIND_ITEM, idx, 0, f)  # noqa: E731
    product = _pick(u(_F_PRODUCT), _N_PRODUCTS[cat])
    food, fresh = _FOOD[cat], _FRESH[cat]
    organic = u(_F_ORGANIC) < np.where(food, 0.22, 0.12)      # "Organic" (food) / "Eco" (non-food)
    local = fresh & (u(_F_LOCAL) < 0.35)
    bestseller = u(_F_BEST) < 0.15
    premium = u(_F_PREMIUM) < 0.12
    value = ~premium & (u(_F_VALUE) < 0.14)
    size = _pick(u(_F_SIZE), _MAX_SIZES)   # folded onto the product's sizes below
    size = size % _N_SIZES[cat, product]
    price = (_BASE_PRICE[cat] * np.asarray(_SIZE_MULT)[np.minimum(size, len(_SIZE_MULT) - 1)]
             * np.exp(0.25 * _normal(u(_F_PRICE1), u(_F_PRICE2)))
             * np.where(premium, 1.5, 1.0) * np.where(value, 0.75, 1.0) * np.where(organic, 1.2, 1.0))
    price = np.maximum(np.round(price, 1) - 0.01, 0.29)
    return dict(index=idx, category=cat, product=product, size=size, organic=organic, local=local,
                bestseller=bestseller, premium=premium, value=value, price=price)


def item_attributes(world, idx) -> pd.DataFrame:
    """Every non-image field of items ``idx``, defects and truth included (vectorised, cheap).

    Columns: index, item_id, true_category (int), listed_category (int), product, size, organic,
    local, bestseller, premium, value, price, merchant, updated_at, defect (str), source_index
    (-1 when none), and shown_* tags (the tags of the displayed text, which drive p_buy).
    """
    _check(world)
    seed, idx = world.seed, np.asarray(idx, dtype=np.int64)
    a = _clean_attributes(seed, idx)
    cat = a["category"]
    u = lambda f: _u(seed, KIND_ITEM, idx, 0, f)  # noqa: E731
    rates = world.defects.model_dump()
    edges = np.cumsum([rates[d] for d in DEFECTS[1:]])
    defect_code = np.searchsorted(edges, u(_F_DEFECT), side="right") + 1
    defect_code[defect_code > len(DEFECTS) - 1] = 0
    defect = np.asarray(DEFECTS, dtype=object)[defect_code]
    other_cat = (cat + 1 + _pick(u(_F_OTHER_CAT), N_CATEGORIES - 1)) % N_CATEGORIES
    other_item = _item_of_category(world.n_items, other_cat, u(_F_OTHER_ITEM))
    swapped = (defect == "text_swap") | (defect == "image_swap")
    source = np.where(swapped, other_item, -1)
    listed = np.where(defect == "wrong_category", other_cat, cat)
    # Merchants specialise: each category is sold by about a third of the shops.
    span = max(1, world.n_merchants // 3)
    merchant = (cat * 7919 + _pick(u(_F_MERCHANT), span)) % world.n_merchants
    run_start = np.datetime64(world.run_date, "s")
    updated_at = run_start - (np.int64(86400) + _pick(u(_F_UPDATED), 365 * 86400)).astype("timedelta64[s]")
    out = pd.DataFrame(a)
    out.insert(1, "item_id", item_id(idx))
    out = out.rename(columns={"category": "true_category"})
    out["listed_category"] = listed
    out["merchant"] = merchant
    out["updated_at"] = updated_at
    out["defect"] = defect
    out["source_index"] = source
    # The displayed text's tags: those of the source item for a swapped text, none for a vague one.
    shown = {k: a[k].copy() for k in ("organic", "local", "bestseller")}
    text_swap = defect == "text_swap"
    if text_swap.any():
        src = _clean_attributes(seed, other_item[text_swap])
        for k in shown:
            shown[k][text_swap] = src[k]
    for k in shown:
        shown[k][defect == "vague_text"] = False
        out[f"shown_{k}"] = shown[k]
    return out


def _one(seed: int, i: int) -> dict:
    return {k: v[0] for k, v in _clean_attributes(seed, np.array([i])).items()}


_CLEAN_KEYS = ("product", "size", "organic", "local", "bestseller", "premium", "value", "price")


def _clean_of_row(row) -> dict:
    """An item's clean attributes from its row of :func:`item_attributes`."""
    a = {k: getattr(row, k) for k in _CLEAN_KEYS}
    a["index"], a["category"] = row.index, row.true_category
    return a


# The description sentences of the tags that move p_buy (evaluation reads them back from the text).
TAG_SENTENCES = {"local": "From local farms around the city.", "organic": "Certified organic.",
                 "eco": "Eco-friendly formula.", "bestseller": "Customer bestseller!"}


def _clean_text(seed: int, i: int, a: dict | None = None) -> tuple[str, str]:
    a = a if a is not None else _one(seed, i)
    cat = _CATALOGUE[a["category"]]
    product = cat.products[a["product"]]
    u = lambda f: float(_u(seed, KIND_ITEM, i, 0, f))  # noqa: E731
    prefix = ""
    if a["organic"]:
        prefix += "Organic " if cat.food else "Eco "
    if a["premium"]:
        prefix += "Premium "
    title = f"{prefix}{product.name} {product.sizes[a['size']]}"
    if a["value"]:
        title += " Value Pack"
    sentences = [cat.quality[int(_pick(u(_F_QUALITY), len(cat.quality)))]]
    if a["local"]:
        sentences.append(TAG_SENTENCES["local"])
    else:
        sentences.append(f"Origin: {cat.origins[int(_pick(u(_F_ORIGIN), len(cat.origins)))]}.")
    sentences.append(cat.uses[int(_pick(u(_F_USE), len(cat.uses)))])
    if a["organic"]:
        sentences.append(TAG_SENTENCES["organic"] if cat.food else TAG_SENTENCES["eco"])
    if a["bestseller"]:
        sentences.append(TAG_SENTENCES["bestseller"])
    if a["value"]:
        sentences.append("Value pack: more for less.")
    if a["premium"]:
        sentences.append("Premium selection.")
    return title, " ".join(sentences)


def item_text(world, i: int, attrs=None) -> tuple[str, str]:
    """(title, description) of item ``i`` as listed: its own, another item's, or a vague one.

    ``attrs``: the item's row of :func:`item_attributes` when the caller has it (saves time).
    """
    attrs = attrs if attrs is not None else item_attributes(world, np.array([i])).iloc[0]
    if attrs.defect == "text_swap":
        return _clean_text(world.seed, int(attrs.source_index))
    if attrs.defect == "vague_text":
        u = lambda f: float(_u(world.seed, KIND_ITEM, i, 0, f))  # noqa: E731
        return (_VAGUE_TITLES[int(_pick(u(_F_VAGUE1), len(_VAGUE_TITLES)))],
                _VAGUE_DESCRIPTIONS[int(_pick(u(_F_VAGUE2), len(_VAGUE_DESCRIPTIONS)))])
    return _clean_text(world.seed, i, _clean_of_row(attrs))


# ----------------------------------------------------------------------------------------------
# Pictures. Drawn at twice the size and reduced, for smooth edges.
# ----------------------------------------------------------------------------------------------

def _rgb(color: str) -> tuple[int, int, int]:
    return ImageColor.getrgb(color)


def _shade(rgb, f: float) -> tuple[int, int, int]:
    """f < 1 darkens, f > 1 lightens towards white."""
    if f <= 1:
        return tuple(int(c * f) for c in rgb)
    return tuple(int(c + (255 - c) * (f - 1)) for c in rgb)


class _Canvas:
    def __init__(self, size: int, rng: np.random.Generator):
        self.S, self.rng = size, rng
        self.img = Image.new("RGB", (size, size))
        self.d = ImageDraw.Draw(self.img)

    # colour jitter in HSV
    def jit(self, color, h=0.025, s=0.15, v=0.12):
        rgb = _rgb(color) if isinstance(color, str) else color
        hh, ss, vv = colorsys.rgb_to_hsv(*(x / 255 for x in rgb))
        r = self.rng.uniform(-1, 1, 3)
        hh = (hh + h * r[0]) % 1.0
        ss = min(1.0, max(0.0, ss * (1 + s * r[1])))
        vv = min(1.0, max(0.0, vv * (1 + v * r[2])))
        return tuple(int(round(x * 255)) for x in colorsys.hsv_to_rgb(hh, ss, vv))

    def P(self, x, y):
        return (x * self.S, y * self.S)

    def ell(self, cx, cy, rx, ry, fill=None, outline=None, width=0.0):
        S = self.S
        self.d.ellipse([(cx - rx) * S, (cy - ry) * S, (cx + rx) * S, (cy + ry) * S], fill=fill, outline=outline,
                       width=max(0, int(width * S)))

    def rell(self, cx, cy, rx, ry, ang, fill=None, outline=None, width=0.0, n=28):
        cos, sin = _unit_circle(n)
        ca, sa = math.cos(ang), math.sin(ang)
        S = self.S
        pts = [((cx + rx * c * ca - ry * s * sa) * S, (cy + rx * c * sa + ry * s * ca) * S) for c, s in zip(cos, sin)]
        self.d.polygon(pts, fill=fill, outline=outline, width=max(1, int(width * S)) if outline else 1)

    def poly(self, pts, fill=None, outline=None, width=0.0):
        pts = [(float(x) * self.S, float(y) * self.S) for x, y in pts]
        self.d.polygon(pts, fill=fill, outline=outline, width=max(1, int(width * self.S)) if outline else 1)

    def rect(self, x0, y0, x1, y1, fill=None, outline=None, width=0.0, r=0.0):
        S = self.S
        box = [x0 * S, y0 * S, x1 * S, y1 * S]
        if r > 0:
            self.d.rounded_rectangle(box, radius=r * S, fill=fill, outline=outline, width=max(0, int(width * S)))
        else:
            self.d.rectangle(box, fill=fill, outline=outline, width=max(0, int(width * S)))

    def line(self, pts, fill, width):
        self.d.line([(float(x) * self.S, float(y) * self.S) for x, y in pts], fill=fill, width=max(1, int(width * self.S)))

    def arc(self, cx, cy, r, a0, a1, fill, width):
        S = self.S
        self.d.arc([(cx - r) * S, (cy - r) * S, (cx + r) * S, (cy + r) * S], a0, a1, fill=fill, width=max(1, int(width * S)))

    def dots(self, n, x0, y0, x1, y1, color, r, jitter=True):
        xs, ys = self.rng.uniform(x0, x1, n), self.rng.uniform(y0, y1, n)
        for x, y in zip(xs, ys):
            self.ell(x, y, r, r, fill=self.jit(color, 0.01, 0.1, 0.1) if jitter else color)

    def spots(self, n, margin=0.18):
        """n object centres spread over the canvas (jittered grid cells, shuffled)."""
        k = int(math.ceil(math.sqrt(n)))
        cells = self.rng.permutation(k * k)[:n]
        step = (1 - 2 * margin) / max(1, k - 1) if k > 1 else 0
        out = []
        for cell in cells:
            gx, gy = cell % k, cell // k
            x = (margin + gx * step if k > 1 else 0.5) + self.rng.uniform(-0.06, 0.06)
            y = (margin + gy * step if k > 1 else 0.5) + self.rng.uniform(-0.06, 0.06)
            out.append((x, y))
        return out


_CIRCLES: dict[int, tuple[list[float], list[float]]] = {}


def _unit_circle(n: int) -> tuple[list[float], list[float]]:
    if n not in _CIRCLES:
        t = [2 * math.pi * k / n for k in range(n)]
        _CIRCLES[n] = ([math.cos(a) for a in t], [math.sin(a) for a in t])
    return _CIRCLES[n]


def _rotate(pts: np.ndarray, ang: float) -> np.ndarray:
    c, s = math.cos(ang), math.sin(ang)
    return pts @ np.array([[c, s], [-s, c]])


def _background(cv: _Canvas, colors: tuple[str, ...], texture: str | None) -> None:
    rng = cv.rng
    base = cv.jit(colors[int(rng.integers(len(colors)))], 0.02, 0.2, 0.05)
    cv.rect(0, 0, 1, 1, fill=base)
    # a soft vertical gradient / table edge
    if rng.random() < 0.5:
        y = rng.uniform(0.65, 0.85)
        cv.rect(0, y, 1, 1, fill=_shade(base, rng.uniform(0.88, 0.95)))
    if texture == "grain":
        for _ in range(int(rng.integers(6, 12))):
            y = rng.uniform(0, 1)
            cv.line([(0, y), (1, y + rng.uniform(-0.05, 0.05))], _shade(base, 0.85), 0.006)
    elif texture == "ice":
        cv.dots(int(rng.integers(25, 45)), 0, 0, 1, 1, _shade(base, 1.6), 0.012)
    elif texture == "frost":
        for _ in range(int(rng.integers(3, 6))):
            x, y, r = rng.uniform(0.05, 0.95), rng.uniform(0.05, 0.95), rng.uniform(0.03, 0.06)
            for k in range(3):
                a = k * math.pi / 3
                cv.line([(x - r * math.cos(a), y - r * math.sin(a)), (x + r * math.cos(a), y + r * math.sin(a))],
                        (255, 255, 255), 0.006)
    elif texture == "speckle":
        cv.dots(int(rng.integers(30, 60)), 0, 0, 1, 1, _shade(base, 1.25), 0.006)


_TEXTURE = {"bakery": "grain", "seafood": "ice", "frozen": "frost", "spices": "speckle"}


# --- motifs: one small function per kind of product picture ---------------------------------

def _m_round_fruit(cv, col, citrus=False):
    rng = cv.rng
    n = int(rng.integers(2, 6))
    for x, y in cv.spots(n, 0.25):
        r = rng.uniform(0.12, 0.17)
        c = cv.jit(col)
        cv.ell(x, y, r, r * rng.uniform(0.9, 1.0), fill=c, outline=_shade(c, 0.7), width=0.01)
        cv.ell(x - r * 0.35, y - r * 0.35, r * 0.22, r * 0.16, fill=_shade(c, 1.45))
        if citrus:
            cv.dots(10, x - r * 0.6, y - r * 0.6, x + r * 0.6, y + r * 0.6, _shade(c, 0.85), 0.006, False)
            cv.ell(x, y - r * 0.85, 0.012, 0.012, fill=(90, 120, 40))
        else:
            cv.line([(x, y - r * 0.8), (x + 0.02, y - r * 1.25)], (95, 60, 30), 0.014)
            cv.rell(x + 0.045, y - r * 1.1, 0.035, 0.015, -0.5, fill=cv.jit("#558b2f"))


def _m_bananas(cv, col):
    rng = cv.rng
    cx, cy = rng.uniform(0.4, 0.6), rng.uniform(0.3, 0.5)
    r = rng.uniform(0.28, 0.36)
    a0 = rng.uniform(10, 60)
    for k in range(int(rng.integers(2, 5))):
        c = cv.jit(col)
        cv.arc(cx, cy + k * 0.06, r, a0, a0 + 110, fill=c, width=0.07)
        cv.arc(cx, cy + k * 0.06, r - 0.035, a0, a0 + 110, fill=_shade(c, 0.85), width=0.012)
    end = np.deg2rad(a0)
    cv.ell(cx + r * math.cos(end), cy + r * math.sin(end), 0.018, 0.018, fill=(80, 55, 25))


def _m_pears(cv, col):
    rng = cv.rng
    for x, y in cv.spots(int(rng.integers(2, 5)), 0.28):
        r = rng.uniform(0.1, 0.14)
        c = cv.jit(col)
        cv.ell(x, y + r * 0.3, r, r, fill=c, outline=_shade(c, 0.75), width=0.008)
        cv.ell(x, y - r * 0.6, r * 0.62, r * 0.7, fill=c)
        cv.line([(x, y - r * 1.2), (x + 0.015, y - r * 1.6)], (95, 60, 30), 0.012)
        cv.dots(5, x - r * 0.5, y - r * 0.2, x + r * 0.5, y + r * 0.8, _shade(c, 0.8), 0.005, False)


def _m_carrots(cv, col):
    rng = cv.rng
    ang0 = rng.uniform(0, np.pi)
    for k in range(int(rng.integers(3, 7))):
        x, y = rng.uniform(0.3, 0.7), rng.uniform(0.3, 0.7)
        ang = ang0 + rng.uniform(-0.35, 0.35)
        L, w = rng.uniform(0.28, 0.4), rng.uniform(0.035, 0.05)
        pts = _rotate(np.array([[-L / 2, -w], [-L / 2, w], [L / 2, 0.004], [L / 2, -0.004]]), ang) + (x, y)
        c = cv.jit(col)
        cv.poly(pts, fill=c, outline=_shade(c, 0.8), width=0.004)
        top = pts[0] * 0.5 + pts[1] * 0.5
        for t in (-0.5, 0, 0.5):
            tip = _rotate(np.array([[-0.09, t * 0.06]]), ang)[0] + top
            cv.line([top, tip], cv.jit("#43a047"), 0.012)


def _m_broccoli(cv, col):
    rng = cv.rng
    for x, y in cv.spots(int(rng.integers(1, 3)), 0.33):
        cv.rect(x - 0.04, y, x + 0.04, y + 0.2, fill=cv.jit("#9ccc65"), r=0.02)
        for _ in range(9):
            dx, dy = rng.uniform(-0.13, 0.13), rng.uniform(-0.13, 0.03)
            r = rng.uniform(0.05, 0.08)
            c = cv.jit(col)
            cv.ell(x + dx, y + dy, r, r, fill=c, outline=_shade(c, 0.7), width=0.006)


def _m_cucumbers(cv, col):
    rng = cv.rng
    ang0 = rng.uniform(0, np.pi)
    for k in range(int(rng.integers(1, 4))):
        x, y = 0.5 + rng.uniform(-0.15, 0.15), 0.3 + 0.2 * k + rng.uniform(-0.05, 0.05)
        c = cv.jit(col)
        ang = ang0 + rng.uniform(-0.2, 0.2)
        cv.rell(x, y, rng.uniform(0.3, 0.38), 0.07, ang, fill=c, outline=_shade(c, 0.7), width=0.006)
        cv.rell(x, y - 0.02, 0.25, 0.015, ang, fill=_shade(c, 1.35))


def _m_potatoes(cv, col):
    rng = cv.rng
    for x, y in cv.spots(int(rng.integers(3, 8)), 0.22):
        c = cv.jit(col)
        rx = rng.uniform(0.08, 0.12)
        cv.rell(x, y, rx, rx * rng.uniform(0.65, 0.85), rng.uniform(0, np.pi), fill=c, outline=_shade(c, 0.7), width=0.006)
        cv.dots(3, x - rx * 0.5, y - rx * 0.3, x + rx * 0.5, y + rx * 0.3, _shade(c, 0.6), 0.006, False)


def _m_lettuce(cv, col):
    rng = cv.rng
    x, y = rng.uniform(0.4, 0.6), rng.uniform(0.4, 0.6)
    for k in range(7):
        r = 0.3 - k * 0.03
        c = cv.jit(col if k % 2 else "#c5e1a5")
        cv.ell(x + rng.uniform(-0.03, 0.03), y + rng.uniform(-0.03, 0.03), r, r * 0.9, fill=c, outline=_shade(c, 0.8), width=0.006)


def _m_berry_cluster(cv, col):
    rng = cv.rng
    if rng.random() < 0.5:  # a punnet
        cv.poly([(0.12, 0.55), (0.88, 0.55), (0.8, 0.9), (0.2, 0.9)], fill=cv.jit("#66bb6a"), outline=(40, 90, 40), width=0.006)
        centres = [(rng.uniform(0.35, 0.65), 0.5)]
    else:
        centres = [(rng.uniform(0.25, 0.75), rng.uniform(0.25, 0.75)) for _ in range(int(rng.integers(1, 4)))]
    for cx, cy in centres:
        for _ in range(int(rng.integers(16, 30))):
            r = rng.uniform(0.035, 0.05)
            x, y = cx + rng.normal(0, 0.1), cy + rng.normal(0, 0.08)
            c = cv.jit(col)
            cv.ell(x, y, r, r, fill=c, outline=_shade(c, 0.6), width=0.004)
            cv.ell(x - r * 0.3, y - r * 0.3, r * 0.25, r * 0.25, fill=_shade(c, 1.4))


def _m_strawberries(cv, col):
    rng = cv.rng
    for x, y in cv.spots(int(rng.integers(3, 8)), 0.22):
        r = rng.uniform(0.07, 0.1)
        c = cv.jit(col)
        ang = rng.uniform(-0.5, 0.5)
        pts = _rotate(np.array([[-r, -r * 0.5], [r, -r * 0.5], [r * 0.6, r * 0.6], [0, r * 1.2], [-r * 0.6, r * 0.6]]), ang) + (x, y)
        cv.poly(pts, fill=c, outline=_shade(c, 0.7), width=0.004)
        cv.dots(6, x - r * 0.5, y - r * 0.3, x + r * 0.5, y + r * 0.6, (250, 230, 120), 0.004, False)
        top = _rotate(np.array([[-r * 0.7, -r * 0.6], [0, -r * 0.25], [r * 0.7, -r * 0.6], [0, -r * 0.9]]), ang) + (x, y)
        cv.poly(top, fill=cv.jit("#2e7d32"))


def _m_milk_cartons(cv, col):
    rng = cv.rng
    n = int(rng.integers(1, 4))
    w = 0.6 / n
    x0 = rng.uniform(0.12, 0.4 - 0.05 * n)
    for k in range(n):
        x = x0 + k * (w + 0.04)
        top, bottom = rng.uniform(0.22, 0.32), rng.uniform(0.82, 0.9)
        white = cv.jit("#fafafa", 0, 0, 0.03)
        cv.rect(x, top, x + w, bottom, fill=white, outline=(170, 170, 170), width=0.006)
        cv.poly([(x, top), (x + w / 2, top - 0.1), (x + w, top)], fill=_shade(white, 0.92), outline=(170, 170, 170), width=0.005)
        band = cv.jit(col)
        cv.rect(x, top + 0.2, x + w, top + 0.32, fill=band)
        cv.line([(x + w * 0.2, top + 0.1), (x + w * 0.8, top + 0.1)], band, 0.015)


def _m_yoghurt(cv, col):
    rng = cv.rng
    for x, y in cv.spots(int(rng.integers(2, 5)), 0.3):
        r = rng.uniform(0.1, 0.13)
        body = cv.jit("#ffffff", 0, 0, 0.03)
        cv.poly([(x - r, y - r), (x + r, y - r), (x + r * 0.75, y + r * 1.2), (x - r * 0.75, y + r * 1.2)], fill=body,
                outline=(180, 180, 180), width=0.005)
        lid = cv.jit(col[int(rng.integers(len(col)))] if isinstance(col, tuple) else col)
        cv.ell(x, y - r, r, r * 0.3, fill=lid, outline=_shade(lid, 0.8), width=0.005)
        cv.rect(x - r * 0.8, y, x + r * 0.8, y + r * 0.4, fill=_shade(lid, 0.9))


def _m_cheese(cv, col):
    rng = cv.rng
    c = cv.jit(col)
    x, y = rng.uniform(0.3, 0.45), rng.uniform(0.35, 0.5)
    s = rng.uniform(0.35, 0.45)
    cv.poly([(x, y), (x + s, y - s * 0.25), (x + s, y + s * 0.5), (x, y + s * 0.6)], fill=c, outline=_shade(c, 0.75), width=0.006)
    cv.poly([(x, y), (x + s, y - s * 0.25), (x + s * 0.7, y - s * 0.45), (x - s * 0.2, y - s * 0.15)], fill=_shade(c, 1.25))
    for _ in range(int(rng.integers(3, 7))):
        cv.ell(x + rng.uniform(0.05, s - 0.05), y + rng.uniform(0.02, s * 0.45), 0.025, 0.02, fill=_shade(c, 0.8))
    cv.rell(x - 0.02, y + s * 0.3, 0.03, s * 0.3, 0.0, fill=cv.jit("#c62828"))


def _m_butter(cv, col):
    rng = cv.rng
    for k in range(int(rng.integers(1, 3))):
        x, y = rng.uniform(0.2, 0.4), 0.3 + 0.3 * k + rng.uniform(-0.04, 0.04)
        c = cv.jit(col)
        cv.rect(x, y, x + 0.45, y + 0.2, fill=c, outline=_shade(c, 0.8), width=0.006, r=0.02)
        cv.rect(x + 0.25, y, x + 0.45, y + 0.2, fill=cv.jit("#fbc02d"), r=0.02)
        cv.line([(x + 0.05, y + 0.1), (x + 0.2, y + 0.1)], cv.jit("#1565c0"), 0.02)


def _m_loaf(cv, col):
    rng = cv.rng
    for x, y in cv.spots(int(rng.integers(1, 3)), 0.38):
        c = cv.jit(col)
        w, h = rng.uniform(0.22, 0.3), rng.uniform(0.14, 0.2)
        cv.rell(x, y, w, h, rng.uniform(-0.3, 0.3), fill=c, outline=_shade(c, 0.65), width=0.008)
        for k in range(3):
            dx = (k - 1) * w * 0.45
            cv.line([(x + dx - 0.04, y - h * 0.5), (x + dx + 0.04, y + h * 0.5)], _shade(c, 1.4), 0.015)


def _m_baguette(cv, col):
    rng = cv.rng
    ang0 = rng.uniform(0, np.pi)
    for k in range(int(rng.integers(1, 4))):
        x, y = 0.5 + rng.uniform(-0.1, 0.1), 0.5 + (k - 1) * 0.18
        c = cv.jit(col)
        ang = ang0 + rng.uniform(-0.15, 0.15)
        cv.rell(x, y, 0.42, 0.065, ang, fill=c, outline=_shade(c, 0.7), width=0.006)
        for t in (-0.25, -0.08, 0.09, 0.26):
            p = _rotate(np.array([[t - 0.03, 0.03], [t + 0.03, -0.03]]), ang) + (x, y)
            cv.line(p, _shade(c, 1.35), 0.012)


def _m_croissant(cv, col):
    rng = cv.rng
    for x, y in cv.spots(int(rng.integers(1, 4)), 0.3):
        c = cv.jit(col)
        r = rng.uniform(0.13, 0.18)
        a0 = rng.uniform(160, 220)
        cv.arc(x, y, r, a0, a0 + 200, fill=c, width=0.11)
        cv.arc(x, y, r, a0 + 30, a0 + 170, fill=_shade(c, 0.75), width=0.01)


def _m_rolls(cv, col):
    rng = cv.rng
    for x, y in cv.spots(int(rng.integers(3, 7)), 0.22):
        c = cv.jit(col)
        r = rng.uniform(0.09, 0.12)
        cv.ell(x, y, r, r * 0.85, fill=c, outline=_shade(c, 0.65), width=0.006)
        cv.ell(x - r * 0.2, y - r * 0.3, r * 0.5, r * 0.3, fill=_shade(c, 1.25))


def _tray(cv):
    if cv.rng.random() < 0.6:
        cv.rect(0.08, 0.15, 0.92, 0.85, fill=cv.jit("#fafafa", 0, 0, 0.02), outline=(200, 200, 200), width=0.01, r=0.04)


def _blob(cv, x, y, r, n=9):
    t = np.sort(cv.rng.uniform(0, 2 * np.pi, n))
    rad = r * cv.rng.uniform(0.75, 1.1, n)
    return np.stack([x + rad * np.cos(t), y + rad * 0.75 * np.sin(t)], 1)


def _m_steak(cv, col):
    rng = cv.rng
    _tray(cv)
    for x, y in cv.spots(int(rng.integers(1, 3)), 0.38):
        c = cv.jit(col)
        pts = _blob(cv, x, y, rng.uniform(0.18, 0.24))
        cv.poly(pts, fill=c, outline=cv.jit("#f5f0e1", 0, 0, 0.02), width=0.02)
        for _ in range(4):
            a, b = rng.uniform(-0.1, 0.1, 2)
            cv.line([(x + a, y + b), (x + a + rng.uniform(-0.06, 0.06), y + b + 0.04)], _shade(c, 1.5), 0.008)


def _m_mince(cv, col):
    rng = cv.rng
    _tray(cv)
    x, y = rng.uniform(0.4, 0.6), rng.uniform(0.4, 0.6)
    c = cv.jit(col)
    cv.poly(_blob(cv, x, y, rng.uniform(0.25, 0.32), 12), fill=c)
    cv.dots(80, x - 0.22, y - 0.15, x + 0.22, y + 0.15, _shade(c, 1.35), 0.008)
    cv.dots(40, x - 0.22, y - 0.15, x + 0.22, y + 0.15, _shade(c, 0.7), 0.008)


def _m_drumsticks(cv, col):
    rng = cv.rng
    _tray(cv)
    for x, y in cv.spots(int(rng.integers(2, 5)), 0.3):
        c = cv.jit(col)
        ang = rng.uniform(0, 2 * np.pi)
        end = _rotate(np.array([[0.22, 0.0]]), ang)[0] + (x, y)
        cv.line([(x, y), end], (245, 240, 225), 0.035)
        cv.ell(end[0], end[1], 0.026, 0.026, fill=(245, 240, 225))
        cv.rell(x, y, 0.15, 0.095, ang, fill=c, outline=_shade(c, 0.75), width=0.008)


def _m_fish(cv, col):
    rng = cv.rng
    for k in range(int(rng.integers(1, 4))):
        x, y = rng.uniform(0.35, 0.6), 0.3 + 0.2 * k + rng.uniform(-0.05, 0.05)
        c = cv.jit(col)
        ang = rng.uniform(-0.3, 0.3)
        L = rng.uniform(0.22, 0.3)
        tail = _rotate(np.array([[L * 0.9, 0], [L * 1.35, -0.08], [L * 1.35, 0.08]]), ang) + (x, y)
        cv.poly(tail, fill=_shade(c, 0.85))
        cv.rell(x, y, L, 0.075, ang, fill=c, outline=_shade(c, 0.6), width=0.006)
        cv.rell(x, y + 0.02, L * 0.8, 0.025, ang, fill=_shade(c, 1.3))
        eye = _rotate(np.array([[-L * 0.7, -0.02]]), ang)[0] + (x, y)
        cv.ell(eye[0], eye[1], 0.014, 0.014, fill=(20, 20, 20), outline=(240, 240, 240), width=0.004)


def _m_salmon(cv, col):
    rng = cv.rng
    for k in range(int(rng.integers(1, 3))):
        x, y = rng.uniform(0.25, 0.4), 0.3 + 0.3 * k + rng.uniform(-0.05, 0.05)
        c = cv.jit(col)
        w = rng.uniform(0.35, 0.45)
        cv.poly([(x, y), (x + w, y - 0.04), (x + w + 0.05, y + 0.14), (x + 0.02, y + 0.18)], fill=c, outline=_shade(c, 0.8), width=0.005)
        for t in np.linspace(0.06, w - 0.02, 5):
            cv.line([(x + t, y - 0.01), (x + t - 0.05, y + 0.16)], _shade(c, 1.45), 0.008)


def _m_prawns(cv, col):
    rng = cv.rng
    for x, y in cv.spots(int(rng.integers(2, 6)), 0.25):
        c = cv.jit(col)
        r = rng.uniform(0.09, 0.12)
        a0 = rng.uniform(0, 360)
        cv.arc(x, y, r, a0, a0 + 250, fill=c, width=0.065)
        for k in range(4):
            a = np.deg2rad(a0 + 40 + 50 * k)
            cv.line([(x + (r - 0.02) * math.cos(a), y + (r - 0.02) * math.sin(a)),
                     (x + (r + 0.02) * math.cos(a), y + (r + 0.02) * math.sin(a))], _shade(c, 1.4), 0.006)


def _m_eggs(cv, col, small=False):
    rng = cv.rng
    cols, rows = (4, 3) if small else (int(rng.integers(2, 4)), 2)
    cell = 0.8 / max(cols, rows + 1)
    x0, y0 = 0.5 - cols * cell / 2, 0.5 - rows * cell / 2
    cv.rect(x0 - 0.03, y0 - 0.03, x0 + cols * cell + 0.03, y0 + rows * cell + 0.03, fill=cv.jit("#9e9385", 0.01, 0.1, 0.08), r=0.02)
    for i in range(cols):
        for j in range(rows):
            if rng.random() < 0.1:
                continue
            x, y = x0 + (i + 0.5) * cell, y0 + (j + 0.5) * cell
            c = cv.jit(col, 0.01, 0.15, 0.06)
            cv.ell(x, y, cell * 0.36, cell * 0.44, fill=c, outline=_shade(c, 0.65), width=0.006)
            if small:
                cv.dots(5, x - cell * 0.25, y - cell * 0.3, x + cell * 0.25, y + cell * 0.3, (80, 60, 40), 0.008, False)


def _m_bottles(cv, col):
    rng = cv.rng
    n = int(rng.integers(1, 4))
    w = 0.5 / n
    x0 = rng.uniform(0.15, 0.45 - 0.08 * n)
    for k in range(n):
        x = x0 + k * (w + 0.06)
        c = cv.jit(col)
        top = rng.uniform(0.35, 0.42)
        cv.rect(x, top, x + w, 0.9, fill=c, outline=_shade(c, 0.7), width=0.006, r=0.03)
        cv.rect(x + w * 0.35, top - 0.18, x + w * 0.65, top + 0.02, fill=c, outline=_shade(c, 0.7), width=0.004)
        cv.rect(x + w * 0.3, top - 0.23, x + w * 0.7, top - 0.17, fill=cv.jit("#e53935" if k % 2 else "#1e88e5"))
        cv.rect(x, top + 0.18, x + w, top + 0.32, fill=(250, 250, 250))
        cv.line([(x + w * 0.15, top + 0.05), (x + w * 0.15, 0.85)], _shade(c, 1.4), 0.012)


def _m_cans(cv, col):
    rng = cv.rng
    n = int(rng.integers(2, 5))
    w = 0.6 / n
    for k in range(n):
        x = 0.12 + k * (w + 0.03) + rng.uniform(-0.02, 0.02)
        y = rng.uniform(0.3, 0.45)
        c = cv.jit(col)
        cv.rect(x, y, x + w, y + w * 1.8, fill=c, outline=_shade(c, 0.7), width=0.005)
        cv.ell(x + w / 2, y, w / 2, 0.03, fill=(200, 200, 205), outline=(150, 150, 150), width=0.004)
        cv.rell(x + w / 2, y + w * 0.9, w * 0.3, w * 0.45, 0.3, fill=(250, 250, 250))


def _m_coffee_bag(cv, col):
    rng = cv.rng
    c = cv.jit(col)
    x = rng.uniform(0.22, 0.35)
    cv.poly([(x, 0.2), (x + 0.35, 0.2), (x + 0.4, 0.85), (x - 0.05, 0.85)], fill=c, outline=_shade(c, 0.6), width=0.006)
    cv.rect(x + 0.05, 0.4, x + 0.3, 0.6, fill=cv.jit("#efe6d0"))
    cv.ell(x + 0.175, 0.3, 0.025, 0.025, fill=_shade(c, 0.6))
    for _ in range(int(rng.integers(5, 12))):
        bx, by = rng.uniform(0.05, 0.95), rng.uniform(0.75, 0.95)
        bean = cv.jit("#4e342e")
        ang = rng.uniform(0, np.pi)
        cv.rell(bx, by, 0.03, 0.02, ang, fill=bean)
        p = _rotate(np.array([[-0.025, 0], [0.025, 0]]), ang) + (bx, by)
        cv.line(p, _shade(bean, 0.5), 0.005)


def _m_coffee_cups(cv, col):
    rng = cv.rng
    for x, y in cv.spots(int(rng.integers(1, 4)), 0.3):
        r = rng.uniform(0.11, 0.16)
        cv.ell(x, y, r * 1.35, r * 1.35, fill=cv.jit("#f5f5f5", 0, 0, 0.03), outline=(190, 190, 190), width=0.005)
        cv.ell(x, y, r, r, fill=(250, 250, 250), outline=(170, 170, 170), width=0.006)
        coffee = cv.jit(col)
        cv.ell(x, y, r * 0.8, r * 0.8, fill=coffee)
        cv.ell(x, y, r * 0.35, r * 0.25, fill=cv.jit("#d7b899"))
        cv.rect(x + r, y - 0.02, x + r + 0.06, y + 0.02, fill=(240, 240, 240), r=0.01)


def _m_tea_box(cv, col):
    rng = cv.rng
    c = cv.jit(col)
    x, y = rng.uniform(0.18, 0.3), rng.uniform(0.22, 0.32)
    cv.rect(x, y, x + 0.5, y + 0.45, fill=c, outline=_shade(c, 0.6), width=0.006)
    cv.poly([(x, y), (x + 0.5, y), (x + 0.6, y - 0.08), (x + 0.1, y - 0.08)], fill=_shade(c, 1.3))
    leaf = cv.jit("#8bc34a")
    cv.rell(x + 0.25, y + 0.22, 0.12, 0.05, -0.6, fill=leaf)
    cv.line([(x + 0.16, y + 0.29), (x + 0.34, y + 0.15)], _shade(leaf, 0.6), 0.006)
    for k in range(int(rng.integers(0, 3))):
        tx, ty = rng.uniform(0.15, 0.8), rng.uniform(0.78, 0.88)
        cv.rect(tx, ty, tx + 0.1, ty + 0.08, fill=(245, 240, 230), outline=(200, 190, 170), width=0.004)
        cv.line([(tx + 0.05, ty), (tx + 0.05, ty - 0.08)], (220, 220, 220), 0.004)


def _m_crisps(cv, col):
    rng = cv.rng
    c = cv.jit(col)
    x0, x1 = rng.uniform(0.15, 0.25), rng.uniform(0.75, 0.85)
    zig = np.linspace(x0, x1, 9)
    top = [(x, 0.15 + (0.03 if k % 2 else 0)) for k, x in enumerate(zig)]
    bottom = [(x, 0.85 - (0.03 if k % 2 else 0)) for k, x in enumerate(zig)][::-1]
    cv.poly(top + [(x1 + 0.03, 0.5)] + bottom + [(x0 - 0.03, 0.5)], fill=c, outline=_shade(c, 0.6), width=0.006)
    cv.ell(0.5, 0.55, 0.18, 0.12, fill=cv.jit("#fdd835"))
    for _ in range(4):
        cv.rell(rng.uniform(0.38, 0.62), rng.uniform(0.5, 0.62), 0.05, 0.03, rng.uniform(0, np.pi), fill=cv.jit("#f9a825"))
    cv.rect(0.3, 0.25, 0.7, 0.33, fill=(250, 250, 250), r=0.02)


def _m_cookies(cv, col):
    rng = cv.rng
    for x, y in cv.spots(int(rng.integers(3, 7)), 0.22):
        c = cv.jit(col)
        r = rng.uniform(0.09, 0.12)
        cv.ell(x, y, r, r, fill=c, outline=_shade(c, 0.75), width=0.006)
        cv.dots(6, x - r * 0.6, y - r * 0.6, x + r * 0.6, y + r * 0.6, (70, 40, 20), 0.012, False)


def _m_nuts(cv, col):
    rng = cv.rng
    cv.ell(0.5, 0.62, 0.38, 0.2, fill=cv.jit("#8d6e63"), outline=(80, 55, 40), width=0.01)
    for _ in range(int(rng.integers(25, 40))):
        x, y = 0.5 + rng.normal(0, 0.14), 0.5 + rng.normal(0, 0.07)
        c = cv.jit(col, 0.03, 0.2, 0.15)
        cv.rell(x, y, 0.035, 0.022, rng.uniform(0, np.pi), fill=c, outline=_shade(c, 0.7), width=0.003)


def _m_frozen_peas(cv, col):
    rng = cv.rng
    bag = cv.jit("#1e88e5")
    cv.rect(0.18, 0.15, 0.82, 0.88, fill=bag, outline=_shade(bag, 0.6), width=0.008, r=0.05)
    cv.dots(int(rng.integers(25, 40)), 0.28, 0.45, 0.72, 0.8, col, 0.028)
    cv.rect(0.28, 0.22, 0.72, 0.34, fill=(250, 250, 250), r=0.02)


def _m_ice_cream(cv, col):
    rng = cv.rng
    if rng.random() < 0.5:
        tub = cv.jit("#fafafa", 0, 0, 0.03)
        cv.poly([(0.22, 0.35), (0.78, 0.35), (0.72, 0.85), (0.28, 0.85)], fill=tub, outline=(170, 170, 190), width=0.006)
        cv.ell(0.5, 0.35, 0.28, 0.07, fill=cv.jit("#90caf9"))
        cv.ell(0.5, 0.58, 0.12, 0.1, fill=cv.jit(col))
    else:
        for x, y in cv.spots(int(rng.integers(1, 4)), 0.3):
            cv.poly([(x - 0.07, y), (x + 0.07, y), (x, y + 0.28)], fill=cv.jit("#d7a15e"))
            for k in range(int(rng.integers(1, 3))):
                cv.ell(x, y - 0.02 - k * 0.08, 0.08, 0.07, fill=cv.jit([col, "#f48fb1", "#795548"][k % 3]))


def _m_frozen_box(cv, col):
    rng = cv.rng
    c = cv.jit(col)
    x, y = rng.uniform(0.1, 0.2), rng.uniform(0.2, 0.3)
    cv.rect(x, y, x + 0.7, y + 0.5, fill=c, outline=_shade(c, 0.6), width=0.008)
    cv.ell(x + 0.35, y + 0.27, 0.2, 0.17, fill=cv.jit("#ffcc80"))
    cv.dots(8, x + 0.22, y + 0.15, x + 0.48, y + 0.38, cv.jit("#e53935"), 0.025, False)
    cv.dots(20, x, y, x + 0.7, y + 0.5, (235, 245, 255), 0.008, False)


def _m_ice_cubes(cv, col):
    rng = cv.rng
    for x, y in cv.spots(int(rng.integers(4, 9)), 0.2):
        s = rng.uniform(0.07, 0.1)
        c = cv.jit(col, 0.02, 0.3, 0.04)
        pts = _rotate(np.array([[-s, -s], [s, -s], [s, s], [-s, s]]), rng.uniform(0, np.pi / 2)) + (x, y)
        cv.poly(pts, fill=c, outline=(110, 160, 205), width=0.008)
        cv.line([pts[0] * 0.7 + pts[2] * 0.3, pts[0] * 0.5 + pts[2] * 0.5], (255, 255, 255), 0.01)


def _m_spaghetti(cv, col):
    rng = cv.rng
    ang = rng.uniform(-0.6, 0.6)
    cx, cy = rng.uniform(0.4, 0.6), rng.uniform(0.4, 0.6)
    for _ in range(int(rng.integers(25, 40))):
        off = rng.normal(0, 0.06)
        p = _rotate(np.array([[-0.38, off], [0.38, off + rng.normal(0, 0.01)]]), ang) + (cx, cy)
        cv.line(p, cv.jit(col, 0.01, 0.1, 0.08), 0.008)
    band = _rotate(np.array([[-0.06, -0.12], [0.06, -0.12], [0.06, 0.12], [-0.06, 0.12]]), ang) + (cx, cy)
    cv.poly(band, fill=cv.jit("#1565c0"))


def _m_pasta(cv, col):
    rng = cv.rng
    for _ in range(int(rng.integers(14, 24))):
        x, y = rng.uniform(0.15, 0.85), rng.uniform(0.2, 0.85)
        c = cv.jit(col)
        ang = rng.uniform(0, np.pi)
        pts = _rotate(np.array([[-0.07, -0.025], [0.05, -0.025], [0.07, 0.025], [-0.05, 0.025]]), ang) + (x, y)
        cv.poly(pts, fill=c, outline=_shade(c, 0.75), width=0.004)


def _m_rice_bag(cv, col):
    rng = cv.rng
    c = cv.jit(col, 0, 0.1, 0.03)
    x = rng.uniform(0.2, 0.3)
    cv.rect(x, 0.18, x + 0.45, 0.85, fill=c, outline=(170, 160, 140), width=0.006, r=0.04)
    cv.rect(x, 0.4, x + 0.45, 0.55, fill=cv.jit("#c62828" if rng.random() < 0.5 else "#2e7d32"))
    for _ in range(40):
        gx, gy = rng.uniform(0.05, 0.95), rng.uniform(0.87, 0.97)
        cv.rell(gx, gy, 0.012, 0.005, rng.uniform(0, np.pi), fill=(245, 242, 230))


def _m_jars(cv, col):
    rng = cv.rng
    n = int(rng.integers(1, 4))
    w = 0.55 / n
    for k in range(n):
        x = 0.15 + k * (w + 0.05) + rng.uniform(-0.02, 0.02)
        y = rng.uniform(0.3, 0.42)
        c = cv.jit(col)
        cv.rect(x, y, x + w, 0.88, fill=c, outline=_shade(c, 0.7), width=0.006, r=0.03)
        cv.rect(x - 0.01, y - 0.06, x + w + 0.01, y + 0.01, fill=cv.jit("#bdbdbd"), r=0.01)
        cv.rect(x + w * 0.1, y + 0.15, x + w * 0.9, y + 0.3, fill=cv.jit("#fff8e1"))


def _m_spice_heaps(cv, col):
    rng = cv.rng
    for x, y in cv.spots(int(rng.integers(1, 4)), 0.3):
        c = cv.jit(col, 0.03, 0.1, 0.1)
        r = rng.uniform(0.13, 0.2)
        cv.d.pieslice([(x - r) * cv.S, (y - r * 0.6) * cv.S, (x + r) * cv.S, (y + r * 0.6) * cv.S], 180, 360, fill=c)
        cv.rect(x - r, y - 0.005, x + r, y + 0.02, fill=c)
        cv.dots(12, x - r * 0.7, y - r * 0.4, x + r * 0.7, y, _shade(c, 0.8), 0.006, False)


def _m_cinnamon(cv, col):
    rng = cv.rng
    ang0 = rng.uniform(0, np.pi)
    for k in range(int(rng.integers(3, 7))):
        x, y = 0.5 + rng.uniform(-0.15, 0.15), 0.5 + rng.uniform(-0.2, 0.2)
        c = cv.jit(col)
        ang = ang0 + rng.uniform(-0.2, 0.2)
        pts = _rotate(np.array([[-0.3, -0.035], [0.3, -0.035], [0.3, 0.035], [-0.3, 0.035]]), ang) + (x, y)
        cv.poly(pts, fill=c, outline=_shade(c, 0.6), width=0.006)
        end = _rotate(np.array([[0.3, 0.0]]), ang)[0] + (x, y)
        cv.ell(end[0], end[1], 0.03, 0.035, fill=_shade(c, 0.7))


def _m_peppercorns(cv, col):
    rng = cv.rng
    cv.ell(0.5, 0.55, 0.32, 0.26, fill=cv.jit("#d7ccc8"), outline=(120, 100, 90), width=0.01)
    for _ in range(int(rng.integers(40, 70))):
        x, y = 0.5 + rng.normal(0, 0.1), 0.55 + rng.normal(0, 0.08)
        c = cv.jit("#3e2723" if rng.random() < 0.7 else col, 0.02, 0.2, 0.3)
        cv.ell(x, y, 0.016, 0.016, fill=c)


def _m_baby_bottle(cv, col):
    rng = cv.rng
    for k in range(int(rng.integers(1, 3))):
        x = rng.uniform(0.25, 0.4) + 0.25 * k
        c = cv.jit(col)
        body = (245, 248, 252)
        cv.rect(x - 0.09, 0.4, x + 0.09, 0.88, fill=body, outline=(170, 180, 200), width=0.006, r=0.04)
        cv.rect(x - 0.09, 0.6, x + 0.09, 0.88, fill=_shade(c, 1.5), r=0.04)
        cv.rect(x - 0.1, 0.32, x + 0.1, 0.41, fill=c)
        cv.ell(x, 0.27, 0.045, 0.07, fill=cv.jit("#ffe0b2"))
        for t in (0.5, 0.6, 0.7):
            cv.line([(x - 0.08, t), (x - 0.03, t)], (150, 160, 180), 0.005)
    for _ in range(int(rng.integers(2, 6))):
        sx, sy = rng.uniform(0.1, 0.9), rng.uniform(0.08, 0.25)
        cv.poly(_rotate(np.array([[0, -0.03], [0.01, -0.005], [0.03, 0], [0.01, 0.005], [0, 0.03], [-0.01, 0.005],
                                  [-0.03, 0], [-0.01, -0.005]]), 0) + (sx, sy), fill=cv.jit("#fff59d"))


def _m_nappies(cv, col):
    c = cv.jit(col)
    cv.rect(0.15, 0.2, 0.85, 0.85, fill=c, outline=_shade(c, 0.7), width=0.008, r=0.05)
    cv.ell(0.5, 0.52, 0.2, 0.15, fill=(250, 250, 250))
    cv.rect(0.37, 0.42, 0.63, 0.6, fill=(250, 250, 250), r=0.04)
    cv.rect(0.34, 0.44, 0.4, 0.5, fill=cv.jit("#f8bbd0"))
    cv.rect(0.6, 0.44, 0.66, 0.5, fill=cv.jit("#f8bbd0"))
    cv.dots(6, 0.2, 0.25, 0.8, 0.35, (255, 255, 255), 0.015, False)


def _m_pouches(cv, col):
    rng = cv.rng
    for x, y in cv.spots(int(rng.integers(1, 4)), 0.32):
        c = cv.jit(col)
        cv.poly([(x - 0.1, y - 0.12), (x + 0.1, y - 0.12), (x + 0.12, y + 0.22), (x - 0.12, y + 0.22)], fill=c,
                outline=_shade(c, 0.7), width=0.005)
        cv.rect(x - 0.03, y - 0.2, x + 0.03, y - 0.12, fill=cv.jit("#4fc3f7"))
        cv.ell(x, y + 0.05, 0.06, 0.06, fill=(255, 250, 245))


def _m_spray(cv, col):
    rng = cv.rng
    x = rng.uniform(0.3, 0.45)
    c = cv.jit(col)
    cv.rect(x, 0.4, x + 0.28, 0.9, fill=c, outline=_shade(c, 0.6), width=0.006, r=0.04)
    cv.rect(x + 0.08, 0.3, x + 0.2, 0.4, fill=(245, 245, 245))
    trig = cv.jit("#fafafa", 0, 0, 0.03)
    cv.poly([(x + 0.04, 0.18), (x + 0.26, 0.18), (x + 0.26, 0.3), (x + 0.04, 0.3), (x - 0.04, 0.22)], fill=trig,
            outline=(160, 160, 160), width=0.004)
    cv.rect(x + 0.04, 0.55, x + 0.24, 0.72, fill=(250, 250, 250))
    cv.dots(5, x - 0.2, 0.15, x - 0.05, 0.3, _shade(c, 1.5), 0.01, False)


def _m_detergent(cv, col):
    rng = cv.rng
    x = rng.uniform(0.2, 0.3)
    c = cv.jit(col)
    cv.rect(x, 0.3, x + 0.5, 0.9, fill=c, outline=_shade(c, 0.6), width=0.008, r=0.06)
    cv.rect(x + 0.3, 0.33, x + 0.44, 0.5, fill=cv.jit("#eceff1"), r=0.03)
    cv.rect(x + 0.05, 0.2, x + 0.2, 0.31, fill=cv.jit("#1565c0"), r=0.02)
    cv.rect(x + 0.07, 0.58, x + 0.43, 0.78, fill=(250, 250, 250), r=0.02)


def _m_sponges(cv, col):
    rng = cv.rng
    for x, y in cv.spots(int(rng.integers(2, 5)), 0.3):
        c = cv.jit(col)
        w, h = rng.uniform(0.12, 0.16), rng.uniform(0.07, 0.09)
        cv.rect(x - w, y - h * 0.3, x + w, y + h, fill=c, outline=_shade(c, 0.7), width=0.004)
        cv.rect(x - w, y - h, x + w, y - h * 0.3, fill=cv.jit("#2e7d32"))
        cv.dots(6, x - w, y, x + w, y + h, _shade(c, 0.8), 0.006, False)


def _m_toilet_rolls(cv, col):
    rng = cv.rng
    n = int(rng.integers(2, 4))
    r = 0.26 / n + 0.04
    for i in range(n):
        for j in range(2):
            x, y = 0.5 + (i - (n - 1) / 2) * 2.05 * r, 0.35 + j * 0.32
            c = cv.jit(col, 0, 0.1, 0.03)
            cv.rect(x - r, y, x + r, y + 0.26, fill=_shade(c, 0.93), outline=(180, 180, 180), width=0.004)
            cv.ell(x, y, r, r * 0.35, fill=c, outline=(180, 180, 180), width=0.004)
            cv.ell(x, y, r * 0.3, r * 0.12, fill=(180, 160, 130))


def _m_toothpaste(cv, col):
    rng = cv.rng
    for k in range(int(rng.integers(1, 3))):
        y = 0.35 + 0.25 * k + rng.uniform(-0.03, 0.03)
        c = cv.jit(col)
        cv.poly([(0.15, y - 0.08), (0.7, y - 0.06), (0.7, y + 0.06), (0.15, y + 0.08)], fill=(250, 250, 250),
                outline=(180, 180, 180), width=0.005)
        cv.rect(0.15, y - 0.05, 0.55, y + 0.05, fill=c)
        cv.rect(0.7, y - 0.04, 0.8, y + 0.04, fill=_shade(c, 0.7), r=0.01)
        cv.line([(0.2, y), (0.45, y)], (250, 250, 250), 0.01)


def _m_pump_bottle(cv, col):
    rng = cv.rng
    n = int(rng.integers(1, 3))
    for k in range(n):
        x = 0.3 + 0.3 * k + rng.uniform(-0.05, 0.05) if n > 1 else rng.uniform(0.4, 0.6)
        c = cv.jit(col)
        cv.rect(x - 0.12, 0.4, x + 0.12, 0.9, fill=c, outline=_shade(c, 0.7), width=0.006, r=0.06)
        cv.rect(x - 0.025, 0.25, x + 0.025, 0.4, fill=(245, 245, 245))
        cv.rect(x - 0.1, 0.22, x + 0.04, 0.27, fill=(245, 245, 245), r=0.015)
        cv.rect(x - 0.08, 0.55, x + 0.08, 0.7, fill=_shade(c, 1.5), r=0.02)


def _m_soap(cv, col):
    rng = cv.rng
    for x, y in cv.spots(int(rng.integers(1, 4)), 0.32):
        c = cv.jit(col)
        w, h = rng.uniform(0.13, 0.17), rng.uniform(0.08, 0.1)
        cv.rect(x - w, y - h, x + w, y + h, fill=c, outline=_shade(c, 0.8), width=0.005, r=0.05)
        cv.rell(x - w * 0.3, y - h * 0.3, w * 0.4, h * 0.25, 0.0, fill=_shade(c, 1.35))
    for _ in range(int(rng.integers(3, 8))):
        bx, by, r = rng.uniform(0.1, 0.9), rng.uniform(0.1, 0.9), rng.uniform(0.015, 0.04)
        cv.ell(bx, by, r, r, outline=(230, 230, 240), width=0.005)


def _m_kibble(cv, col):
    rng = cv.rng
    bowl = cv.jit("#e53935" if rng.random() < 0.5 else "#1e88e5")
    cv.ell(0.5, 0.65, 0.4, 0.2, fill=bowl, outline=_shade(bowl, 0.6), width=0.01)
    cv.ell(0.5, 0.58, 0.34, 0.13, fill=_shade(bowl, 0.7))
    for _ in range(int(rng.integers(35, 55))):
        x, y = 0.5 + rng.normal(0, 0.12), 0.53 + rng.normal(0, 0.05)
        c = cv.jit(col, 0.03, 0.2, 0.2)
        cv.rell(x, y, 0.025, 0.018, rng.uniform(0, np.pi), fill=c, outline=_shade(c, 0.6), width=0.003)


def _m_bones(cv, col):
    rng = cv.rng
    for x, y in cv.spots(int(rng.integers(1, 4)), 0.3):
        c = cv.jit(col)
        ang = rng.uniform(0, np.pi)
        L = rng.uniform(0.18, 0.26)
        p = _rotate(np.array([[-L, 0], [L, 0]]), ang) + (x, y)
        for end in p:
            for s in (-1, 1):
                o = _rotate(np.array([[0, s * 0.05]]), ang)[0]
                cv.ell(end[0] + o[0], end[1] + o[1], 0.058, 0.058, fill=c, outline=_shade(c, 0.7), width=0.006)
        cv.line(p, c, 0.09)
    cv.dots(4, 0.05, 0.05, 0.95, 0.2, cv.jit("#8d6e63"), 0.02)


def _m_pet_tins(cv, col):
    rng = cv.rng
    n = int(rng.integers(2, 4))
    for k in range(n):
        x = 0.2 + k * 0.6 / n + rng.uniform(-0.02, 0.02)
        y = rng.uniform(0.45, 0.55)
        c = cv.jit(col)
        cv.rect(x - 0.09, y - 0.1, x + 0.09, y + 0.15, fill=c, outline=_shade(c, 0.6), width=0.005)
        cv.ell(x, y - 0.1, 0.09, 0.03, fill=(200, 200, 205))
        paw = (250, 250, 250)
        cv.ell(x, y + 0.05, 0.03, 0.025, fill=paw)
        for dx in (-0.03, 0, 0.03):
            cv.ell(x + dx, y + 0.005, 0.012, 0.012, fill=paw)


def _flower(cv, x, y, r, color, n=8):
    for k in range(n):
        a = 2 * np.pi * k / n
        cv.ell(x + r * math.cos(a), y + r * math.sin(a), r * 0.6, r * 0.6, fill=color)


def _m_bouquet(cv, col):
    rng = cv.rng
    base = (rng.uniform(0.45, 0.55), 0.92)
    heads = [(rng.uniform(0.2, 0.8), rng.uniform(0.15, 0.5)) for _ in range(int(rng.integers(4, 8)))]
    for hx, hy in heads:
        cv.line([base, (hx, hy)], cv.jit("#388e3c"), 0.012)
    cv.rell(base[0] - 0.1, 0.75, 0.1, 0.04, -0.8, fill=cv.jit("#66bb6a"))
    for hx, hy in heads:
        c = cv.jit(col[int(rng.integers(len(col)))] if isinstance(col, tuple) else col)
        _flower(cv, hx, hy, rng.uniform(0.04, 0.06), c, n=int(rng.integers(5, 9)))
        cv.ell(hx, hy, 0.025, 0.025, fill=_shade(c, 0.6))
    cv.poly([(base[0] - 0.12, 0.7), (base[0] + 0.12, 0.7), (base[0] + 0.05, 0.95), (base[0] - 0.05, 0.95)], fill=cv.jit("#f5f0e1"))


def _m_sunflowers(cv, col):
    rng = cv.rng
    for x, y in cv.spots(int(rng.integers(1, 4)), 0.3):
        r = rng.uniform(0.08, 0.12)
        cv.line([(x, y), (x + rng.uniform(-0.05, 0.05), 1.0)], cv.jit("#388e3c"), 0.015)
        petal = cv.jit(col)
        for k in range(12):
            a = 2 * np.pi * k / 12
            cv.rell(x + r * 1.1 * math.cos(a), y + r * 1.1 * math.sin(a), r * 0.6, r * 0.22, a, fill=petal, n=12)
        cv.ell(x, y, r * 0.8, r * 0.8, fill=cv.jit("#5d4037"))


def _m_orchid(cv, col):
    rng = cv.rng
    x = rng.uniform(0.4, 0.6)
    pot = cv.jit("#d84315")
    cv.poly([(x - 0.15, 0.65), (x + 0.15, 0.65), (x + 0.11, 0.92), (x - 0.11, 0.92)], fill=pot, outline=_shade(pot, 0.7), width=0.005)
    cv.rell(x - 0.1, 0.62, 0.12, 0.04, 0.3, fill=cv.jit("#2e7d32"))
    cv.rell(x + 0.1, 0.62, 0.12, 0.04, -0.3, fill=cv.jit("#2e7d32"))
    cv.line([(x, 0.65), (x + 0.02, 0.15)], cv.jit("#33691e"), 0.01)
    for k in range(int(rng.integers(3, 6))):
        fy = 0.18 + k * 0.09
        fx = x + 0.02 + rng.uniform(-0.12, 0.12)
        c = cv.jit(col)
        _flower(cv, fx, fy, 0.04, c, n=5)
        cv.ell(fx, fy, 0.015, 0.015, fill=cv.jit("#fff176"))


def _m_salami(cv, col):
    rng = cv.rng
    for x, y in cv.spots(int(rng.integers(4, 9)), 0.22):
        c = cv.jit(col)
        r = rng.uniform(0.09, 0.12)
        cv.ell(x, y, r, r, fill=c, outline=_shade(c, 0.6), width=0.006)
        cv.dots(9, x - r * 0.65, y - r * 0.65, x + r * 0.65, y + r * 0.65, (245, 230, 215), 0.01, False)


def _m_ham(cv, col):
    rng = cv.rng
    for x, y in cv.spots(int(rng.integers(2, 5)), 0.3):
        c = cv.jit(col)
        pts = _blob(cv, x, y, rng.uniform(0.13, 0.17), 10)
        cv.poly(pts, fill=c, outline=_shade(c, 1.3), width=0.015)
        cv.line([(x - 0.06, y), (x + 0.06, y + 0.02)], _shade(c, 0.85), 0.008)


def _m_olives(cv, col):
    rng = cv.rng
    bowl = cv.jit("#fafafa" if rng.random() < 0.5 else "#bcaaa4", 0, 0.1, 0.03)
    cv.ell(0.5, 0.55, 0.38, 0.3, fill=bowl, outline=_shade(bowl, 0.7), width=0.01)
    for _ in range(int(rng.integers(14, 24))):
        x, y = 0.5 + rng.normal(0, 0.12), 0.55 + rng.normal(0, 0.09)
        c = cv.jit(col)
        cv.rell(x, y, 0.045, 0.032, rng.uniform(0, np.pi), fill=c, outline=_shade(c, 0.6), width=0.004)
        cv.ell(x - 0.012, y - 0.01, 0.01, 0.007, fill=_shade(c, 1.5))


_MOTIFS = {name[3:]: fn for name, fn in globals().items() if name.startswith("_m_")}
_MOTIFS["citrus"] = lambda cv, col: _m_round_fruit(cv, col, citrus=True)
_MOTIFS["quail_eggs"] = lambda cv, col: _m_eggs(cv, col, small=True)


def _draw_clean(seed: int, i: int, px: int, a: dict | None = None) -> Image.Image:
    a = a if a is not None else _one(seed, i)
    cat = _CATALOGUE[a["category"]]
    product = cat.products[a["product"]]
    cv = _Canvas(2 * px, _rng(seed, KIND_IMAGE, i))
    _background(cv, cat.backgrounds, _TEXTURE.get(cat.name))
    colors = product.colors
    _MOTIFS[product.motif](cv, colors if len(colors) > 1 else colors[0])
    return cv.img.reduce(2)


def _degrade(img: Image.Image, seed: int, i: int) -> Image.Image:
    """blurred_image: heavy blur washed out towards a flat colour, or a nearly blank frame."""
    rng = _rng(seed, KIND_IMAGE, i + (1 << 40))
    px = img.size[0]
    flat = tuple(int(v) for v in rng.integers(150, 245, 3))
    if rng.random() < 0.5:
        blurred = img.filter(ImageFilter.GaussianBlur(radius=px * 0.18))
        return Image.blend(blurred, Image.new("RGB", img.size, flat), float(rng.uniform(0.55, 0.75)))
    noise = rng.normal(0, 4, (px, px, 3))
    return Image.fromarray(np.clip(np.asarray(flat, dtype=np.float64) + noise, 0, 255).astype(np.uint8))


def render_item_image(world, i: int, attrs=None) -> Image.Image:
    """The listed picture of item ``i`` (PIL RGB, image_px square), defects applied."""
    attrs = attrs if attrs is not None else item_attributes(world, np.array([i])).iloc[0]
    source = int(attrs.source_index) if attrs.defect == "image_swap" else int(i)
    img = _draw_clean(world.seed, source, world.image_px, None if source != i else _clean_of_row(attrs))
    if attrs.defect == "blurred_image":
        img = _degrade(img, world.seed, int(i))
    return img


def encode_image(img: Image.Image, png: bool) -> bytes:
    buf = io.BytesIO()
    if png:
        img.save(buf, format="PNG", optimize=False)
    else:
        img.save(buf, format="JPEG", quality=88)
    return buf.getvalue()


def item_image(world, i: int) -> bytes:
    """Encoded bytes (JPEG, or PNG for about PNG_SHARE of items) of item ``i``'s listed picture."""
    png = bool(_u(world.seed, KIND_ITEM, i, 0, _F_PNG) < PNG_SHARE)
    return encode_image(render_item_image(world, i), png)


# ----------------------------------------------------------------------------------------------
# Tables as pandas frames, for any slice of indices.
# ----------------------------------------------------------------------------------------------

def _day0(world) -> np.datetime64:
    return np.datetime64(world.run_date, "s")


def items_frame(world, idx, images: bool = True) -> pd.DataFrame:
    """Rows of the ``items`` table (contract columns) for item indices ``idx``."""
    idx = np.asarray(idx, dtype=np.int64)
    a = item_attributes(world, idx)
    titles, descriptions, blobs = [], [], []
    png = _u(world.seed, KIND_ITEM, idx, 0, _F_PNG) < PNG_SHARE
    for k, row in enumerate(a.itertuples(index=False)):
        title, description = item_text(world, int(row.index), row)
        titles.append(title)
        descriptions.append(description)
        if images:
            blobs.append(encode_image(render_item_image(world, int(row.index), row), bool(png[k])))
    return pd.DataFrame({
        "item_id": a["item_id"],
        "merchant_id": merchant_id(a["merchant"].to_numpy()),
        "category": np.asarray(CATEGORIES, dtype=object)[a["listed_category"].to_numpy()],
        "title": titles,
        "description": descriptions,
        "image": blobs if images else [None] * len(a),
        "price": a["price"].astype(np.float64),
        "updated_at": a["updated_at"].astype("datetime64[us]"),
    })


def truth_items_frame(world, idx) -> pd.DataFrame:
    a = item_attributes(world, idx)
    source = a["source_index"].to_numpy()
    return pd.DataFrame({
        "item_id": a["item_id"],
        "true_category": np.asarray(CATEGORIES, dtype=object)[a["true_category"].to_numpy()],
        "defect": a["defect"].astype(object),
        "source_item_id": [item_id(s) if s >= 0 else None for s in source],
    })


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


def users_frame(world, idx) -> pd.DataFrame:
    return user_attributes(world, idx)[["user_id", "age_band", "household", "zone"]].reset_index(drop=True)


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


# ----------------------------------------------------------------------------------------------
# AUC (the Bayes-optimal one is the AUC of p_buy against the bought draws).
# ----------------------------------------------------------------------------------------------

def auc(scores, labels) -> float:
    """ROC AUC with ties counted as one half (Mann-Whitney)."""
    scores, labels = np.asarray(scores, dtype=np.float64), np.asarray(labels).astype(bool)
    n_pos, n_neg = labels.sum(), (~labels).sum()
    if n_pos == 0 or n_neg == 0:
        return float("nan")
    ranks = pd.Series(scores).rank(method="average").to_numpy()
    return float((ranks[labels].sum() - n_pos * (n_pos + 1) / 2) / (n_pos * n_neg))


def auc_from_counts(pos: np.ndarray, neg: np.ndarray) -> float:
    """AUC from per-bin counts of positives and negatives, bins in increasing score order."""
    pos, neg = np.asarray(pos, dtype=np.float64), np.asarray(neg, dtype=np.float64)
    neg_below = np.cumsum(neg) - neg
    total = pos.sum() * neg.sum()
    return float(((pos * neg_below).sum() + 0.5 * (pos * neg).sum()) / total) if total else float("nan")


# ----------------------------------------------------------------------------------------------
# A contact sheet: example pictures of every category, plus the image defects.
# ----------------------------------------------------------------------------------------------

def contact_sheet(world, path, per_category: int = 8, with_defects: bool = True) -> str:
    px = world.image_px
    label_w = 110
    rows = list(range(N_CATEGORIES)) + (["blurred_image", "image_swap"] if with_defects else [])
    sheet = Image.new("RGB", (label_w + per_category * (px + 4), len(rows) * (px + 4)), (255, 255, 255))
    draw = ImageDraw.Draw(sheet)
    attrs = item_attributes(world, np.arange(world.n_items))
    for r, row in enumerate(rows):
        if isinstance(row, int):
            pick = attrs[(attrs.true_category == row) & (attrs.defect == "none")].head(per_category)
            label = CATEGORIES[row]
        else:
            pick = attrs[attrs.defect == row].head(per_category)
            label = row
        draw.text((4, r * (px + 4) + px // 2 - 6), label, fill=(0, 0, 0))
        for k, a in enumerate(pick.itertuples(index=False)):
            sheet.paste(render_item_image(world, int(a.index), a), (label_w + k * (px + 4), r * (px + 4)))
    sheet.save(path)
    return str(path)


def _main(argv=None) -> int:
    import argparse

    from camenn.config import default_config_path, load_config

    parser = argparse.ArgumentParser(description="The synthetic world's generator (no Spark).")
    parser.add_argument("--conf", default=str(default_config_path()))
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE")
    parser.add_argument("--contact-sheet", metavar="PNG", help="draw example images of every category into PNG")
    parser.add_argument("--per-category", type=int, default=8)
    args = parser.parse_args(argv)
    config = load_config(args.conf, args.set)
    if args.contact_sheet:
        world = config.world.model_copy(update={"n_items": min(config.world.n_items, 4000)})
        print(contact_sheet(world, args.contact_sheet, args.per_category))
    return 0


if __name__ == "__main__":
    raise SystemExit(_main())
