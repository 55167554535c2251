"""lm_probes.rm.config: every numeric training setting is range-checked before work, in one line that
names the flag (issue 23, first part); the probe's step size too."""

from __future__ import annotations

import pytest


@pytest.mark.parametrize(
    "field, value, flag",
    [
        ("epochs", -2, "--epochs"),
        ("lr", 0.0, "--lr"),
        ("lr", float("nan"), "--lr"),
        ("lr", -1e-3, "--lr"),
        ("beta", 0.0, "--beta"),
        ("beta", -0.1, "--beta"),
        ("beta", 1e30, "--beta"),
        ("batch_size", 0, "--batch-size"),
        ("micro_batch", -1, "--micro-batch"),
        ("seed", -1, "--seed"),
        ("max_part_length", 0, "--max-part-length"),
    ],
)
def test_every_numeric_setting_is_range_checked_in_one_line_naming_the_flag(field, value, flag):
    from lm_probes.rm.config import TrainConfig

    kw = {field: value, **({"micro_batch": 1} if field == "batch_size" else {})}
    with pytest.raises(ValueError, match=f"^{field} \\({flag}\\) must be") as exc:
        TrainConfig(**kw).check()
    assert "\n" not in str(exc.value)


def test_the_probe_refuses_a_nan_step_size():
    from lm_probes.probe.one_step import ProbeConfig

    with pytest.raises(ValueError, match=r"lr \(--lr\) must be a finite number"):
        ProbeConfig(lr=float("nan"))
    assert ProbeConfig(lr=1e-4).lr == 1e-4


def test_train_refuses_bad_settings_before_the_model_loads(tmp_path):
    from tests.conftest import run_rmgap

    data = tmp_path / "p.jsonl"
    data.write_text('{"prompt": "a", "chosen": "b", "rejected": "c"}\n')
    code, _, err = run_rmgap("train", "--train", str(data), "--epochs", "0", "--out", str(tmp_path / "o"))
    assert code == 2 and "epochs (--epochs) must be an integer ≥ 1, got 0" in err and "Traceback" not in err
    assert not (tmp_path / "o").exists()
