"""Shared by the column formats: which column plays which role, and timestamp units."""
from __future__ import annotations

from typing import Dict, List, Optional
from data_pipeline.errors import DataError

ALIASES = {
    "user": ("user", "user_id", "userid", "uid", "visitorid", "customer_id", "session_id"),
    "item": ("item", "item_id", "itemid", "movieid", "movie_id", "product_id", "iid", "artist_id", "track_id"),
    "ts": ("ts", "timestamp", "time", "datetime", "event_time", "unix_time"),
    "rating": ("rating", "score"),
}
ROLES = tuple(ALIASES)
TS_UNITS = {"s": 1, "ms": 1_000, "us": 1_000_000, "ns": 1_000_000_000}  # ticks per second
MICROS = 1_000_000  # ticks per second of timestamps converted from floats or ISO strings
INT64_MAX = 2**63 - 1


def pick(names: List[str], given: str, role: str, path: str, required: bool) -> Optional[str]:
    """The column of ``role``: ``given`` (``source.<role>_col``) or the first known alias."""
    if given:
        if given not in names:
            raise DataError(f"source.{role}_col: column {given!r} not in {path} (has {names})")
        return given
    low = {n.lower().split(":")[0]: n for n in names}
    for alias in ALIASES[role]:
        if alias in low:
            return low[alias]
    if required:
        raise DataError(f"source.{role}_col: cannot find a {role} column in {path} (has {names}); set it")
    return None


def pick_roles(src, names: List[str], path: str) -> Dict[str, Optional[str]]:
    """``{role: column or None}``; the rating column only when ``source.min_rating`` is set."""
    cols = {r: pick(names, getattr(src, f"{r}_col"), r, path, r in ("user", "item")) for r in ROLES}
    for a, b in (("user", "item"), ("user", "ts"), ("item", "ts")):
        if cols[a] and cols[a] == cols[b]:
            raise DataError(f"source.{b}_col: {path} column {cols[b]!r} is already the {a} column; set source.{b}_col")
    if src.min_rating is None:
        cols["rating"] = None
    elif not cols["rating"]:
        raise DataError(f"source.rating_col: min_rating is set but {path} has no rating column")
    return cols


def ts_unit(src) -> int:
    """Ticks per second of numeric timestamps (``source.ts_unit``)."""
    return TS_UNITS[src.ts_unit]
