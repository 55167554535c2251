"""Preference files in the formats people keep them in, and rows in TRL's two formats.

    from lm_probes.data.formats import read_pairs
    read_pairs("prefs.jsonl")        # JSONL, plain or .gz (lm_probes.data.pairs.read_rows)
    read_pairs("prefs.parquet")      # Parquet (pyarrow)
    read_pairs("prefs_hf/")          # a Hugging Face datasets folder (Dataset.save_to_disk; load_from_disk)

A row is either *standard* (``prompt``, ``chosen``, ``rejected`` strings) or *conversational*, TRL's
format: ``chosen`` and ``rejected`` lists of ``{"role", "content"}`` messages, with the prompt as its
own ``prompt`` list (or string: one user turn), or, with no ``prompt``, as the messages the two share
before one last assistant message each. A conversation's prompt goes through the tokenizer's chat
template once, with the generation prompt (lm_probes.lm.encoding.render_prompt), and the assistant's
content is the response, appended as its own tokens, as for a standard row; where joining would
merge tokens across that boundary, the encoding says so (``Encoded.boundary_merged``) and ``rmgap
eval`` counts it. A prompt of one user message is kept as that string, so such a row is exactly the
standard row with the same texts. Bad rows raise DataError naming ``file:line`` (JSONL) or
``file:row N`` (tables, counted from 1) and the field.
"""

from __future__ import annotations

from pathlib import Path

from lm_probes.data.pairs import DataError, Pair, read_rows, require_str, standard_pair

HF_FOLDER_FILES = ("dataset_info.json", "state.json", "dataset_dict.json")  # what save_to_disk writes


def read_pairs(path, *, group: str = "data") -> list[Pair]:
    """The preference pairs of a JSONL file, a Parquet file or a datasets folder, standard or
    conversational rows (module docstring)."""
    rows = read_table_rows(path)
    return [
        conversational_pair(where, row, group) if _conversational(row) else standard_pair(where, row, group)
        for where, row in rows
    ]


def read_table_rows(path) -> list[tuple[str, dict]]:
    """(where, row) of any of the three formats."""
    path = Path(path)
    if path.is_dir():
        return _hf_rows(path)
    if path.suffix == ".parquet":
        return _parquet_rows(path)
    return read_rows(path)


def _parquet_rows(path: Path) -> list[tuple[str, dict]]:
    if not path.is_file():
        raise DataError(f"{path}: no such file")
    try:
        import pyarrow.parquet as pq
    except ImportError:
        raise DataError(f"{path}: reading Parquet needs pyarrow (pip install pyarrow)") from None
    try:
        rows = pq.read_table(path).to_pylist()
    except Exception as exc:  # pyarrow raises ArrowInvalid, OSError, ... for a file it cannot read
        raise DataError(f"{path}: not a readable Parquet file ({str(exc).splitlines()[0]})") from None
    return _numbered(path, rows)


def _hf_rows(path: Path) -> list[tuple[str, dict]]:
    if not any((path / f).exists() for f in HF_FOLDER_FILES):
        raise DataError(
            f"{path}: a folder, but not a Hugging Face datasets folder (no {' / '.join(HF_FOLDER_FILES)}; "
            "give a JSONL or Parquet file, or a folder written by Dataset.save_to_disk)"
        )
    try:
        from datasets import DatasetDict, load_from_disk
    except ImportError:
        raise DataError(f"{path}: reading a datasets folder needs datasets (pip install datasets)") from None
    try:
        ds = load_from_disk(str(path))
    except Exception as exc:  # a damaged folder: FileNotFoundError, ArrowInvalid, json errors, ...
        raise DataError(f"{path}: not a readable datasets folder ({str(exc).splitlines()[0]})") from None
    if isinstance(ds, DatasetDict):
        if len(ds) != 1:
            names = ", ".join(ds)
            raise DataError(f"{path}: a DatasetDict with the splits {names}; give one: {path}/<split>")
        ds = next(iter(ds.values()))
    return _numbered(path, ds.to_list())


def _numbered(path: Path, rows: list) -> list[tuple[str, dict]]:
    if not rows:
        raise DataError(f"{path}: no rows")
    return [(f"{path}:row {i}", row) for i, row in enumerate(rows, 1)]


def _conversational(row: dict) -> bool:
    return isinstance(row.get("chosen"), list) or isinstance(row.get("rejected"), list)


def _messages(where: str, value, field: str) -> list[tuple[str, str]]:
    """A list of {role, content} messages as (role, content) tuples; anything else a DataError."""
    if not isinstance(value, list) or not value:
        got = "an empty list" if value == [] else type(value).__name__
        raise DataError(f"{where}: field {field!r} must be a list of {{role, content}} messages, got {got}")
    out = []
    for i, m in enumerate(value, 1):
        at = f"{field}[{i}]"
        if not isinstance(m, dict):
            raise DataError(
                f"{where}: field {at!r} must be a {{role, content}} message, got {type(m).__name__}"
            )
        flat = {f"{at}.{k}": v for k, v in m.items()}  # (require_str's messages then name the message)
        role, content = (require_str(where, flat, f"{at}.{k}") for k in ("role", "content"))
        out.append((role, content))
    return out


def conversational_pair(where: str, row: dict, group: str = "data") -> Pair:
    """A Pair from a row in TRL's conversational format (module docstring)."""
    chosen, rejected = (_messages(where, row.get(k), k) for k in ("chosen", "rejected"))
    if "prompt" in row:
        p = row["prompt"]
        prompt = (
            _messages(where, p, "prompt")
            if isinstance(p, list)
            else [("user", require_str(where, row, "prompt"))]
        )
    else:  # implicit prompt: the messages the two conversations share
        n = 0
        while n < min(len(chosen), len(rejected)) - 1 and chosen[n] == rejected[n]:
            n += 1
        prompt, chosen, rejected = chosen[:n], chosen[n:], rejected[n:]
        if not prompt:
            raise DataError(f"{where}: 'chosen' and 'rejected' share no prompt and the row has no 'prompt'")
    responses = []
    for name, msgs in (("chosen", chosen), ("rejected", rejected)):
        if len(msgs) != 1 or msgs[0][0] != "assistant":
            raise DataError(
                f"{where}: field {name!r} must end in exactly one assistant message after the prompt "
                f"(got {len(msgs)} message(s), roles {[r for r, _ in msgs]})"
            )
        if not msgs[0][1].strip():
            raise DataError(f"{where}: empty {name} response (field {name!r})")
        responses.append(msgs[0][1])
    if prompt[-1][0] == "assistant":
        raise DataError(f"{where}: the prompt ends with an assistant message; a response must answer a turn")
    text = prompt[0][1] if len(prompt) == 1 and prompt[0][0] == "user" else tuple(prompt)
    return Pair(text, responses[0], responses[1], group, where)
