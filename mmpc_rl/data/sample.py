"""A small generated catalog in the exact Amazon Reviews 2023 raw schema, for demos and tests (nothing binary kept).

Three categories, 72 items each (64 eligible), with a JPEG per item whose fill colour follows the colour word of the
title and whose shape follows the product noun, so an image->title model has something real to learn. Reviews give
~120 users per category 8-20 reviews each, mostly rated >= 4, clustered by taste, so the RecBench filters of the
authors' process_all.py (users >= 8, items >= 1) leave a small recommender dataset.
"""

from __future__ import annotations

import io
import json
import random
import zlib
from pathlib import Path

from mmpc_rl.io import atomic_write_bytes, atomic_write_json, atomic_write_jsonl

SAMPLE_CATEGORIES = ("All_Beauty", "Video_Games", "Toys_and_Games")
MARKER = ".sample-complete.json"
VERSION = 1
ITEMS_PER_CATEGORY = 72
USERS_PER_CATEGORY = 120

COLOURS = {
    "Red": (200, 30, 40), "Blue": (30, 70, 200), "Green": (40, 160, 60), "Yellow": (235, 205, 40),
    "Purple": (120, 50, 160), "Orange": (240, 130, 30), "Pink": (240, 120, 170), "Black": (25, 25, 25),
    "White": (245, 245, 245), "Teal": (20, 150, 150),
}
# noun -> shape drawn; several nouns share a shape so shape alone does not give the title away
VOCAB = {
    "All_Beauty": {
        "main_category": "All Beauty",
        "brands": ["Lumiere", "Velvetine", "PureGlow", "Aurelia", "Bloom & Co", "Nordic Skin"],
        "adjectives": ["Hydrating", "Matte", "Organic", "Long-Lasting", "Vegan", "Lightweight", "Nourishing"],
        "nouns": {"Lipstick": "rectangle", "Nail Polish": "bottle", "Face Cream": "circle",
                  "Eyeshadow Palette": "grid", "Perfume": "bottle", "Hair Brush": "ellipse",
                  "Compact Mirror": "circle", "Mascara": "rectangle"},
        "attributes": ["1.7 fl oz", "Pack of 2", "for Sensitive Skin", "Cruelty Free", "with SPF 30", "Travel Size"],
        "categories": ["Beauty & Personal Care", "Makeup"],
    },
    "Video_Games": {
        "main_category": "Video Games",
        "brands": ["PixelForge", "Nintendo", "HyperX", "Razor Byte", "Turtle Beach", "PowerA"],
        "adjectives": ["Wireless", "Rechargeable", "Ergonomic", "RGB", "Pro", "Compact", "Limited Edition"],
        "nouns": {"Controller": "ellipse", "Headset": "arc", "Gaming Mouse": "ellipse", "Keyboard": "grid",
                  "Charging Dock": "rectangle", "Memory Card": "rectangle", "Steering Wheel": "circle",
                  "Carrying Case": "rectangle"},
        "attributes": ["for PS5", "for Nintendo Switch", "for Xbox Series X", "for PC", "with USB-C", "2-Pack"],
        "categories": ["Video Games", "Accessories"],
    },
    "Toys_and_Games": {
        "main_category": "Toys & Games",
        "brands": ["FunWorks", "LEGO", "Melissa & Doug", "Hasbro", "KidCraft", "Tiny Tots"],
        "adjectives": ["Wooden", "Plush", "Educational", "Magnetic", "Deluxe", "Classic", "Foldable"],
        "nouns": {"Building Blocks": "grid", "Teddy Bear": "circle", "Puzzle": "grid", "Kite": "triangle",
                  "Race Car": "rectangle", "Board Game": "rectangle", "Beach Ball": "circle", "Rocket": "triangle"},
        "attributes": ["for Ages 3+", "100 Pieces", "Set of 6", "for Toddlers", "with Storage Bag", "Travel Size"],
        "categories": ["Toys & Games", "Games & Accessories"],
    },
}
REVIEW_TITLES = ["Five Stars", "Love it", "Great value", "Works as described", "Nice quality", "Not bad",
                 "Disappointed", "My kids love it", "Perfect gift", "Would buy again"]
REVIEW_TEXTS = ["Exactly what I needed.", "The colour is just like the picture.", "Arrived quickly and well packed.",
                "Good quality for the price.", "Stopped working after a month.", "Better than I expected!",
                "Smaller than I thought but still nice.", "Highly recommend this to anyone."]
_ALNUM = "ABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789"


def _rng(seed: int, *keys: str) -> random.Random:
    # str hashes are salted per process; crc32 keeps the catalog identical across runs
    return random.Random(seed * 1_000_003 + zlib.crc32("/".join(keys).encode()))


def draw_image(colour: str, shape: str, size: tuple[int, int], rng: random.Random) -> bytes:
    """A JPEG of `shape` filled with `colour` on a pale background (deterministic for the rng state)."""
    from PIL import Image, ImageDraw

    w, h = size
    bg = tuple(rng.randint(215, 250) for _ in range(3))
    img = Image.new("RGB", (w, h), bg)
    d = ImageDraw.Draw(img)
    fill, outline = COLOURS[colour], (60, 60, 60)
    m = int(min(w, h) * rng.uniform(0.12, 0.2))
    box = (m, m, w - m, h - m)
    if shape == "circle":
        r = min(w, h) // 2 - m
        d.ellipse((w // 2 - r, h // 2 - r, w // 2 + r, h // 2 + r), fill=fill, outline=outline, width=3)
    elif shape == "ellipse":
        d.ellipse((m, h // 4, w - m, 3 * h // 4), fill=fill, outline=outline, width=3)
    elif shape == "rectangle":
        d.rectangle((w // 4, m, 3 * w // 4, h - m), fill=fill, outline=outline, width=3)
    elif shape == "triangle":
        d.polygon([(w // 2, m), (w - m, h - m), (m, h - m)], fill=fill, outline=outline)
    elif shape == "bottle":
        d.rectangle((2 * w // 5, m, 3 * w // 5, h // 3), fill=outline)
        d.rounded_rectangle((w // 4, h // 3, 3 * w // 4, h - m), radius=w // 10, fill=fill, outline=outline, width=3)
    elif shape == "arc":
        d.arc(box, start=180, end=360, fill=fill, width=max(6, w // 12))
        d.ellipse((m - 4, h // 2 - 20, m + 36, h // 2 + 40), fill=fill)
        d.ellipse((w - m - 36, h // 2 - 20, w - m + 4, h // 2 + 40), fill=fill)
    else:  # grid
        n = 3
        cw, ch = (w - 2 * m) // n, (h - 2 * m) // n
        for i in range(n):
            for j in range(n):
                d.rectangle((m + i * cw + 2, m + j * ch + 2, m + (i + 1) * cw - 2, m + (j + 1) * ch - 2), fill=fill)
    buf = io.BytesIO()
    img.save(buf, format="JPEG", quality=85)
    return buf.getvalue()


def catalog_words() -> list[str]:
    """Every word the sample titles are made of, one phrase per line (the tiny tokenizer's training text)."""
    phrases = list(COLOURS)
    for v in VOCAB.values():
        phrases += [*v["brands"], *v["adjectives"], *v["nouns"], *v["attributes"]]
    brands = [b for v in VOCAB.values() for b in v["brands"]]
    return [f" {p}" for p in phrases] + [f'{{"title": "{b}' for b in brands]  # a title's first word follows a quote


def _asin(rng: random.Random) -> str:
    return "B0" + "".join(rng.choice(_ALNUM) for _ in range(8))


def _user_id(rng: random.Random) -> str:
    return "AE" + "".join(rng.choice(_ALNUM) for _ in range(26))


def _images(url: str, asin: str, kind: str) -> list[dict]:
    def entry(name: str, variant: str) -> dict:
        hi = f"{url}/images/{name}.jpg" if variant == "MAIN" else None
        return {"thumb": f"{url}/images/{name}._SS40_.jpg", "large": f"{url}/images/{name}.jpg",
                "variant": variant, "hi_res": hi}

    if kind == "none":
        return []
    if kind == "pt01_only":  # no MAIN variant: the cover falls back to the first image
        return [entry(asin, "PT01")]
    if kind == "pt01_first":  # the MAIN variant is not first: the cover must still be the MAIN one
        return [entry(f"{asin}_PT01", "PT01"), entry(asin, "MAIN")]
    return [entry(asin, "MAIN")]


def _category_items(cat: str, seed: int, url: str) -> tuple[list[dict], dict[str, bytes]]:
    v, rng = VOCAB[cat], _rng(seed, cat, "items")
    nouns, colours = list(v["nouns"]), list(COLOURS)
    metas, files, seen = [], {}, set()
    for i in range(ITEMS_PER_CATEGORY):
        asin = _asin(rng)
        while asin in seen:
            asin = _asin(rng)
        seen.add(asin)
        brand, adj, noun = rng.choice(v["brands"]), rng.choice(v["adjectives"]), nouns[i % len(nouns)]
        colour, attr = rng.choice(colours), rng.choice(v["attributes"])
        title = f"{brand} {adj} {colour} {noun} {attr}"
        # the last 8 items are ineligible in the three ways a real catalog is: short title, no image, no large URL
        kind = {64: "short", 65: "short", 66: "blank", 67: "none", 68: "none", 69: "none", 70: "nolarge",
                71: "nolarge"}.get(i, "pt01_only" if i % 16 == 5 else "pt01_first" if i % 16 == 9 else "main")
        if kind == "short":
            title = noun[:4]
        elif kind == "blank":
            title = "   "
        images = _images(url, asin, kind)  # kinds other than none/pt01_* have a MAIN image
        if kind == "nolarge":
            images[0]["large"] = None
        if kind not in ("none", "nolarge"):
            size = (rng.randint(232, 288), rng.randint(232, 288))
            files[f"{asin}.jpg"] = draw_image(colour, v["nouns"][noun], size, rng)
            files[f"{asin}._SS40_.jpg"] = draw_image(colour, v["nouns"][noun], (40, 40), rng)
            if kind == "pt01_first":
                files[f"{asin}_PT01.jpg"] = draw_image(rng.choice(colours), "rectangle", (240, 240), rng)
        desc_kind = i % 3
        description = ([] if desc_kind == 0 else [f"{adj} {noun.lower()} in {colour.lower()} from {brand}."]
                       if desc_kind == 1 else ["Product Description", f"The {brand} {noun.lower()}: {attr}.",
                                               "From the Manufacturer", f"{brand} makes {adj.lower()} products."])
        price = None if i % 7 == 3 else round(rng.uniform(4.0, 89.99), 2)
        metas.append({
            "main_category": v["main_category"], "title": title,
            "average_rating": round(rng.uniform(3.2, 5.0), 1), "rating_number": rng.randint(1, 5000),
            "features": [f"{adj} design", f"Colour: {colour}", attr],
            "description": description, "price": price, "images": images,
            "videos": [] if i % 5 else [{"title": f"{brand} {noun} review", "url": f"{url}/videos/{asin}.mp4",
                                         "user_id": ""}],
            "store": brand,
            "categories": [] if i % 4 == 0 else [v["categories"][0], v["categories"][1], noun],
            "details": {"Brand": brand, "Color": colour, "Item Weight": f"{rng.randint(1, 40)} ounces",
                        "Date First Available": f"March {rng.randint(1, 28)}, {rng.randint(2015, 2022)}"},
            "parent_asin": asin,
            "bought_together": None,
        })
    return metas, files


def _category_reviews(cat: str, metas: list[dict], seed: int) -> list[dict]:
    rng = _rng(seed, cat, "reviews")
    asins = [m["parent_asin"] for m in metas]
    nouns = list(VOCAB[cat]["nouns"])
    by_noun = {n: [m["parent_asin"] for m in metas if n in m["title"]] for n in nouns}
    popularity = [1.0 / (1 + k) ** 0.6 for k in range(len(asins))]  # a mild long tail
    reviews, users = [], set()
    for _ in range(USERS_PER_CATEGORY):
        uid = _user_id(rng)
        while uid in users:
            uid = _user_id(rng)
        users.add(uid)
        liked = [a for n in rng.sample(nouns, 2) for a in by_noun[n]]  # tastes: two product kinds
        n = rng.randint(8, 20)
        t = rng.randint(1_450_000_000_000, 1_640_000_000_000)
        picked: list[str] = []
        while len(picked) < n:
            a = rng.choice(liked) if rng.random() < 0.7 and liked else rng.choices(asins, popularity)[0]
            if a not in picked or rng.random() < 0.03:  # a rare repeat review, as in the raw files
                picked.append(a)
        for a in picked:
            t += rng.randint(3_600_000, 90 * 86_400_000)
            rating = float(rng.choices([5, 4, 3, 2, 1], [55, 30, 7, 4, 4])[0])
            reviews.append({
                "rating": rating, "title": rng.choice(REVIEW_TITLES), "text": rng.choice(REVIEW_TEXTS),
                "images": [], "asin": a if rng.random() < 0.8 else _asin(rng), "parent_asin": a, "user_id": uid,
                "timestamp": t, "helpful_vote": rng.choices([0, 1, 2, 7], [70, 15, 10, 5])[0],
                "verified_purchase": rng.random() < 0.9,
            })
    reviews.sort(key=lambda r: (r["parent_asin"], r["timestamp"]))  # raw files are grouped by item, not user
    return reviews


def build_sample_catalog(out_dir: str | Path, *, base_url: str | None = None, seed: int = 0) -> Path:
    """Write `meta_<Cat>.jsonl`, `<Cat>.jsonl` and `images/` for the three sample categories; return out_dir.

    Same seed -> same bytes. A complete out_dir built with the same options returns at once (the marker is
    written last, so a killed build is redone).
    """
    out = Path(out_dir).expanduser().resolve()
    url = (base_url or out.as_uri()).rstrip("/")
    params = {"version": VERSION, "seed": seed, "base_url": url}
    marker = out / MARKER
    if marker.is_file():
        try:
            if json.loads(marker.read_text()) == params:
                return out
        except ValueError:
            pass
        marker.unlink()
    for cat in SAMPLE_CATEGORIES:
        metas, files = _category_items(cat, seed, url)
        for name, data in files.items():
            atomic_write_bytes(out / "images" / name, data)
        atomic_write_jsonl(out / f"meta_{cat}.jsonl", metas)
        atomic_write_jsonl(out / f"{cat}.jsonl", _category_reviews(cat, metas, seed))
    atomic_write_json(marker, params)
    return out
