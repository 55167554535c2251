"""rmgap shifts on a tiny model and synthetic stand-ins of the shipped datasets (via RMGAP_DATA): the
split and the drop rule, pooled evaluation vs pair-by-pair scoring, per-token IM rewards summing to
the reward, the outputs and their keys, --resume, --combine, and bad input."""

from __future__ import annotations

import gzip
import json

import numpy as np
import pytest

from lm_probes.common import read_jsonl_rows
from rmgap.experiments import shifts
from tests.conftest import make_tiny_lm, write_shift_datasets

N_ROWS = 12


LONG = 6  # max_part_length used below: responses of more words are dropped


@pytest.fixture
def data_root(tmp_path, monkeypatch):
    """Synthetic datasets with the shipped names (tests.conftest.write_shift_datasets), via RMGAP_DATA."""
    root = write_shift_datasets(tmp_path / "data", N_ROWS)
    monkeypatch.setenv("RMGAP_DATA", str(root))
    return root


PRESET = {
    "train": dict(epochs=1, lr=1e-2, batch_size=4, micro_batch=2, beta=0.1),
    "n_train": {"ultrafeedback": 8, "rewardmath": 2},
    "n_eval": 5,
    "max_part_length": LONG,
}


def _run(out, *extra):
    return shifts.main(
        ["--out", str(out), "--quiet", "--n-boot", "200", *extra],
        lm_factory=lambda: make_tiny_lm(max_positions=128),
    )


def test_split_and_drop_rule(data_root):
    tok = make_tiny_lm().tokenizer
    d = shifts.shift_data(tok, "ultrafeedback", PRESET, seed=0, max_length=None)
    # training pairs are the rewrite files' originals (short: none dropped), 8 of 12
    assert len(d.train) == 8 and d.dropped_too_long["train"] == 0
    originals = {(r.chosen, r.rejected) for r in d.train}
    assert all(p.where.endswith("(original)") for p in d.train) and len(originals) == 8
    for name in shifts.EVAL_SETS:
        assert d.dropped_too_long[name] == 2 and d.n_available[name] == N_ROWS - 2
        assert len(d.eval[name]) == 5
        lines = [int(p.where.split(":")[-1]) for p in d.eval[name]]
        assert min(lines) >= 3  # rows 0 and 1 (lines 1, 2) were dropped, never truncated
    # the UltraFeedback test set and its rewrites keep the same rows (shared prompts)
    rows = {n: [p.where.split(":")[-1] for p in d.eval[n]] for n in shifts.UF_FAMILY}
    assert len({tuple(v) for v in rows.values()}) == 1
    assert [p.prompt for p in d.eval["ultrafeedback"]] == [p.prompt for p in d.eval["ultrafeedback_french"]]
    assert d.eval["train_subset"] == d.train[:5]
    other = shifts.shift_data(tok, "ultrafeedback", PRESET, seed=1, max_length=None)
    assert [p.where for p in other.eval["rewardmath"]] != [p.where for p in d.eval["rewardmath"]]


def test_rmgap_shifts_end_to_end_resume_and_combine(data_root, tmp_path, monkeypatch):
    monkeypatch.setitem(shifts.PRESETS, "cpu", PRESET)
    out = tmp_path / "run"
    res = _run(out)
    body = json.loads((out / "results.json").read_text())
    for name in shifts.EVAL_SETS:
        e = body["eval"][name]
        assert e["shift"] in ("in_distribution", "token_level", "domain")
        for m in ("ex_rm", "im_rm"):
            assert 0 <= e[m]["accuracy"] <= 1 and e[m]["normalized_abs_margin"] >= 0
        lo, hi = e["diff_ci95"]
        assert lo <= e["diff"] <= hi and e["winner"] in ("ex_rm", "im_rm", "tie")
        assert body["dropped_too_long"][name] == 2
    assert body["eval"]["ultrafeedback_french"]["shift"] == "token_level"
    assert body["eval"]["rewardmath"]["shift"] == "domain"
    for t in ("token_level", "domain"):
        w = body["win_rate"][t]
        assert w["n"] == 3 and w["ex_rm"] + w["im_rm"] + w["tie"] == pytest.approx(1)
    for name in shifts.REWRITES:
        q = body["rewrite_quality"][name]
        assert {"token_overlap", "chrf", "bleu", "length_ratio_chars"} <= set(q)
    assert body["config"]["train_set"] == "ultrafeedback" and "command" in body["config"]
    rows = read_jsonl_rows(out / "ex_rm" / "rewards_ultrafeedback_french.jsonl.gz")
    assert len(rows) == 5 and {"reward_chosen", "reward_rejected"} <= set(rows[0])
    assert (out / "im_rm" / "token_rewards_ultrafeedback_french.jsonl.gz").exists()
    assert not (out / "ex_rm" / "token_rewards_ultrafeedback_french.jsonl.gz").exists()
    assert (out / "table.md").read_text().count("| token_level |") >= 3
    assert (out / "win_rates.png").exists() and (out / "flips.jsonl.gz").exists()
    for f in read_jsonl_rows(out / "flips.jsonl.gz"):
        assert f["im_rm"][0] < f["im_rm"][1] and f["ex_rm"][0] > f["ex_rm"][1]
        assert sum(f["chosen_terms"]) == pytest.approx(f["im_rm"][0], abs=1e-9)
    # --resume reads the finished cells back: same numbers, no training; here from the folder as an
    # older rmgap wrote it (its per-row outputs uncompressed, under .jsonl; token rewards as now)
    flips = read_jsonl_rows(out / "flips.jsonl.gz")
    for f in out.rglob("*.jsonl.gz"):
        if not f.name.startswith("token_rewards_"):
            f.with_name(f.name.removesuffix(".gz")).write_bytes(gzip.decompress(f.read_bytes()))
            f.unlink()
    again = _run(out, "--resume")
    assert again["eval"]["rewardmath"]["diff"] == res["eval"]["rewardmath"]["diff"]
    assert again["eval"]["rewardmath"]["ex_rm"] == res["eval"]["rewardmath"]["ex_rm"]
    assert read_jsonl_rows(out / "flips.jsonl.gz") == flips and not (out / "flips.jsonl").exists()
    # a second run trained on RewardMATH, then both combined
    out2 = tmp_path / "run2"
    res2 = _run(out2, "--train-set", "rewardmath")
    assert res2["eval"]["rewardmath"]["shift"] == "in_distribution"
    assert res2["eval"]["ultrafeedback"]["shift"] == "domain"
    comb = shifts.main(["--combine", str(out), str(out2), "--out", str(tmp_path / "both")])
    assert comb["win_rate"]["token_level"]["n"] == 6 and comb["win_rate"]["domain"]["n"] == 6
    assert (tmp_path / "both" / "table.md").exists()
    # an IM-RM mitigation against the first run's EX-RM (copied, not retrained), here recorded by an
    # older rmgap whose TrainConfig lacked the mitigation options (they count at their defaults)
    ex_summary = out / "ex_rm" / "summary.json"
    old = json.loads(ex_summary.read_text())
    for k in ("token_dropout", "consistency", "freeze", "unembedding_l2"):
        del old["config"][k]
    ex_summary.write_text(json.dumps(old))
    out3 = tmp_path / "mitigated"
    res3 = _run(out3, "--mitigation", "consistency", "--explicit-from", str(out))
    assert res3["eval"]["rewardmath"]["ex_rm"] == res["eval"]["rewardmath"]["ex_rm"]
    im = json.loads((out3 / "im_rm" / "summary.json").read_text())["config"]
    assert im["consistency"] == 1.0 and res3["config"]["mitigation"] == "consistency"
    assert not (out3 / "ex_rm" / "checkpoint.pt").exists()
    # ... and the mitigated IM-RM against that run's plain IM-RM, on the same pairs
    eff = res3["mitigation_effect"]
    assert eff["plain_from"] == str(out)
    for name, e in eff["sets"].items():
        assert e["plain"]["accuracy"] == res["eval"][name]["im_rm"]["accuracy"]
        assert e["mitigated"]["accuracy"] == res3["eval"][name]["im_rm"]["accuracy"]
        assert e["diff"] == pytest.approx(e["mitigated"]["accuracy"] - e["plain"]["accuracy"])
        assert e["diff_ci95"][0] <= e["diff"] <= e["diff_ci95"][1]
    assert "against the plain IM-RM" in (out3 / "table.md").read_text()


def test_seeds_aggregate(data_root, tmp_path, monkeypatch):
    monkeypatch.setitem(shifts.PRESETS, "cpu", PRESET)
    res = _run(tmp_path / "s", "--seeds", "0,1", "--objectives", "ex_rm,im_rm")
    e = res["eval"]["ultrafeedback"]
    assert len(e["ex_rm"]["accuracy_per_seed"]) == 2
    assert e["ex_rm"]["accuracy"] == pytest.approx(np.mean(e["ex_rm"]["accuracy_per_seed"]))
    assert (tmp_path / "s" / "seed1" / "im_rm" / "summary.json").exists()


def test_bad_input_is_one_line(data_root, tmp_path, capsys):
    from rmgap.cli import run_command

    def tiny(argv):
        return shifts.main(argv, lm_factory=lambda: make_tiny_lm(max_positions=128))

    (data_root / "rewardbench_code" / "test.jsonl").write_text('{"prompt": "is", "chosen": "yes"}\n')
    code = run_command("shifts", tiny, ["--out", str(tmp_path / "x"), "--quiet"])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and err[-1].startswith("rmgap shifts: error:") and "rewardbench_code/test:1" in err[-1]
    assert "rejected" in err[-1]
    code = run_command("shifts", tiny, ["--combine", str(tmp_path / "nothing"), "--out", str(tmp_path / "y")])
    assert code == 2 and "no results.json" in capsys.readouterr().err
