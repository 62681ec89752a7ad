"""The docs stay true: every config file and ``key=value`` they quote loads, and every repository path
they name exists. Commands are read from the docs themselves (fenced shell blocks, inline code)."""
from __future__ import annotations

import re
import shlex
from pathlib import Path

import pytest

from omegaconf import OmegaConf

from elastic_pl.config import Config, ConfigError, load_config

REPO = Path(__file__).resolve().parents[1]
DOCS = sorted([REPO / "README.md", REPO / "BENCHMARKS.md", REPO / "slurm" / "README.md", REPO / "bench" / "README.md",
               *(REPO / "docs").glob("*.md")])
FENCE = re.compile(r"```(?:bash|sh|shell|console)?\n(.*?)```", re.S)
INLINE = re.compile(r"(?<!`)`([^`\n]+)`(?!`)")
OVERRIDE = re.compile(r"^([a-z_]+(?:\.[A-Za-z0-9_@]+)+)=(.*)$")
REPO_PATH = re.compile(r"(?<![\w./-])((?:configs|docs|bench|elastic_pl|data_pipeline|slurm|tests|\.ci)/[\w./*\[\]-]*[\w*])")
PLACEHOLDER = re.compile(r"[<>$…]|\.\.\.|^[A-Z]+$")  # <run_id>, $CONFIG, C, L: the reader fills them in
OPTIONAL = re.compile(r"\[([\w.-]+)\]")  # configs/x[-sasrec].yaml: both files
GENERATED = ("bench/out",)  # where documented commands write; not in the repository


def _snippets(doc: Path) -> list[str]:
    text = doc.read_text()
    blocks = [b.replace("\\\n", " ") for b in FENCE.findall(text)]
    lines = [line for b in blocks for line in b.splitlines()]
    inline = INLINE.findall(FENCE.sub("", text))
    return lines + inline


def _commands(doc: Path) -> list[list[str]]:
    """Every ``elastic-pl ...`` command the doc quotes, as tokens (pipelines and ``&&`` split)."""
    out = []
    for snippet in _snippets(doc):
        for part in re.split(r"&&|\|\||;|\|", snippet):
            part = part.strip()
            if "elastic-pl " not in part and "-m elastic_pl " not in part:
                continue
            try:
                tokens = shlex.split(part, comments=True)
            except ValueError:
                continue
            out.append(tokens)
    return out


def _config_args(tokens: list[str]) -> tuple[list[str], list[str]]:
    configs, overrides = [], []
    for i, tok in enumerate(tokens):
        if tok == "--config" and i + 1 < len(tokens):
            configs.append(tokens[i + 1])
        elif tok.startswith("--config="):
            configs.append(tok.split("=", 1)[1])
        elif OVERRIDE.match(tok) and not PLACEHOLDER.search(OVERRIDE.match(tok).group(2)):
            overrides.append(tok)
    return configs, overrides


def _variants(path: str) -> list[str]:
    return [OPTIONAL.sub("", path), OPTIONAL.sub(r"\1", path)] if OPTIONAL.search(path) else [path]


def _cases():
    for doc in DOCS:
        for tokens in _commands(doc):
            configs, overrides = _config_args(tokens)
            if any(PLACEHOLDER.search(c) for c in configs):
                configs = []  # e.g. --config C: the overrides are still checked against the schema
            for variant in ([_variants(c) for c in configs] and zip(*[_variants(c) for c in configs])) or [()]:
                yield pytest.param(doc, list(variant), overrides,
                                   id=f"{doc.relative_to(REPO)}:{' '.join(variant)} {' '.join(overrides)}"[:120])


@pytest.mark.parametrize("doc, configs, overrides", list(_cases()))
def test_every_quoted_command_loads_its_config(doc, configs, overrides):
    try:
        load_config([str(REPO / c) for c in configs], overrides)
    except ConfigError as e:
        pytest.fail(f"{doc.relative_to(REPO)} quotes a command whose config does not load: {e}")


def _inline_overrides(doc: Path) -> list[str]:
    found = []
    for span in INLINE.findall(FENCE.sub("", doc.read_text())):
        if "elastic-pl" in span or "python" in span:
            continue  # whole commands: checked above with their --config
        for tok in span.split():
            m = OVERRIDE.match(tok.rstrip(",;"))
            if m and not PLACEHOLDER.search(m.group(2)):
                found.append(tok.rstrip(",;"))
    return found


@pytest.mark.parametrize("doc", DOCS, ids=lambda d: str(d.relative_to(REPO)))
def test_every_quoted_override_is_a_config_key(doc):
    bad = []
    quoted = _inline_overrides(doc)
    # `trainer.strategy=fsdp|fsdp2` quotes alternatives: each must load
    quoted = [f"{k}={v}" for item in quoted for k, alts in [item.split("=", 1)] for v in alts.split("|")]
    for item in quoted:
        key, value = item.split("=", 1)
        try:
            if value == "":  # `trainer.devices=` names a key: it must exist
                if OmegaConf.select(OmegaConf.structured(Config), key, default="<missing>") == "<missing>":
                    raise ConfigError(f"'{key}' is not a config key")
                continue
            load_config(None, [item])
        except ConfigError as e:
            bad.append(str(e))
    assert not bad, f"{doc.relative_to(REPO)} quotes overrides that do not load:\n" + "\n".join(bad)


@pytest.mark.parametrize("doc", DOCS, ids=lambda d: str(d.relative_to(REPO)))
def test_every_repository_path_named_exists(doc):
    missing = []
    for path in set(REPO_PATH.findall(doc.read_text())):
        path = path.rstrip(".")
        if "<" in path or "$" in path or path.startswith(GENERATED):
            continue
        for variant in _variants(path):
            if not (list(REPO.glob(variant)) if "*" in variant else (REPO / variant).exists()):
                missing.append(variant)
    assert not missing, f"{doc.relative_to(REPO)} names repository paths that do not exist: {sorted(missing)}"


def test_the_doc_scan_finds_what_it_checks():
    """The scan itself: it sees the README's commands, overrides and paths (so it cannot pass by
    finding nothing)."""
    readme = REPO / "README.md"
    commands = _commands(readme)
    assert any("train" in c for c in commands) and any("prepare" in c for c in commands)
    assert any(_config_args(c)[0] for c in commands)
    assert REPO_PATH.findall(readme.read_text())
