"""Preference data: the datasets shipped with the package, JSONL files with row-level errors, and the
one encoder of preference pairs.

    from lm_probes.data.pairs import catalog, load_pairs, read_jsonl, encode_pairs
    catalog()                                   # name, split, rows, licence, sha256 of every dataset
    load_pairs("ultrafeedback_french", "test")  # [Pair(prompt, chosen, rejected, group, where)]
    read_jsonl("my_pairs.jsonl")                # a user's file; bad rows raise DataError "file:line: ..."
    enc = encode_pairs(tokenizer, pairs, max_length=2048)   # drops identical / too-long pairs, says which

The datasets live in ``lm_probes/data/datasets/<name>/<split>.jsonl.gz`` (provenance, licences and
checksums in ``lm_probes/data/datasets/README.md`` and ``MANIFEST.json``); each file's SHA-256 is checked
when it is first read. ``RMGAP_DATA=/some/folder`` makes ``<folder>/<name>/<split>.jsonl[.gz]`` take
precedence (your own copies, not checksummed).
"""

from __future__ import annotations

import gzip
import hashlib
import json
import os
import zlib
from dataclasses import dataclass, field
from functools import cache
from pathlib import Path

from lm_probes.lm.encoding import Encoded, SequenceTooLongError, encode

DATASETS_DIR = Path(__file__).resolve().parent / "datasets"
PAIR_FIELDS = ("prompt", "chosen", "rejected")


class DataError(ValueError):
    """A malformed data file or row: the message names the file, the line and the field."""


@dataclass(frozen=True)
class Pair:
    """A preference pair; ``prompt`` a string (one user turn) or a conversation, a tuple of (role,
    content) messages (lm_probes.data.formats); ``group`` names the set it belongs to, ``where`` its
    origin (file:line);
    ``rewrite``, where the data has one, the (chosen, rejected) said with other tokens (a paraphrase:
    what the augmentation and consistency mitigations of lm_probes.rm.mitigations train on)."""

    prompt: str | tuple[tuple[str, str], ...]
    chosen: str
    rejected: str
    group: str = "data"
    where: str = ""
    rewrite: tuple[str, str] | None = None


# --- the shipped datasets --------------------------------------------------------------------------


@cache
def catalog() -> tuple[dict, ...]:
    """Every shipped dataset: name, split, file, rows, licence, source, sha256 (of the .gz file)."""
    return tuple(json.loads((DATASETS_DIR / "MANIFEST.json").read_text())["datasets"])


def _entry(name: str, split: str) -> dict:
    for e in catalog():
        if e["name"] == name and e["split"] == split:
            return e
    known = ", ".join(sorted({f"{e['name']}/{e['split']}" for e in catalog()}))
    raise DataError(f"no dataset {name}/{split}; shipped: {known}")


def dataset_path(name: str, split: str) -> Path:
    """``$RMGAP_DATA/<name>/<split>.jsonl[.gz]`` when that exists, else the shipped (checked) file."""
    root = os.environ.get("RMGAP_DATA")
    if root:
        for suffix in (".jsonl", ".jsonl.gz"):
            p = Path(root) / name / f"{split}{suffix}"
            if p.exists():
                return p
    return shipped_path(name, split)


def data_overrides() -> dict[str, str]:
    """``{"<name>/<split>": path}`` of the shipped datasets ``RMGAP_DATA`` replaces (read unchecked)."""
    found = {}
    for e in catalog() if os.environ.get("RMGAP_DATA") else ():
        path = dataset_path(e["name"], e["split"])
        if path != DATASETS_DIR / e["file"]:
            found[f"{e['name']}/{e['split']}"] = str(path)
    return found


def shipped_path(name: str, split: str) -> Path:
    """The shipped file of a dataset, its SHA-256 checked against the manifest (once per process)."""
    entry = _entry(name, split)
    path = DATASETS_DIR / entry["file"]
    _verify(path, entry["sha256"])
    return path


@cache
def _verify(path: Path, sha256: str) -> None:
    if not path.exists():
        raise DataError(f"{path}: the shipped data file is missing (a broken install?)")
    got = hashlib.sha256(path.read_bytes()).hexdigest()
    if got != sha256:
        raise DataError(f"{path}: SHA-256 {got[:16]}… differs from the manifest's {sha256[:16]}…")


def load_rows(name: str, split: str) -> list[tuple[str, dict]]:
    """(where, row) of a dataset, where = "<name>/<split>:<line>"."""
    return read_rows(dataset_path(name, split), label=f"{name}/{split}")


def load_pairs(name: str, split: str, *, group: str | None = None) -> list[Pair]:
    """The dataset's preference pairs (``group`` defaults to the dataset's name)."""
    return pairs_from_rows(load_rows(name, split), group=group or name)


# --- files ------------------------------------------------------------------------------------------


def read_rows(path, *, label: str | None = None) -> list[tuple[str, dict]]:
    """(where, row) of a JSONL file (plain or .gz), where = "<label or path>:<line>". Files that are not
    UTF-8, lines that are not JSON objects, and empty files raise :class:`DataError`."""
    path = Path(path)
    label = label or str(path)
    if path.is_dir():
        raise DataError(f"{path}: a folder, not a JSONL file")
    if not path.is_file():
        raise DataError(f"{path}: no such file")
    try:
        raw = gzip.decompress(path.read_bytes()) if path.suffix == ".gz" else path.read_bytes()
    except (OSError, EOFError, zlib.error) as exc:
        raise DataError(f"{path}: not a readable gzip file ({exc})") from None
    rows = []
    for n, line in enumerate(raw.split(b"\n"), 1):
        where = f"{label}:{n}"
        try:
            text = line.decode("utf-8")
        except UnicodeDecodeError as exc:
            raise DataError(
                f"{where}: not UTF-8 text (byte 0x{line[exc.start]:02x} at column {exc.start + 1})"
            ) from None
        if not text.strip():
            continue
        try:
            row = json.loads(text, object_pairs_hook=_unique_keys)
        except json.JSONDecodeError as exc:
            raise DataError(f"{where}: not valid JSON ({exc.msg})") from None
        except _DuplicateKey as exc:
            raise DataError(f"{where}: field {exc.args[0]!r} appears twice in one object") from None
        if not isinstance(row, dict):
            raise DataError(f"{where}: expected a JSON object, got {type(row).__name__}")
        rows.append((where, row))
    if not rows:
        raise DataError(f"{path}: no rows")
    return rows


class _DuplicateKey(Exception):
    pass


def _unique_keys(items: list[tuple[str, object]]) -> dict:
    """json's object hook: a key given twice is an error (json keeps the last value silently)."""
    row = {}
    for k, v in items:
        if k in row:
            raise _DuplicateKey(k)
        row[k] = v
    return row


def require_str(where: str, row: dict, key: str) -> str:
    if key not in row:
        raise DataError(f"{where}: missing field {key!r}")
    if not isinstance(row[key], str):
        raise DataError(f"{where}: field {key!r} must be a string, got {type(row[key]).__name__}")
    try:
        row[key].encode("utf-8")
    except UnicodeEncodeError as exc:  # a lone surrogate escape such as \ud800: JSON, not text
        bad = f"\\u{ord(row[key][exc.start]):04x}"
        raise DataError(
            f"{where}: field {key!r} holds {bad} at character {exc.start + 1}, not text"
        ) from None
    return row[key]


def standard_pair(where: str, row: dict, group: str = "data") -> Pair:
    """A Pair from a row of three strings (prompt, chosen, rejected); a bad field raises DataError."""
    prompt, chosen, rejected = (require_str(where, row, k) for k in PAIR_FIELDS)
    for k, v in (("chosen", chosen), ("rejected", rejected)):
        if not v.strip():
            raise DataError(f"{where}: empty {k} response (field {k!r})")
    return Pair(prompt, chosen, rejected, group, where)


def pairs_from_rows(rows: list[tuple[str, dict]], *, group: str = "data") -> list[Pair]:
    return [standard_pair(where, row, group) for where, row in rows]


def read_jsonl(path, *, group: str = "data") -> list[Pair]:
    """Preference pairs (prompt, chosen, rejected) of a JSONL file; a bad row raises DataError
    naming file:line and the field."""
    return pairs_from_rows(read_rows(path), group=group)


def prompt_text(prompt) -> str:
    """A prompt as plain text: the string, or a conversation's contents one per line."""
    return prompt if isinstance(prompt, str) else "\n".join(c for _, c in prompt)


# --- encoding ---------------------------------------------------------------------------------------


@dataclass
class EncodedPairs:
    """Encoded (chosen, rejected) of the kept pairs, and the pairs left out, by reason."""

    encodings: list[tuple[Encoded, Encoded]] = field(default_factory=list)
    kept: list[Pair] = field(default_factory=list)
    dropped: dict[str, list[str]] = field(default_factory=lambda: {"too_long": [], "identical": []})

    def n_dropped(self) -> int:
        return sum(len(v) for v in self.dropped.values())


def encode_pairs(
    tokenizer,
    pairs: list[Pair],
    *,
    chat_template: bool = True,
    max_length: int | None = None,
    max_part_length: int | None = None,
    too_long: str = "drop",
    verbalize=None,
) -> EncodedPairs:
    """Encode chosen and rejected of every pair (lm_probes.lm.encoding.encode). Pairs whose two responses
    encode to the same tokens carry no preference: they are left out and listed under "identical".
    Pairs longer than ``max_length`` (or with a prompt or a response over ``max_part_length``
    tokens) are left out and listed under "too_long" (``too_long="drop"``, the
    paper's rule), or raise :class:`SequenceTooLongError` (``too_long="raise"``). Other bad rows raise.
    ``verbalize`` (a reward type's, e.g. the EX-GRM's verification prompt) maps each (prompt, response)
    to what is encoded; the ``max_part_length`` rule still reads the original prompt and responses, so
    every reward type keeps the same pairs."""
    if too_long not in ("drop", "raise"):
        raise ValueError(f"too_long must be 'drop' or 'raise', got {too_long!r}")
    out = EncodedPairs()
    for p in pairs:
        try:
            roles = (("chosen", p.chosen), ("rejected", p.rejected))
            if verbalize is not None and max_part_length is not None:
                for role, resp in roles:  # the part-length rule on the original texts
                    at = f"{p.where} ({role})"
                    encode(
                        tokenizer,
                        p.prompt,
                        resp,
                        chat_template=chat_template,
                        max_part_length=max_part_length,
                        where=at,
                    )
            c, r = (
                encode(
                    tokenizer,
                    *(verbalize(p.prompt, resp) if verbalize else (p.prompt, resp)),
                    chat_template=chat_template,
                    max_length=max_length,
                    max_part_length=None if verbalize else max_part_length,
                    where=f"{p.where} ({role})",
                )
                for role, resp in roles
            )
        except SequenceTooLongError as exc:
            if too_long == "raise":
                raise
            out.dropped["too_long"].append(str(exc))
            continue
        if c.input_ids == r.input_ids:
            out.dropped["identical"].append(f"{p.where}: chosen and rejected are identical")
            continue
        out.encodings.append((c, r))
        out.kept.append(p)
    return out
