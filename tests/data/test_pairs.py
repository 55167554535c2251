"""The datasets shipped with the package (lm_probes/data/datasets), their checksums, and file errors."""

from __future__ import annotations

import gzip
import json
import shutil
import subprocess
import sys
import zipfile

import pytest

from lm_probes.data import pairs as data
from lm_probes.data.pairs import (
    DataError,
    catalog,
    load_pairs,
    load_rows,
    read_jsonl,
    read_rows,
    shipped_path,
)
from lm_probes.data.persona import persona_statements

EXPECTED = {  # (name, split) → rows, from lm_probes/data/datasets/README.md
    ("persona", "agreeableness"): 1000,
    ("ultrafeedback", "test"): 200,
    ("ultrafeedback_paraphrased", "train"): 200,
    ("ultrafeedback_paraphrased", "test"): 200,
    ("ultrafeedback_french", "train"): 200,
    ("ultrafeedback_french", "test"): 200,
    ("ultrafeedback_spanish", "train"): 200,
    ("ultrafeedback_spanish", "test"): 200,
    ("rewardbench_math", "train"): 34,
    ("rewardbench_math", "test"): 200,
    ("rewardbench_code", "train"): 84,
    ("rewardbench_code", "test"): 200,
    ("rewardmath", "train"): 2000,
    ("rewardmath", "test"): 200,
}


UNCHANGED = {"paraphrased": (1, 0), "french": (9, 5), "spanish": (10, 8)}  # datasets/README.md


def test_every_shipped_dataset_loads_with_its_row_count_and_a_licence(monkeypatch):
    monkeypatch.delenv("RMGAP_DATA", raising=False)
    assert {(e["name"], e["split"]): e["rows"] for e in catalog()} == EXPECTED
    for e in catalog():
        assert e["licence"] and e["source"] and len(e["sha256"]) == 64
        rows = load_rows(e["name"], e["split"])
        assert len(rows) == e["rows"] and sorted(rows[0][1]) == e["fields"]
        if e["name"] != "persona":
            pairs = load_pairs(e["name"], e["split"])
            assert pairs[0].where == f"{e['name']}/{e['split']}:1" and pairs[0].group == e["name"]
    assert len(persona_statements()) == 500  # answered " Yes"


def test_rewrites_keep_the_prompts_and_rewrite_the_responses():
    test = {p.prompt for p in load_pairs("ultrafeedback", "test")}
    for lang, counts in UNCHANGED.items():
        for split, n_unchanged in zip(("train", "test"), counts, strict=True):
            rows = [r for _, r in load_rows(f"ultrafeedback_{lang}", split)]
            if split == "test":
                assert {r["prompt"] for r in rows} == test
            same = [r for r in rows if r["orig_chosen"] == r["chosen"] or r["orig_rejected"] == r["rejected"]]
            assert len(same) == n_unchanged, (lang, split)


def test_a_corrupted_shipped_file_is_refused(tmp_path, monkeypatch):
    copy = tmp_path / "datasets"
    shutil.copytree(data.DATASETS_DIR, copy)
    f = copy / "ultrafeedback" / "test.jsonl.gz"
    raw = gzip.decompress(f.read_bytes()).replace(b"Docker", b"docker", 1)
    f.write_bytes(gzip.compress(raw))
    monkeypatch.setattr(data, "DATASETS_DIR", copy)
    monkeypatch.delenv("RMGAP_DATA", raising=False)
    catalog.cache_clear()
    try:
        with pytest.raises(DataError, match=r"SHA-256 .* differs from the manifest"):
            shipped_path("ultrafeedback", "test")
        assert shipped_path("ultrafeedback_french", "test").parent.parent == copy  # the others still load
    finally:
        catalog.cache_clear()


def test_rmgap_data_takes_precedence(tmp_path, monkeypatch):
    (tmp_path / "ultrafeedback").mkdir()
    (tmp_path / "ultrafeedback" / "test.jsonl").write_text(
        json.dumps({"prompt": "p", "chosen": "mine", "rejected": "theirs"}) + "\n"
    )
    monkeypatch.setenv("RMGAP_DATA", str(tmp_path))
    (p,) = load_pairs("ultrafeedback", "test")
    assert p.chosen == "mine"
    assert len(load_pairs("rewardmath", "test")) == 200  # not in the folder: the shipped copy
    with pytest.raises(DataError, match="no dataset nope/test; shipped: "):
        load_pairs("nope", "test")


@pytest.mark.parametrize(
    "content,match",
    [
        (
            b'{"prompt": "p", "chosen": "a", "rejected": "b"}\n{"prompt": "p\xff\xfe"}\n',
            r"d.jsonl:2: not UTF-8",
        ),
        (b'{"prompt": "p", "chosen": "a", "rejected": "b"}\n[1, 2]\n', r"d.jsonl:2: expected a JSON object"),
        (b'{"prompt": "p", "chosen": "a", "rejected": 3}\n', r"d.jsonl:1: field 'rejected' must be a string"),
        (b"\n\n", r"d.jsonl: no rows"),
    ],
)
def test_bad_files_name_file_line_and_field(tmp_path, content, match):
    f = tmp_path / "d.jsonl"
    f.write_bytes(content)
    with pytest.raises(DataError, match=match):
        read_jsonl(f)


def test_gzip_files_are_read_and_broken_ones_refused(tmp_path):
    good = tmp_path / "d.jsonl.gz"
    good.write_bytes(gzip.compress(b'{"prompt": "p", "chosen": "a", "rejected": "b"}\n'))
    assert read_jsonl(good)[0].where.endswith("d.jsonl.gz:1")
    bad = tmp_path / "e.jsonl.gz"
    bad.write_bytes(b"not gzip")
    with pytest.raises(DataError, match=r"e\.jsonl\.gz: not a readable gzip file"):
        read_rows(bad)


@pytest.mark.slow
def test_the_wheel_carries_the_data(tmp_path):
    """`pip wheel --no-deps .` → a wheel with every dataset, the manifest and the theory statement."""
    from pathlib import Path

    root = Path(__file__).resolve().parents[2]
    subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "-q", "-w", str(tmp_path), str(root)],
        check=True,
        capture_output=True,
    )
    (wheel,) = tmp_path.glob("rmgap-*.whl")
    names = set(zipfile.ZipFile(wheel).namelist())
    for e in catalog():
        assert f"lm_probes/data/datasets/{e['file']}" in names
    shipped = {"lm_probes/data/datasets/MANIFEST.json", "lm_probes/data/datasets/README.md"}
    assert shipped | {"theory/README.md", "rmgap/accelerate_configs/fsdp.yaml"} <= names
    assert "rmgap/experiments/persona.py" in names


def test_read_jsonl_names_file_line_and_field(tmp_path):
    f = tmp_path / "d.jsonl"
    f.write_text('{"prompt": "p", "chosen": "a", "rejected": "b"}\n{"prompt": "p", "chosen": "a"}\n')
    with pytest.raises(DataError, match=r"d.jsonl:2: missing field 'rejected'"):
        read_jsonl(f)
    f.write_text('{"prompt": "p", "chosen": "", "rejected": "b"}\n')
    with pytest.raises(DataError, match=r"d.jsonl:1: empty chosen response"):
        read_jsonl(f)
    f.write_text("{not json\n")
    with pytest.raises(DataError, match=r"d.jsonl:1: not valid JSON"):
        read_jsonl(f)
