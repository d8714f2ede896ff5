"""Sharded dumps: the files a `check` of several reads, in which order, and their labels.

A dump written by many processes is a set of shards (``logits/shard-00017.npy``...). `check`
takes them as several files, a folder or a glob (expanded here, not by the shell), audits them
as the concatenation of the shards in order and pairs each with its labels by name. Only names
are looked at here; the files' headers are read by ``io.open_arrays``.
"""

from __future__ import annotations

import glob
import os
import re
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from xentaudit.errors import ConfigError, InputError
from xentaudit.io import inline_list

SUFFIXES = (".npy", ".npz")
_WILDCARDS = re.compile(r"[*?[]")


@dataclass(frozen=True)
class Shard:
    """One file of a sharded dump, and the ``--labels`` file paired with it (None: the .npz's
    own labels, or none)."""

    path: Path
    labels: Path | None = None


@dataclass(frozen=True)
class _Named:
    path: Path
    matched: str  # what the glob's wildcards matched, "/"-joined ("" for a file or a folder)

    @property
    def stem(self) -> str:
        """The file name without its suffix."""
        return self.path.stem


def natural_key(name: str) -> tuple[tuple[int, int | str], ...]:
    """Sort key putting ``shard-2`` before ``shard-10``: digit runs compare as numbers."""
    return tuple(
        (0, int(part)) if part.isdigit() else (1, part) for part in re.split(r"(\d+)", name)
    )


def is_sharded(spec: str | Path) -> bool:
    """Whether ``spec`` names several files: a folder (not named as a file, ``x.npy``, which
    the reader refuses as a folder), or a glob that is no existing file (nor inline JSON: a
    list, ``[...]``, as ``io.names_a_file`` reads it)."""
    text = str(spec)
    if os.path.lexists(text):
        return os.path.isdir(text) and not text.endswith(SUFFIXES)
    return not inline_list(text) and _WILDCARDS.search(text) is not None


def _glob_regex(pattern: str) -> re.Pattern[str]:
    """``pattern`` (``*``, ``?``, ``[...]`` as glob.glob reads them) as a regex capturing what
    each wildcard matched."""
    out, i = [], 0
    while i < len(pattern):
        c = pattern[i]
        end = pattern.find("]", i + 2) if c == "[" else -1
        if c == "*":
            out.append("([^/]*)")
        elif c == "?":
            out.append("([^/])")
        elif c == "[" and end != -1:
            body = pattern[i + 1 : end]
            body = "^" + body[1:] if body.startswith("!") else body
            out.append(f"([{body.replace(chr(92), chr(92) * 2)}])")
            i = end
        else:
            out.append(re.escape(c))
        i += 1
    return re.compile("".join(out))


def _expand(spec: str, option: str) -> list[_Named]:
    """The files ``spec`` names: itself, a folder's ``.npy``/``.npz`` entries or a glob's, the
    last two in natural order of their paths (``natural_key``). Entries are not opened here:
    one that is no readable file (a dangling link, a folder named ``x.npy``) is refused by the
    reader as a single file would be."""
    if not spec:  # Path("") is the current folder
        raise ConfigError(f"an empty {option.strip() or 'FILE'} name; name a file, folder or glob")
    if not is_sharded(spec):
        path = Path(spec)
        return [_Named(path, "")]
    if os.path.isdir(spec):
        named = [_Named(p, "") for p in Path(spec).iterdir() if p.suffix in SUFFIXES]
        if not named:
            raise InputError(f"{option}{spec} is a folder without .npy or .npz files; check it")
    else:
        regex = _glob_regex(spec)
        named = []
        for match in glob.glob(spec):
            path, found = Path(match), regex.fullmatch(match)
            if path.suffix in SUFFIXES:
                matched = "/".join(found.groups()) if found and found.groups() else ""
                named.append(_Named(path, matched))
        if not named:
            raise InputError(
                f"{option}{spec} matches no .npy or .npz file; check the pattern (quote it, so "
                "that xentaudit expands it rather than the shell)"
            )
    return sorted(named, key=lambda n: natural_key(str(n.path)))


def _pairs(logits: list[_Named], labels: list[_Named], way: str) -> list[Shard] | None:
    """Each logits shard with the one labels file of its key (``way``: "stem" or "matched"),
    or None where the keys do not pair one to one."""
    keys = [getattr(n, way) for n in logits]
    table = {getattr(n, way): n.path for n in labels}
    if len(table) != len(labels) or len(set(keys)) != len(keys) or set(keys) != set(table):
        return None
    return [Shard(n.path, table[key]) for n, key in zip(logits, keys, strict=True)]


def _paired(logits: list[_Named], labels: list[_Named], spec: str) -> list[Shard]:
    """Each logits shard with its labels, one to one: by file name without suffix, or else,
    where both sides are globs with wildcards (``logits-*.npy``, ``labels-*.npy``), by what
    the wildcards matched. Anything else is refused, saying which file does not pair."""
    ways = ["stem"] + (["matched"] if all(n.matched for n in (*logits, *labels)) else [])
    for way in ways:
        pairs = _pairs(logits, labels, way)
        if pairs is not None:
            return pairs
    for side, option in ((logits, ""), (labels, f"--labels {spec}: ")):
        stems = Counter(n.stem for n in side)
        twice = next((n.path for n in side if stems[n.stem] > 1), None)
        if twice is not None:
            raise InputError(
                f"{option}two files are named {twice.stem} ({twice} and another): labels pair "
                "with shards by file name; rename them, or pick them with globs whose wildcards "
                "tell them apart"
            )
    stems = {n.stem for n in labels}
    lone = next((n.path for n in logits if n.stem not in stems), None)
    if lone is not None:
        raise InputError(
            f"--labels {spec}: no labels file pairs with {lone}; name each labels file as its "
            "logits shard (logits/shard-07.npy with labels/shard-07.npy)"
        )
    extra = next(n.path for n in labels if n.stem not in {m.stem for m in logits})
    raise InputError(
        f"--labels {spec}: {extra} pairs with no logits shard; pass the labels of the shards "
        "audited, no more"
    )


def resolve(paths: Sequence[str | Path], labels: str | Path | None) -> list[Shard]:
    """The shards ``paths`` name (files, folders, globs, in the order given), each with its
    file of ``labels`` (a file, folder or glob) paired by name; one file with one labels file
    pairs whatever their names."""
    if not paths:
        raise ConfigError("missing FILE: pass saved logits, or --model and --inputs")
    logits = [named for spec in paths for named in _expand(str(spec), "")]
    seen: set[str] = set()
    for named in logits:
        resolved = os.path.realpath(named.path)  # never raises: the reader names a symlink loop
        if resolved in seen:
            raise ConfigError(f"{named.path} is given twice; pass each shard once")
        seen.add(resolved)
    if labels is None:
        return [Shard(n.path) for n in logits]
    labelled = _expand(str(labels), "--labels ")
    if len(logits) == 1 and len(labelled) == 1:
        return [Shard(logits[0].path, labelled[0].path)]
    return _paired(logits, labelled, str(labels))
