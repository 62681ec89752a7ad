"""The reader registry: every module of this package (not starting with ``_``) defines
``FORMATS``, a tuple of :class:`~data_pipeline.formats.base.Format`; adding a format is adding
one module. Nothing else in the pipeline compares format names: ``source.format`` validation,
extension lookup and sniffing all ask this registry.
"""
from __future__ import annotations

import functools
import importlib
import os
import pkgutil
from typing import Dict, List

from data_pipeline.formats.base import BadLine, Chunk, FileReader, Format
from data_pipeline.errors import DataError

SNIFF_LINES = 1000  # first non-blank lines a sniffing vote looks at


@functools.lru_cache(maxsize=None)
def registry() -> Dict[str, Format]:
    """``{name: Format}`` of every format module, discovered on first use (the modules import
    the text engines, which import :mod:`data_pipeline.formats.base`)."""
    found: Dict[str, Format] = {}
    for info in sorted(pkgutil.iter_modules(__path__), key=lambda m: m.name):
        if info.name.startswith("_") or info.name == "base":
            continue
        module = importlib.import_module(f"{__name__}.{info.name}")
        for fmt in getattr(module, "FORMATS", ()):
            if fmt.name in found or fmt.name == "auto":
                raise RuntimeError(f"format {fmt.name!r} of {module.__name__} is already registered")
            found[fmt.name] = fmt
    return found


def names() -> List[str]:
    return list(registry())


def get(name: str) -> Format:
    if name not in registry():
        raise DataError(f"source.format: {name!r} is not one of auto, {', '.join(registry())}")
    return registry()[name]


def _by_extension(path: str) -> List[Format]:
    """The formats claiming the longest extension ``path`` ends with."""
    low = os.path.basename(path).lower()
    best, out = 0, []
    for fmt in registry().values():
        n = max((len(e) for e in fmt.extensions if low.endswith(e)), default=0)
        if n > best:
            best, out = n, [fmt]
        elif n == best and n:
            out.append(fmt)
    return out


def detect(path: str) -> Format:
    """The format of ``path`` from its extension; formats sharing one (``.txt``) are told apart
    by a vote over the first :data:`SNIFF_LINES` non-blank lines, so one odd line cannot flip the
    choice (the chosen reader then reports that line as bad)."""
    candidates = _by_extension(path)
    if not candidates:
        known = sorted({e for f in registry().values() for e in f.extensions})
        raise DataError(f"{path}: unknown file type (known endings: {' '.join(known)}); set source.format")
    if len(candidates) == 1:
        return candidates[0]
    from data_pipeline._text import first_lines

    lines = [raw for _, raw in first_lines(path, SNIFF_LINES)]
    if not lines:
        raise DataError(f"{path}: empty file (no data lines)")
    votes = sorted(((sum(map(f.sniff, lines)), f.name) for f in candidates), reverse=True)
    if votes[0][0] == (votes[1][0] if len(votes) > 1 else -1) or votes[0][0] == 0:
        tally = ", ".join(f"{n}: {v}" for v, n in votes)
        raise DataError(f"{path}: cannot tell the format from its first {len(lines)} lines ({tally} lines fit); "
                         "set source.format")
    return registry()[votes[0][1]]


def format_of(path: str, name: str) -> Format:
    """``source.format`` resolved for one file (``auto``: :func:`detect`)."""
    return detect(path) if name == "auto" else get(name)


__all__ = ["BadLine", "Chunk", "FileReader", "Format", "detect", "format_of", "get", "names", "registry"]
