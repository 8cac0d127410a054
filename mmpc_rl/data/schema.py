"""What a meta record means: its cover image, whether it is eligible, and its text, for both image schemas.

Raw JSONL has `images` as a list of `{thumb, large, variant, hi_res}`; HF `datasets` turns it into a dict of lists
and `details` into a JSON string. Both are read the same way here.
"""

from __future__ import annotations

import json
from typing import Any

TEXT_FIELDS = ("title", "description", "mmrec")
MIN_TITLE_CHARS = 5


def cover_url(images: Any) -> str | None:
    """The `MAIN` variant's `large` URL, else the first image's; None when there is no usable URL."""
    if isinstance(images, dict):  # HF dict of lists; anything that is not a list there counts as none
        large, variant = _list(images.get("large")), _list(images.get("variant"))
        variant = variant + [None] * (len(large) - len(variant))
        pairs = list(zip(variant[: len(large)], large, strict=True))
    elif isinstance(images, list):
        pairs = [(im.get("variant"), im.get("large")) for im in images if isinstance(im, dict)]
    else:
        return None
    for variant, url in pairs:
        if variant == "MAIN" and isinstance(url, str) and url.strip():
            return url.strip()
    if pairs and isinstance(pairs[0][1], str) and pairs[0][1].strip():
        return pairs[0][1].strip()
    return None


def _list(value: Any) -> list:
    return list(value) if isinstance(value, (list, tuple)) else []


def clean_title(meta: dict) -> str:
    title = meta.get("title")
    return title.strip() if isinstance(title, str) else ""


def ineligible_reason(meta: dict) -> str | None:
    """Why the item filter of the authors' download_amazon_data_rec.py (a title of at least 5 characters and a cover
    image) drops an item, or None."""
    if len(clean_title(meta)) < MIN_TITLE_CHARS:
        return "ineligible_title"
    if cover_url(meta.get("images")) is None:
        return "ineligible_no_image"
    return None


def is_eligible(meta: dict) -> bool:
    return ineligible_reason(meta) is None


def _str_list(value: Any) -> list[str]:
    if isinstance(value, str):
        return [value] if value.strip() else []
    if isinstance(value, list):
        return [str(v).strip() for v in value if isinstance(v, (str, int, float)) and str(v).strip()]
    return []


def brand(meta: dict) -> str:
    store = meta.get("store")
    if isinstance(store, str) and store.strip():
        return store.strip()
    details = meta.get("details")
    if isinstance(details, str):  # HF schema: a JSON string
        try:
            details = json.loads(details)
        except (ValueError, RecursionError):  # a deeply nested string overflows the parser's stack
            details = None
    if isinstance(details, dict) and isinstance(details.get("Brand"), str):
        return details["Brand"].strip()
    return ""


def item_text(meta: dict, text_field: str = "title") -> str:
    """`title`; `description` (the list joined); `mmrec`: MMRec's title + brand + categories + description."""
    title = clean_title(meta)
    if text_field == "title":
        return title
    description = " ".join(_str_list(meta.get("description")))
    if text_field == "description":
        return description
    parts = [title, brand(meta), " ".join(_str_list(meta.get("categories"))), description]
    return " ".join(p for p in parts if p)
