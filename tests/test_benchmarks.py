"""benchmarks/probe_1b.py runs end to end at its small shape (the 1B-shaped run is a benchmark, not a
test: its JSON is committed under benchmarks/results/)."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_the_1b_shaped_probe_benchmark_runs_at_its_small_shape(tmp_path):
    spec = importlib.util.spec_from_file_location("probe_1b", ROOT / "benchmarks" / "probe_1b.py")
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    out = bench.main(["--shape", "tiny", "--eval-statements", "1", "--json", str(tmp_path / "r.json")])
    assert json.loads((tmp_path / "r.json").read_text())["n_eval_responses"] == 10 == out["n_eval_responses"]
    assert out["n_parameters"] > 128256 * 64  # the 1B vocabulary, at a small width
    assert min(out["pearson_first_order"].values()) > 0.99 and out["peak_gib"] > 0
    assert set(out["meets"]) == {"seconds", "peak_gib", "pearson_first_order"}
