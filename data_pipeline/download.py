"""Download MovieLens ML-1M / ML-20M (needs internet; GroupLens terms: research use, no redistribution).

    python -m data_pipeline.download ml-1m --dest data/raw
    python -m data_pipeline.prepare source.path=data/raw/ml-1m/ratings.dat prepare.output_dir=data/ml-1m

The zip is checked against the ``.md5`` file GroupLens publishes beside it (or ``--md5``), tested
for integrity, and extracted without letting members escape ``--dest``. ``--base-url`` points at a
mirror (any URL urllib opens, including ``file://``).
"""
from __future__ import annotations

import argparse
import hashlib
import os
import urllib.request
import zipfile
from typing import Optional
from data_pipeline.errors import DataError

BASE_URL = "https://files.grouplens.org/datasets/movielens/"
DATASETS = {
    "ml-1m": {"zip": "ml-1m.zip", "ratings": "ml-1m/ratings.dat", "format": "movielens_dat"},
    "ml-20m": {"zip": "ml-20m.zip", "ratings": "ml-20m/ratings.csv", "format": "csv"},
}


def dataset_url(name: str, base_url: str = BASE_URL) -> str:
    if name not in DATASETS:
        raise DataError(f"unknown dataset {name!r}; choose one of {sorted(DATASETS)}")
    return base_url.rstrip("/") + "/" + DATASETS[name]["zip"]


def _fetch(url: str, path: str, progress: bool) -> str:
    """Stream ``url`` to ``path`` (via a .part file); return its md5 hex digest."""
    h = hashlib.md5()
    bar = None
    with urllib.request.urlopen(url, timeout=60) as r, open(path + ".part", "wb") as f:
        if progress:
            from tqdm import tqdm
            total = r.headers.get("Content-Length")
            bar = tqdm(total=int(total) if total else None, unit="B", unit_scale=True, desc=os.path.basename(path))
        while chunk := r.read(1 << 20):
            f.write(chunk)
            h.update(chunk)
            bar is not None and bar.update(len(chunk))
    if bar is not None:
        bar.close()
    os.replace(path + ".part", path)
    return h.hexdigest()


def _expected_md5(url: str) -> str:
    with urllib.request.urlopen(url + ".md5", timeout=60) as r:
        text = r.read().decode("ascii", errors="replace")
    token = next((t for t in text.split() if len(t) == 32 and all(c in "0123456789abcdef" for c in t.lower())), None)
    if token is None:
        raise DataError(f"{url}.md5: no md5 digest found in {text[:100]!r}")
    return token.lower()


def extract(zip_path: str, dest: str) -> None:
    """Extract every member under ``dest`` after an integrity test; refuses paths that escape it."""
    root = os.path.realpath(dest)
    with zipfile.ZipFile(zip_path) as z:
        bad = z.testzip()
        if bad is not None:
            raise DataError(f"{zip_path}: corrupt member {bad}")
        for m in z.infolist():
            target = os.path.realpath(os.path.join(dest, m.filename))
            if os.path.commonpath([root, target]) != root:
                raise DataError(f"{zip_path}: member {m.filename!r} would be written outside {dest}")
        z.extractall(dest)


def download(name: str, dest: str, base_url: str = BASE_URL, md5: Optional[str] = None,
             verify: bool = True, progress: bool = True) -> str:
    """Fetch, verify and extract ``name``; return the path of its ratings file."""
    url = dataset_url(name, base_url)
    os.makedirs(dest, exist_ok=True)
    ratings = os.path.join(dest, DATASETS[name]["ratings"])
    if os.path.exists(ratings):
        return ratings
    zpath = os.path.join(dest, DATASETS[name]["zip"])
    got = _fetch(url, zpath, progress)
    if verify:
        want = (md5 or _expected_md5(url)).lower()
        if got != want:
            os.remove(zpath)
            raise DataError(f"{url}: md5 {got} != expected {want}; download removed")
    extract(zpath, dest)
    if not os.path.exists(ratings):
        raise DataError(f"{zpath}: does not contain {DATASETS[name]['ratings']}")
    os.remove(zpath)
    return ratings


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description="Download a MovieLens dataset (needs internet).")
    ap.add_argument("name", choices=sorted(DATASETS))
    ap.add_argument("--dest", required=True, help="directory to extract into")
    ap.add_argument("--base-url", default=BASE_URL, help="mirror; any urllib URL, e.g. file:///mirror/")
    ap.add_argument("--md5", help="expected md5 of the zip (default: the published .md5 file)")
    ap.add_argument("--no-verify", action="store_true", help="skip the md5 check")
    a = ap.parse_args(argv)
    path = download(a.name, a.dest, a.base_url, a.md5, verify=not a.no_verify)
    fmt = DATASETS[a.name]["format"]
    print(f"{path}\nnext: python -m data_pipeline.prepare source.path={path} source.format={fmt} "
          f"prepare.output_dir=<dir>")


if __name__ == "__main__":
    main()
