"""The catalogue: categories, products and their words, ids, and what each item truly is.

Item ``i`` has true category ``i % N_CATEGORIES`` (the items of category ``c`` are ``c, c + C,
c + 2C, ...``); its product, size, tags (organic / eco, local, bestseller, premium, value) and
price are drawn from the item's own hash fields (``_F_*``, listed once here so that no two fields
share a stream) by :func:`_clean_attributes`, and its own title and description by
:func:`_clean_text`. This is the item before any planted defect: what a listing shows is decided
in :mod:`synthetic.defects` (``item_attributes``, ``item_text``).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from synthetic.randomness import KIND_ITEM, _normal, _pick, _u

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


# ----------------------------------------------------------------------------------------------
# Ids, and the items of a category.
# ----------------------------------------------------------------------------------------------

def item_id(i) -> np.ndarray | str:
    return f"it{int(i):09d}" if np.isscalar(i) else np.char.add("it", np.char.zfill(np.asarray(i).astype(str), 9))


def user_id(u) -> np.ndarray | str:
    return f"u{int(u):08d}" if np.isscalar(u) else np.char.add("u", np.char.zfill(np.asarray(u).astype(str), 8))


def merchant_id(m) -> np.ndarray | str:
    return f"m{int(m):06d}" if np.isscalar(m) else np.char.add("m", np.char.zfill(np.asarray(m).astype(str), 6))


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
