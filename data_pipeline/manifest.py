"""Load ``<data_dir>/manifest.json`` and check it against its shards (docs/ARCHITECTURE.md).

The manifest is the only place the loader learns per-shard user counts, which it needs to give every
rank and worker an exact, equal share of the evaluation users without reading any shard first.
"""
from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass
from typing import Sequence

import braceexpand

MANIFEST_NAME = "manifest.json"
FORMAT_VERSION = 1


class ManifestError(ValueError):
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
    if version != FORMAT_VERSION:
        raise ManifestError(f"{path}: format_version {version!r} is not supported (expected {FORMAT_VERSION})")
    if not isinstance(raw.get("shards"), list) or not raw["shards"]:
        raise ManifestError(f"{path}: 'shards' must be a non-empty list")
    shards = []
    for i, s in enumerate(raw["shards"]):
        where = f"{path}: shards[{i}]"
        if not isinstance(s, dict):
            raise ManifestError(f"{where} must be an object")
        sha = s.get("sha256")
        shards.append(ShardInfo(_field(s, "name", where, str), _field(s, "users", where), _field(s, "events", where),
                                sha if isinstance(sha, str) and sha else None))
    names = [s.name for s in shards]
    if len(set(names)) != len(names):
        raise ManifestError(f"{path}: duplicate shard names")
    m = Manifest(os.path.abspath(data_dir), _field(raw, "num_items", path), _field(raw, "num_users", path),
                 _field(raw, "num_events", path), tuple(shards))
    if sum(m.shard_users) != m.num_users:
        raise ManifestError(f"{path}: shard user counts sum to {sum(m.shard_users)}, num_users is {m.num_users}")
    if sum(s.events for s in shards) != m.num_events:
        raise ManifestError(f"{path}: shard event counts do not sum to num_events={m.num_events}")
    if m.num_users == 0 or m.num_items == 0:
        raise ManifestError(f"{path}: the dataset is empty (num_users={m.num_users}, num_items={m.num_items})")
    return m


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
    on_disk = sorted(f for f in os.listdir(manifest.data_dir) if f.startswith("seq-") and f.endswith(".tar"))
    extra = sorted(set(on_disk) - {s.name for s in manifest.shards})
    if extra:
        raise ManifestError(f"{manifest.data_dir}: shard files not in the manifest: {extra[:3]} "
                            f"(manifest lists {len(manifest.shards)}, directory holds {len(on_disk)})")
    return paths


def sha256_file(path: str, chunk: int = 1 << 22) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


def verify_checksums(manifest: Manifest) -> None:
    """Compare each local shard's sha256 with the manifest (reads every byte once)."""
    for s, path in zip(manifest.shards, manifest.local_paths()):
        if s.sha256 is None:
            raise ManifestError(f"{manifest.data_dir}: shard {s.name} has no sha256 in the manifest")
        actual = sha256_file(path)
        if actual != s.sha256:
            raise ManifestError(f"{path}: sha256 {actual} does not match the manifest ({s.sha256})")
