"""A run's per-row outputs (lm_probes.common): written gzip-compressed as ``<name>.jsonl.gz``, the same
rows giving the same bytes; read back under that name or the uncompressed ``<name>.jsonl`` older runs
wrote; a folder holding both names of one output refused in one line naming the folder."""

from __future__ import annotations

import gzip
import json

import numpy as np
import pytest

from lm_probes.common import (
    jsonable,
    jsonl_files,
    read_jsonl_rows,
    write_json,
    write_jsonl,
    write_output_jsonl,
)
from rmgap.cli import main

ROWS = [
    {"where": "café:1", "reward_chosen": np.float32(0.25), "tokens": ("a", "\u2028b"), "x": float("nan")},
    {"where": "b:2", "reward_chosen": -1.5, "tokens": [], "x": np.int64(3)},
]


def test_an_output_is_written_deterministically_and_read_under_either_name(tmp_path):
    a = write_output_jsonl(tmp_path / "a" / "rewards_test.jsonl.gz", ROWS)
    b = write_output_jsonl(tmp_path / "b" / "rewards_test.jsonl", iter(ROWS))  # (either name: as .gz)
    assert a.name == b.name == "rewards_test.jsonl.gz" and a.read_bytes() == b.read_bytes()
    assert a.read_bytes()[4:8] == bytes(4)  # no time in the header
    older = write_jsonl(tmp_path / "c" / "rewards_test.jsonl", ROWS)  # what rmgap wrote before
    assert gzip.decompress(a.read_bytes()) == older.read_bytes()
    want = jsonable(ROWS)
    assert want[0]["x"] is None and want[1]["x"] == 3
    for folder in ("a", "c"):
        for name in ("rewards_test.jsonl.gz", "rewards_test.jsonl"):
            assert read_jsonl_rows(tmp_path / folder / name) == want, (folder, name)
    assert jsonl_files(tmp_path / "c", "rewards_") == {"test": older}
    assert jsonl_files(tmp_path / "a", "rewards_") == {"test": a}
    # written again where an older run left the uncompressed file: that one goes
    again = write_output_jsonl(older, ROWS)
    assert not older.exists() and again.read_bytes() == a.read_bytes()


def _training_folder(path, rows, name: str):
    """A finished training run's folder as ``rmgap eval --compare`` reads it (summary.json, rewards)."""
    write_json(path / "summary.json", {"config": {"objective": "im_rm"}})
    write_jsonl(path / name, rows)


def test_a_folder_holding_both_names_of_one_output_is_refused_in_one_line(tmp_path, capsys):
    rows = [{"where": f"w:{i}", "reward_chosen": i % 3 - 1.0, "reward_rejected": 0.0} for i in range(6)]
    _training_folder(tmp_path / "old", rows, "rewards_test.jsonl")  # an older run's
    _training_folder(tmp_path / "new", rows, "rewards_test.jsonl.gz")
    compare = ["eval", "--compare", str(tmp_path / "old"), str(tmp_path / "new"), "--out"]
    assert main([*compare, str(tmp_path / "c")]) == 0
    c = json.loads((tmp_path / "c" / "comparison.json").read_text())["sets"]["test"]
    assert c["n_pairs"] == 6 and c["max_abs_reward_diff"] == 0.0
    capsys.readouterr()
    write_jsonl(tmp_path / "old" / "rewards_test.jsonl.gz", rows)  # both names in one folder
    assert main([*compare, str(tmp_path / "d")]) == 2
    err = capsys.readouterr().err
    assert len(err.strip().splitlines()) == 1, err
    assert f"{tmp_path / 'old'}: holds both rewards_test.jsonl and rewards_test.jsonl.gz" in err
    with pytest.raises(ValueError, match="holds both"):
        read_jsonl_rows(tmp_path / "old" / "rewards_test.jsonl")
