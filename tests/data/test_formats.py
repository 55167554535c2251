"""Preference files as people keep them (lm_probes.data.formats): the same rows read from JSONL,
Parquet and a datasets folder; TRL's conversational rows (explicit and implicit prompt) read as the
standard row with the same texts, a multi-turn prompt through the chat template once; and every bad
file or row refused in one line naming file, row and field."""

from __future__ import annotations

import json

import pytest

from lm_probes.data.formats import read_pairs
from lm_probes.data.pairs import DataError, encode_pairs
from lm_probes.lm.encoding import ScoringError
from tests.conftest import TRAIN, make_tiny_lm

ROWS = [{"prompt": p.prompt, "chosen": p.chosen, "rejected": p.rejected} for p in TRAIN]


def _jsonl(path, rows):
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def _parquet(path, rows):
    import pyarrow as pa
    import pyarrow.parquet as pq

    pq.write_table(pa.Table.from_pylist(rows), path)
    return path


def _hf(path, rows, splits=("train",)):
    from datasets import Dataset, DatasetDict

    if splits is None:
        Dataset.from_list(rows).save_to_disk(str(path))
    else:
        DatasetDict({s: Dataset.from_list(rows) for s in splits}).save_to_disk(str(path))
    return path


def _texts(pairs):
    return [(p.prompt, p.chosen, p.rejected) for p in pairs]


def test_jsonl_parquet_and_datasets_folders_give_the_same_pairs(tmp_path):
    want = _texts(TRAIN)
    got = {
        "jsonl": read_pairs(_jsonl(tmp_path / "a.jsonl", ROWS)),
        "parquet": read_pairs(_parquet(tmp_path / "a.parquet", ROWS)),
        "dataset": read_pairs(_hf(tmp_path / "ds", ROWS, splits=None)),
        "dict": read_pairs(_hf(tmp_path / "dd", ROWS)),  # one split: that split
        "split": read_pairs(_hf(tmp_path / "dd2", ROWS, ("train", "test")) / "test"),
    }
    for kind, pairs in got.items():
        assert _texts(pairs) == want, kind
    assert got["parquet"][2].where == f"{tmp_path / 'a.parquet'}:row 3"
    assert got["jsonl"][2].where.endswith("a.jsonl:3")


def _conv(p, implicit=False):
    user = {"role": "user", "content": p.prompt}
    c, r = ({"role": "assistant", "content": x} for x in (p.chosen, p.rejected))
    if implicit:
        return {"chosen": [user, c], "rejected": [user, r]}
    return {"prompt": [user], "chosen": [c], "rejected": [r]}


@pytest.mark.parametrize("implicit", [False, True])
def test_a_conversation_of_one_user_turn_is_the_standard_row(tmp_path, implicit):
    pairs = read_pairs(_parquet(tmp_path / "c.parquet", [_conv(p, implicit) for p in TRAIN]))
    assert _texts(pairs) == _texts(TRAIN)
    tok = make_tiny_lm().tokenizer

    def ids(ps):
        return [[(e.input_ids, e.prompt_len) for e in pr] for pr in encode_pairs(tok, ps).encodings]

    assert ids(pairs) == ids(TRAIN)


def test_a_multi_turn_prompt_goes_through_the_chat_template_once(tmp_path):
    tok = make_tiny_lm().tokenizer
    tok.chat_template = (  # one that reads the roles
        "{% for m in messages %}{% if m['role'] == 'assistant' %}<assistant>{% else %}<user>{% endif %} "
        "{{ m['content'] }} {% endfor %}{% if add_generation_prompt %}<assistant> {% endif %}"
    )
    prompt = [
        {"role": "system", "content": "kindness matters"},
        {"role": "user", "content": "i like people"},
        {"role": "assistant", "content": "sure"},
        {"role": "user", "content": "you would say"},
    ]
    row = {
        "chosen": [*prompt, {"role": "assistant", "content": "a truthful reply is yes"}],
        "rejected": [*prompt, {"role": "assistant", "content": "never , not really"}],
    }
    (p,) = read_pairs(_jsonl(tmp_path / "m.jsonl", [row]))
    assert p.prompt == tuple((m["role"], m["content"]) for m in prompt)
    enc = encode_pairs(tok, [p]).encodings[0][0]
    rendered = tok.apply_chat_template(prompt, tokenize=False, add_generation_prompt=True)
    assert rendered.count("<assistant>") == 2  # the earlier assistant turn and the generation prompt
    assert list(enc.input_ids[: enc.prompt_len]) == tok(rendered, add_special_tokens=False)["input_ids"]
    assert list(enc.response_ids) == tok("a truthful reply is yes", add_special_tokens=False)["input_ids"]
    with pytest.raises(ScoringError, match=r"m.jsonl:1 \(chosen\): a conversation's prompt is rendered"):
        encode_pairs(tok, [p], chat_template=False)


BAD = [  # (row, what the one-line message says)
    ({"prompt": "q", "chosen": "a"}, ":row 1: missing field 'rejected'"),
    ({"prompt": "q", "chosen": "a", "rejected": None}, "field 'rejected' must be a string, got NoneType"),
    (
        {
            "prompt": "q",
            "chosen": [{"role": "assistant"}],
            "rejected": [{"role": "assistant", "content": "b"}],
        },
        "'chosen[1].content'",
    ),
    (
        {"prompt": "q", "chosen": ["a"], "rejected": [{"role": "assistant", "content": "b"}]},
        "field 'chosen[1]' must be a {role, content} message, got str",
    ),
    (
        {
            "prompt": "q",
            "chosen": [{"role": "assistant", "content": "a"}, {"role": "assistant", "content": "c"}],
            "rejected": [{"role": "assistant", "content": "b"}],
        },
        "field 'chosen' must end in exactly one assistant message after the prompt (got 2",
    ),
    (
        {
            "chosen": [{"role": "assistant", "content": "a"}],
            "rejected": [{"role": "assistant", "content": "b"}],
        },
        "share no prompt and the row has no 'prompt'",
    ),
    (
        {
            "prompt": [{"role": "user", "content": "q"}, {"role": "assistant", "content": "x"}],
            "chosen": [{"role": "assistant", "content": "a"}],
            "rejected": [{"role": "assistant", "content": "b"}],
        },
        "the prompt ends with an assistant message",
    ),
    (
        {"prompt": "q", "chosen": [{"role": "assistant", "content": " "}], "rejected": "b"},
        "field 'rejected' must be a list of {role, content} messages, got str",
    ),
]


@pytest.mark.parametrize("row,message", BAD)
def test_bad_rows_name_file_row_and_field(tmp_path, row, message):
    path = _parquet(tmp_path / "bad.parquet", [row])
    with pytest.raises(DataError) as exc:
        read_pairs(path)
    assert str(exc.value).startswith(f"{path}:row 1: ") and message in str(exc.value), str(exc.value)


def test_bad_files_are_refused_in_one_line(tmp_path):
    (tmp_path / "junk.parquet").write_text("not parquet")
    (tmp_path / "plain").mkdir()
    _hf(tmp_path / "two", ROWS, ("train", "test"))
    _parquet(tmp_path / "empty.parquet", [])
    for path, message in [
        (tmp_path / "junk.parquet", "not a readable Parquet file"),
        (tmp_path / "none.parquet", "no such file"),
        (tmp_path / "plain", "a folder, but not a Hugging Face datasets folder"),
        (tmp_path / "two", "a DatasetDict with the splits train, test; give one"),
        (tmp_path / "empty.parquet", "no rows"),
    ]:
        with pytest.raises(DataError) as exc:
            read_pairs(path)
        assert str(exc.value).startswith(str(path)) and message in str(exc.value), str(exc.value)
        assert "\n" not in str(exc.value)
