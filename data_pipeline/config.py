"""Plain dataclass configs of the data pipeline (nestable into an OmegaConf structured tree).

Fields use only int/float/str/bool/Optional/list-of-str with defaults. ``validate()`` raises a
ValueError that names the offending field; it runs in ``__post_init__`` too.
"""
from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Optional
from data_pipeline.errors import DataError

BAD_LINE_MODES = ("error", "skip")
_SIZE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([KMGT]?i?B?)\s*$", re.IGNORECASE)
_UNITS = {"": 1, "B": 1, "K": 1e3, "KB": 1e3, "M": 1e6, "MB": 1e6, "G": 1e9, "GB": 1e9, "T": 1e12,
          "TB": 1e12, "KIB": 2**10, "MIB": 2**20, "GIB": 2**30, "TIB": 2**40}


def parse_size(text: str, name: str = "size") -> int:
    """``"4GB"`` / ``"512MiB"`` / ``"1000"`` -> bytes; ValueError naming ``name`` otherwise."""
    m = _SIZE.match(str(text))
    if not m or m.group(2).upper() not in _UNITS:
        raise DataError(f"{name}: cannot parse size {text!r} (e.g. '4GB', '512MiB')")
    return int(float(m.group(1)) * _UNITS[m.group(2).upper()])


def _check(cond: bool, name: str, msg: str) -> None:
    if not cond:
        raise DataError(f"{name}: {msg}")


@dataclass
class SourceConfig:
    """Where the raw events are and how to read them.

    ``path``: a file, a directory (all files of the format inside, sorted) or a glob.
    Column names: '' = auto-detect from the header among common aliases (user_id, userId, ...);
    for header-less csv/tsv give zero-based positions as strings ("0", "1", "3").
    """

    path: str = ""
    format: str = "auto"
    user_col: str = ""
    item_col: str = ""
    ts_col: str = ""  # '' and no timestamp column found: file order is the timestamp
    ts_unit: str = "s"  # unit of numeric epoch timestamps: s | ms | us | ns (typed columns carry their own)
    rating_col: str = ""
    min_rating: Optional[float] = None  # keep events with rating >= min_rating
    header: bool = True  # csv/tsv only
    string_ids: bool = False  # keep user/item ids as strings instead of int64
    on_bad_line: str = "error"  # error: ValueError naming file:line; skip: drop and count
    max_bad_lines: Optional[int] = None  # skip mode: stop once more than this many lines were dropped

    def __post_init__(self) -> None:
        self.validate()

    def validate(self) -> None:
        from data_pipeline import formats  # the registry imports the readers, which use these configs
        from data_pipeline.formats._columns import TS_UNITS

        known = ("auto", *formats.names())
        _check(self.format in known, "source.format", f"{self.format!r} not in {known}")
        _check(self.on_bad_line in BAD_LINE_MODES, "source.on_bad_line", f"{self.on_bad_line!r} not in {BAD_LINE_MODES}")
        _check(self.ts_unit in TS_UNITS, "source.ts_unit", f"{self.ts_unit!r} not in {tuple(TS_UNITS)}")
        _check(self.max_bad_lines is None or self.max_bad_lines >= 0, "source.max_bad_lines", "must be >= 0")
        _check(self.min_rating is None or self.format == "auto" or formats.get(self.format).ratings,
               "source.min_rating", f"format {self.format} has no ratings")


@dataclass
class PrepareConfig:
    """Raw events -> shards. See docs/DATA.md for the stages and how to size buckets."""

    output_dir: str = ""
    k_core: int = 0  # 0 = off; else iterate until every user and item has >= k_core events
    num_buckets: int = 16  # users are hashed into buckets, each processed independently
    users_per_block: int = 512  # users per tar sample (data_pipeline.shards)
    shard_max_events: int = 2_000_000  # a shard is closed once it holds at least this many events
    workers: int = 2  # local processes (count passes, buckets)
    stage_workers: int = 1  # processes splitting Parquet inputs by row group (slower on 2 cores)
    memory_limit: str = "4GB"  # per-worker working-set budget; prepare refuses buckets that exceed it
    batch_rows: int = 1_048_576  # rows per streamed batch while reading
    keep_work: bool = False  # keep <output_dir>/_work (staged buckets, done-files) after finalize
    progress: bool = True  # tqdm progress bars

    def __post_init__(self) -> None:
        self.validate()

    def validate(self) -> None:
        _check(self.k_core >= 0, "prepare.k_core", "must be >= 0")
        _check(1 <= self.num_buckets <= 65535, "prepare.num_buckets", "must be in 1..65535")
        _check(self.users_per_block >= 1, "prepare.users_per_block", "must be >= 1")
        _check(self.shard_max_events >= 1, "prepare.shard_max_events", "must be >= 1")
        _check(self.workers >= 1, "prepare.workers", "must be >= 1")
        _check(self.stage_workers >= 1, "prepare.stage_workers", "must be >= 1")
        _check(self.batch_rows >= 1, "prepare.batch_rows", "must be >= 1")
        parse_size(self.memory_limit, "prepare.memory_limit")


@dataclass
class SyntheticConfig:
    """A learnable synthetic log: Zipf items in clusters, users with interests (see
    data_pipeline/synthetic.py): ``kind="drift"`` drifting interests, ``kind="longrange"`` stable
    interests revisited after long gaps plus periodic routines (far history carries signal)."""

    kind: str = "drift"  # drift | longrange
    num_users: int = 10_000
    num_items: int = 50_000
    num_clusters: int = 100  # latent interests (item clusters)
    interests_per_user: int = 4  # drift: interest slots; longrange: stable interests
    mean_length: float = 100.0  # lognormal lengths, clipped to [min_length, max_length]
    length_sigma: float = 1.2
    min_length: int = 3
    max_length: int = 100_000
    zipf_exponent: float = 1.1
    switch_prob: float = 0.1  # per event: the user moves to another of its interests
    drift: float = 0.05  # per switch: the chosen (longrange: short-term) interest becomes a random cluster
    noise_prob: float = 0.05  # per event: an item drawn from global popularity instead
    revisit_prob: float = 0.5  # longrange, per switch: revisit a stable interest (else short-term)
    favourites: int = 8  # longrange: a revisit draws uniformly from this many favourites of the interest
    routine_prob: float = 0.2  # longrange, per event: the next item of the user's routine cycle
    num_routines: int = 64  # longrange: routine items per user (each returns every ~64/0.2 events)
    tie_prob: float = 0.2  # per event: same timestamp as the previous event
    mean_gap_s: float = 3600.0
    shuffle_rows: bool = True  # shuffle rows inside each row group (interleaved, not user-sorted)
    rows_per_group: int = 1_048_576
    seed: int = 0

    def __post_init__(self) -> None:
        self.validate()

    def validate(self) -> None:
        _check(self.kind in ("drift", "longrange"), "synthetic.kind", "must be drift or longrange")
        _check(self.num_users >= 1, "synthetic.num_users", "must be >= 1")
        _check(self.num_items >= 2, "synthetic.num_items", "must be >= 2")
        _check(1 <= self.num_clusters <= self.num_items, "synthetic.num_clusters", "must be in 1..num_items")
        _check(1 <= self.interests_per_user <= self.num_clusters, "synthetic.interests_per_user", "must be in 1..num_clusters")
        _check(1 <= self.min_length <= self.max_length, "synthetic.min_length", "must be in 1..max_length")
        _check(self.max_length <= 10_000_000, "synthetic.max_length", "must be <= 1e7")
        _check(self.mean_length > 0, "synthetic.mean_length", "must be > 0")
        _check(self.length_sigma >= 0, "synthetic.length_sigma", "must be >= 0")
        _check(self.zipf_exponent >= 0, "synthetic.zipf_exponent", "must be >= 0")
        for name in ("switch_prob", "drift", "noise_prob", "tie_prob", "revisit_prob", "routine_prob"):
            _check(0.0 <= getattr(self, name) <= 1.0, f"synthetic.{name}", "must be in [0, 1]")
        _check(self.mean_gap_s > 0, "synthetic.mean_gap_s", "must be > 0")
        _check(self.rows_per_group >= 1, "synthetic.rows_per_group", "must be >= 1")
        _check(self.num_routines >= 1, "synthetic.num_routines", "must be >= 1")
        _check(self.favourites >= 1, "synthetic.favourites", "must be >= 1")


@dataclass
class DataPrepConfig:
    """The tree ``python -m data_pipeline.prepare --config FILE`` reads."""

    source: SourceConfig = field(default_factory=SourceConfig)
    prepare: PrepareConfig = field(default_factory=PrepareConfig)
