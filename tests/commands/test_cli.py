"""The rmgap command line: one-line errors with exit status 2, --debug, the dataset list."""

from __future__ import annotations

import subprocess
import sys

import pytest

from rmgap.cli import main, run_command
from tests.conftest import run_rmgap


def test_a_broken_row_is_one_line_naming_file_and_line(tmp_path):
    broken = tmp_path / "broken.jsonl"
    broken.write_text('{"prompt": "p", "chosen": "a", "rejected": "b"}\n{"prompt": "p", "chosen": "a"}\n')
    code, out, err = run_rmgap("train", "--train", str(broken))
    assert code == 2
    assert err.strip() == f"rmgap train: error: {broken}:2: missing field 'rejected'"
    assert "Traceback" not in err + out


def test_non_utf8_and_missing_files_are_one_line(tmp_path):
    latin = tmp_path / "latin.jsonl"
    latin.write_bytes('{"prompt": "caf\xe9", "chosen": "a", "rejected": "b"}\n'.encode("latin-1"))
    code, _, err = run_rmgap("probe", "--data", str(latin))
    assert code == 2 and err.strip().startswith(f"rmgap probe: error: {latin}:1: not UTF-8 text")
    code, _, err = run_rmgap("persona", "--persona-file", str(tmp_path / "none.jsonl"))
    assert code == 2 and err.strip() == f"rmgap persona: error: {tmp_path / 'none.jsonl'}: no such file"
    assert len(err.strip().splitlines()) == 1


def test_debug_shows_the_traceback(tmp_path):
    broken = tmp_path / "b.jsonl"
    broken.write_text("{not json\n")
    code, _, err = run_rmgap("train", "--train", str(broken), "--debug")
    assert code != 0 and "Traceback" in err and "DataError" in err
    code, _, err = run_rmgap("train", "--train", str(broken), env={"RMGAP_DEBUG": "1"})
    assert "Traceback" in err


def test_run_command_tells_input_errors_from_bugs(capsys):
    def bad_input(argv):
        raise ValueError("data.jsonl:3: field 'x'\nis wrong")

    def bug(argv):
        raise KeyError("oops")

    assert run_command("train", bad_input, []) == 2
    assert capsys.readouterr().err == "rmgap train: error: data.jsonl:3: field 'x' is wrong\n"
    assert run_command("train", bug, []) == 1
    err = capsys.readouterr().err
    assert err.startswith("rmgap train: error: KeyError: 'oops'") and "--debug" in err
    with pytest.raises(KeyError):
        run_command("train", bug, ["--debug"])


def test_rmgap_data_lists_the_datasets(capsys):
    assert main(["data"]) == 0
    out = capsys.readouterr().out
    assert "ultrafeedback_french" in out and "CC-BY-4.0" in out and " 2000 " in out


def test_import_theory_does_not_need_cvxpy():
    code = (
        "import sys; sys.modules['cvxpy'] = None\n"
        "import theory, numpy as np\n"
        "print(theory.rho([1], np.zeros((1, 3)), [1], np.zeros((1, 3)))[0, 0])\n"
        "try:\n    theory.max_margin_separator(np.eye(2))\nexcept ImportError:\n    print('needs cvxpy')\n"
    )
    p = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert p.returncode == 0, p.stderr
    # uniform p = q over 3 tokens, same token: ρ = 1 − ⅓ − ⅓ + ⟨p, q⟩ = 1 − ⅔ + ⅓ = ⅔
    assert p.stdout.split() == ["0.6666666666666667", "needs", "cvxpy"]


def test_commands_that_run_in_one_process_refuse_several(monkeypatch, capsys):
    from rmgap.cli import main

    monkeypatch.setenv("WORLD_SIZE", "2")
    assert main(["probe", "persona"]) == 2
    err = capsys.readouterr().err
    assert "rmgap probe: error: runs in one process" in err and "mitigations" in err
