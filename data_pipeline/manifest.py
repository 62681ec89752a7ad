"""Load ``<data_dir>/manifest.json`` and check it against its shards (docs/ARCHITECTURE.md).

The manifest is the only place the loader learns per-shard user counts, which it needs to give every
rank and worker an exact, equal share of the evaluation users without reading any shard first.
Every file it names (shards, id maps) must lie inside ``data_dir``, and the item map must hold
exactly ``num_items`` rows. Version 2 adds ``"timestamps"`` (shards carry ``ts.npy``); version 1
manifests (no timestamps) still load.
"""
from __future__ import annotations

import json
import os
from dataclasses import dataclass
from typing import Sequence

import braceexpand

from data_pipeline.errors import DataError

MANIFEST_NAME = "manifest.json"
FORMAT_VERSION = 2  # what prepare writes
READABLE_VERSIONS = (1, 2)
TAR_BLOCK = 512  # every tar file is a whole number of these blocks


class ManifestError(DataError):
    """The manifest is missing, malformed, or does not match its shards."""


@dataclass(frozen=True)
class ShardInfo:
    name: str
    users: int
    events: int
    sha256: str | None = None


@dataclass(frozen=True)
class Manifest:
    data_dir: str
    num_items: int
    num_users: int
    num_events: int
    shards: tuple[ShardInfo, ...]
    timestamps: bool = False  # the shards carry each item's timestamp (ts.npy)

    @property
    def shard_users(self) -> list[int]:
        return [s.users for s in self.shards]

    def local_paths(self) -> list[str]:
        return [os.path.join(self.data_dir, s.name) for s in self.shards]


def _field(d: dict, key: str, where: str, kind=int):
    if key not in d:
        raise ManifestError(f"{where}: missing field {key!r}")
    v = d[key]
    if kind is int and (isinstance(v, bool) or not isinstance(v, int) or v < 0):
        raise ManifestError(f"{where}: field {key!r} must be a non-negative integer, got {v!r}")
    if kind is str and not isinstance(v, str):
        raise ManifestError(f"{where}: field {key!r} must be a string, got {v!r}")
    return v


def load_manifest(data_dir: str) -> Manifest:
    """Parse and validate the manifest (totals agree with per-shard counts, names unique)."""
    path = os.path.join(data_dir, MANIFEST_NAME)
    if not os.path.isfile(path):
        raise ManifestError(f"no manifest at {path} (run data_pipeline.prepare first, or fix data_dir)")
    try:
        with open(path, encoding="utf-8") as f:
            raw = json.load(f)
    except (OSError, json.JSONDecodeError) as e:
        raise ManifestError(f"{path}: cannot read manifest ({e})") from e
    if not isinstance(raw, dict):
        raise ManifestError(f"{path}: manifest must be a JSON object")
    version = raw.get("format_version")
    if version not in READABLE_VERSIONS:
        raise ManifestError(f"{path}: format_version {version!r} is not supported (readable: {READABLE_VERSIONS})")
    if not isinstance(raw.get("shards"), list) or not raw["shards"]:
        raise ManifestError(f"{path}: 'shards' must be a non-empty list")
    shards = []
    for i, s in enumerate(raw["shards"]):
        where = f"{path}: shards[{i}]"
        if not isinstance(s, dict):
            raise ManifestError(f"{where} must be an object")
        sha = s.get("sha256")
        name = _inside(data_dir, _field(s, "name", where, str), f"{where}.name")
        shards.append(ShardInfo(name, _field(s, "users", where), _field(s, "events", where),
                                sha if isinstance(sha, str) and sha else None))
    names = [s.name for s in shards]
    if len(set(names)) != len(names):
        raise ManifestError(f"{path}: duplicate shard names")
    timestamps = raw.get("timestamps", False) if version >= 2 else False
    if not isinstance(timestamps, bool):
        raise ManifestError(f"{path}: field 'timestamps' must be true or false, got {timestamps!r}")
    m = Manifest(os.path.abspath(data_dir), _field(raw, "num_items", path), _field(raw, "num_users", path),
                 _field(raw, "num_events", path), tuple(shards), timestamps)
    if sum(m.shard_users) != m.num_users:
        raise ManifestError(f"{path}: shard user counts sum to {sum(m.shard_users)}, num_users is {m.num_users}")
    if sum(s.events for s in shards) != m.num_events:
        raise ManifestError(f"{path}: shard event counts do not sum to num_events={m.num_events}")
    if m.num_users == 0 or m.num_items == 0:
        raise ManifestError(f"{path}: the dataset is empty (num_users={m.num_users}, num_items={m.num_items})")
    if raw.get("user_map") is not None:
        _inside(data_dir, _field(raw, "user_map", path, str), f"{path}: user_map")
    _check_item_map(m, _inside(data_dir, _field(raw, "item_map", path, str), f"{path}: item_map"), path)
    return m


def _inside(data_dir: str, name: str, where: str) -> str:
    """``name`` unchanged if it is a relative path that stays inside ``data_dir``."""
    parts = name.replace("\\", "/").split("/")
    if not name or os.path.isabs(name) or ".." in parts:
        raise ManifestError(f"{where}: {name!r} must be a file name inside the data directory "
                            f"({os.path.abspath(data_dir)}): no absolute path, no '..'")
    return name


def _check_item_map(m: Manifest, name: str, path: str) -> None:
    """The item map (dense id -> original id) has exactly one row per item."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    item_map = os.path.join(m.data_dir, name)
    if not os.path.isfile(item_map):
        raise ManifestError(f"{path}: its item map {item_map} is missing (copy it with the shards, or re-run prepare)")
    try:
        rows = pq.ParquetFile(item_map).metadata.num_rows
    except (pa.ArrowInvalid, OSError) as e:
        raise ManifestError(f"{item_map}: cannot read the item map ({e})") from None
    if rows != m.num_items:
        more = "more" if m.num_items > rows else "fewer"
        raise ManifestError(f"{path}: num_items is {m.num_items} but the item map {item_map} has {rows} rows "
                            f"(the manifest claims {more} items than its item map: the two come from different "
                            "prepare runs; re-run prepare)")


def resolve_urls(manifest: Manifest, urls: Sequence[str] | None = None) -> list[str]:
    """Shard URLs in manifest order: the local files, or ``urls`` from the user's config.

    ``urls`` may be any webdataset URL (local path, ``pipe:``, ``http(s)://``, ...), one per shard in
    manifest order; a single entry with braces is brace-expanded. Each URL must contain its shard's
    name, which catches reordered or mismatched lists. Local files must exist.
    """
    if urls:
        expanded = [u for pattern in urls for u in braceexpand.braceexpand(pattern)]
        if len(expanded) != len(manifest.shards):
            raise ManifestError(f"urls: {len(expanded)} shard URLs given, the manifest lists {len(manifest.shards)} shards")
        for u, s in zip(expanded, manifest.shards):
            if s.name not in u:
                raise ManifestError(f"urls: {u!r} does not name shard {s.name!r} (URLs must follow manifest order)")
        return expanded
    paths = manifest.local_paths()
    missing = [p for p in paths if not os.path.isfile(p)]
    if missing:
        more = f" and {len(missing) - 3} more" if len(missing) > 3 else ""
        raise ManifestError(f"{len(missing)} shard(s) listed in the manifest are missing: {missing[:3]}{more}")
    for p, s in zip(paths, manifest.shards):  # cheap, before anything is written: a tar is whole 512-byte blocks
        size = os.path.getsize(p)
        if s.users and (size == 0 or size % TAR_BLOCK):
            raise ManifestError(f"{p}: {size} bytes, not a whole tar file (empty or truncated; the manifest lists "
                                f"{s.users} users in it): restore it or re-run prepare")
    on_disk = sorted(f for f in os.listdir(manifest.data_dir) if f.startswith("seq-") and f.endswith(".tar"))
    extra = sorted(set(on_disk) - {s.name for s in manifest.shards})
    if extra:
        raise ManifestError(f"{manifest.data_dir}: shard files not in the manifest: {extra[:3]} "
                            f"(manifest lists {len(manifest.shards)}, directory holds {len(on_disk)})")
    return paths


def require_checksums(manifest: Manifest) -> None:
    """Checksum verification needs every shard's sha256 in the manifest."""
    missing = [s.name for s in manifest.shards if s.sha256 is None]
    if missing:
        raise ManifestError(f"{manifest.data_dir}: shard {missing[0]} has no sha256 in the manifest "
                            f"({len(missing)} shard(s) lack one); set data.loader.verify_checksums=false to read "
                            "them unchecked")
