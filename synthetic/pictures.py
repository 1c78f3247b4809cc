"""The pictures: each item's listed image, drawn from its product's motif on its category's background.

A canvas (:class:`_Canvas`) draws at twice the size and is reduced, for smooth edges; the
background carries the category's colours and texture, then one motif function per kind of
product (``_m_*``) draws it with the item's own random stream (``_rng(seed, KIND_IMAGE, i)``).
:func:`render_item_image` applies the picture defects (image_swap, blurred_image),
:func:`encode_image` writes JPEG or PNG, :func:`contact_sheet` draws examples of every category.

One file of ~1,000 lines because of the ~70 motif functions, one small function per kind of
product picture, all drawing on the one canvas and palette above them: split by category, each
file would import the same private helpers and a reader would lose the side-by-side view that
keeps the motifs of look-alike products (a cauliflower, a cabbage) apart.
"""

from __future__ import annotations

import colorsys
import io
import math

import numpy as np
from PIL import Image, ImageColor, ImageDraw

from synthetic.catalogue import _CATALOGUE, _F_PNG, CATEGORIES, N_CATEGORIES, _clean_of_row, _one
from synthetic.defects import _degrade, item_attributes
from synthetic.randomness import KIND_IMAGE, KIND_ITEM, _rng, _u

PNG_SHARE = 0.15           # share of images encoded as PNG (the rest JPEG)

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
    for _ in range(int(rng.integers(3, 7))):
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
    for _ in range(int(rng.integers(0, 3))):
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
    for _ in range(int(rng.integers(3, 7))):
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


def render_item_image(world, i: int, attrs=None) -> Image.Image:
    """The listed picture of item ``i`` (PIL RGB, image_px square), defects applied."""
    attrs = attrs if attrs is not None else next(item_attributes(world, np.array([i])).itertuples(index=False))
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
