"""benchmarks/probe_1b.py runs end to end at its small shape (the 1B-shaped run is a benchmark, not a
test: its JSON is committed under benchmarks/results/)."""

from __future__ import annotations

import importlib.util
import itertools
import json
from pathlib import Path

import pytest

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
    assert set(out["peak_gib_by_phase"]) <= {*out["timings"], "between phases"}


def test_phase_peaks_files_memory_under_the_phase_in_progress():
    """probe_1b.PhasePeaks: a sample lands under Timer.current (nested phases restore the outer one)."""
    import mmap
    import time

    import numpy as np

    from lm_probes.common import Timer

    bench, timer = _load("probe_1b"), Timer()
    with bench.PhasePeaks(timer, every=0.01) as peaks:
        with timer("small"):
            time.sleep(0.1)
        with timer("big"):
            # 1 GiB of fresh pages, made resident by writing them: an anonymous mapping, since after
            # other tests malloc may serve np.ones from freed memory that is resident already
            buf = mmap.mmap(-1, 2**30)
            np.frombuffer(buf, dtype=np.uint8)[:] = 1
            with timer("inner"):
                time.sleep(0.1)
            assert timer.current == "big"
            time.sleep(0.1)
            buf.close()
    assert timer.current is None
    assert peaks.gib["big"] > peaks.gib["small"] + 0.9 and set(peaks.gib) >= {"small", "big", "inner"}


def _load(name):
    spec = importlib.util.spec_from_file_location(name, ROOT / "benchmarks" / f"{name}.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def test_the_limit_counts_the_products_that_ran_inside_the_timed_ranges():
    """benchmarks/_limit.py: the profiled products are exactly those of the labelled range, with their
    FLOPs (a linear layer's forward and both backward products; the untimed one left out)."""
    import torch
    from torch.profiler import record_function

    limit = _load("_limit")
    w = torch.randn(48, 32, requires_grad=True)
    x, z = torch.randn(16, 32, requires_grad=True), torch.randn(5, 7)

    def work():
        z @ z.T  # outside the timed range
        with record_function("timed"):
            (x @ w.T).sum().backward()

    gemms = limit.profile_gemms(work, within=("timed",))
    flops = sum(limit.gemm_flops(op, shapes) for op, shapes in gemms)
    assert len(gemms) == 3 and flops == 3 * 2 * 16 * 32 * 48
    lim = limit.replay_limit(gemms, repeat=2)
    assert lim["flops"] == flops and lim["seconds"] > 0
    share = limit.share_of_limit(2 * lim["seconds"], lim, formula_flops=flops)
    assert share["of_limit"] == 0.5 and share["flop_check"] == 1.0 and not share["limit_beaten"]


def test_the_dispatch_recorder_lists_what_the_profiler_lists_for_a_training_step(tiny_lm):
    """record_gemms (train_1b's lean listing) = profile_gemms for forward, backward and an Adam update
    of a real model: the same products, shapes and order."""
    import torch

    limit = _load("_limit")
    model = tiny_lm.model
    ids = torch.randint(0, model.config.vocab_size, (3, 7))
    opt = torch.optim.Adam(model.parameters(), lr=1e-4)

    def step():
        model(input_ids=ids).logits.logsumexp(-1).mean().backward()
        opt.step()
        opt.zero_grad(set_to_none=True)

    recorded, profiled = limit.record_gemms(step), limit.profile_gemms(step)
    assert recorded == profiled and len(recorded) > 3 * model.config.num_hidden_layers
    assert {op for op, _ in recorded} >= {"aten::mm"}

    def labelled():  # (train.py keeps the trainer's timed ranges only)
        with torch.profiler.record_function("outer"):
            model(input_ids=ids[:1])
            with torch.profiler.record_function("timed"):
                step()
        model(input_ids=ids[:2])

    inside = limit.record_gemms(labelled, within=("timed",))
    assert inside == limit.profile_gemms(labelled, within=("timed",)) == recorded
    assert len(limit.record_gemms(labelled, within=("outer",))) > len(inside)


def test_training_steps_update_after_every_accumulate_micro_batches_and_after_the_last(tiny_lm, monkeypatch):
    """benchmarks/_limit.training_steps takes Adam updates as the trainer does: after the warm-up's
    micro-batch, then every ``accumulate`` timed micro-batches and after the last (the same on the
    recording pass); the gradients of micro-batches between updates accumulate."""
    import torch

    from lm_probes.data.pairs import Pair, encode_pairs
    from lm_probes.rm.config import TrainConfig
    from lm_probes.rm.reward_model import RewardModel

    limit = _load("_limit")
    updates = []
    real = torch.optim.Adam.step

    def counted(self, *a, **k):
        updates.append(1)
        return real(self, *a, **k)

    monkeypatch.setattr(torch.optim.Adam, "step", counted)
    rm = RewardModel(tiny_lm, TrainConfig(objective="ex_rm", lr=1e-4, progress=False))
    pairs = [Pair("the cat", "sat on the mat", "ran away"), Pair("a dog", "barked", "slept all day")]
    encs = encode_pairs(tiny_lm.tokenizer, pairs, chat_template=False).encodings
    batches = [[encs[i % 2]] for i in range(5)]  # a warm-up and 4 timed micro-batches
    for accumulate, n in ((1, 1 + 4 + 4), (3, 1 + 2 + 2), (4, 1 + 1 + 1)):
        updates.clear()
        run = limit.training_steps(rm, batches, lr=1e-4, repeat=1, accumulate=accumulate)
        assert len(updates) == n and run["seconds"] > 0 and run["limit"]["flops"] > 0


def test_the_dynamics_engine_benchmark_lists_the_products_the_engine_runs(monkeypatch):
    """benchmarks/dynamics_engine.py's limit replays the route's products: for the rho route, the very
    parts the engine splits its products into on two cores (every chunk's ẽ_a ẽ_bᵀ and H̄ Hᵀ); for
    both routes, FLOPs that are the route's formula."""
    import theory._vocab as vocab
    from theory import dynamics

    bench = _load("dynamics_engine")
    monkeypatch.setenv("RMGAP_THREADS", "2")
    monkeypatch.setattr(vocab, "_MIN_PARALLEL", 0)
    monkeypatch.setattr(vocab, "CHUNK_BYTES", 1)  # the smallest chunk, 1024 columns: 3 chunks of V = 3000
    ran, real = [], vocab.add_products

    def spy(inner, a, b):
        split_a, parts = vocab.product_parts(a.shape[0], b.shape[0], a.shape[1])
        ran.extend(((r1 - r0) if split_a else a.shape[0], a.shape[1], b.shape[0] if split_a else r1 - r0)
                   for r0, r1 in parts)  # fmt: skip
        real(inner, a, b)

    monkeypatch.setattr(dynamics, "add_products", spy)
    rng = bench.np.random.default_rng(0)
    bar, plus, minus = (bench.make_states(rng, k, 3000, 16, bench.np.float64) for k in (8, 8, 8))
    dynamics.im_reward_change(bar, plus, minus, beta=0.1, lr=1.0, g=0.5)
    listed = bench.products(8, 16, 3000, 16, bench.np.float64)
    assert sorted(ran) == sorted((m, k, n) for m, k, n, c, _ in listed for _ in range(c))
    assert len(ran) == 8  # 4 products (3 chunks, H̄ Hᵀ) in 2 parts each
    monkeypatch.undo()
    for k, d in ((128, 2048), (512, 64)):  # rho route, gradient route
        prods = bench.products(k, 2 * k, 32_000, d, bench.np.float64)
        flops = sum(2.0 * m * kk * n * c for m, kk, n, c, _ in prods)
        assert flops == bench.route_flops(k, 2 * k, 32_000, d)


def test_the_dynamics_engine_benchmark_times_the_whole_elementwise_pass(monkeypatch):
    """elementwise_pass exponentiates every vocabulary column of both sides (ȳ, and y+ with y−
    stacked) into buffers of the route's chunk, and the ceiling is limit / (limit + that time)."""
    bench = _load("dynamics_engine")
    np = bench.np
    seen = []
    real = bench.Rows.exp_into

    def spy(self, c0, c1, shift, out):
        seen.append((self.n, c0, min(c1, self.vocab), out.shape))
        return real(self, c0, c1, shift, out)

    monkeypatch.setattr(bench.Rows, "exp_into", spy)
    monkeypatch.setattr(bench, "auto_chunk", lambda rows, vocab, dtype: 700)
    rng = np.random.default_rng(0)
    bar, plus, minus = (bench.make_states(rng, k, 3000, 16, np.float64) for k in (5, 7, 4))
    bench.elementwise_pass(bar, plus, minus, np.float64)()
    for n in (5, 11):
        calls = [c for c in seen if c[0] == n]
        assert len(calls) == 5  # 5 chunks
        cols = sorted({(c0, c1) for _, c0, c1, _ in calls})
        assert cols[0][0] == 0 and cols[-1][1] == 3000
        assert all(a[1] == b[0] for a, b in itertools.pairwise(cols))
        assert {shape for *_, shape in calls} == {(n, 700)}
    monkeypatch.undo()
    row = bench.bench_one(rng, 32, 3000, 64, np.float64, 1, False)  # (K ≥ 16: it splits ȳ in 16)
    assert row["route"] == "rho" and row["elementwise_seconds"] > 0
    assert row["ceiling"] == row["limit_seconds"] / (row["limit_seconds"] + row["elementwise_seconds"])
    assert row["unsplit_seconds"] > 0 and bench.vocab.SPLIT  # the same call unsplit, and SPLIT restored
    assert row["limit_seconds"] == min(row["limit_parts_seconds"], row["limit_whole_seconds"])  # never eased
    assert row["of_limit"] * row["seconds"] == pytest.approx(row["unsplit_of_limit"] * row["unsplit_seconds"])
    assert len(row["copy_gbs_by_round"]) == 1


def test_the_1b_shaped_training_benchmark_runs_at_its_small_shape(tmp_path):
    """The FLOP formula counts the tokens the model ran (a prompt shared by a micro-batch's pairs runs
    once, lm_probes.lm.scoring), so it matches the recorded products up to padding: it neither counts
    shared prompts twice (ratio > 1) nor misses work."""
    out = _load("train_1b").main(["--shape", "tiny", "--steps", "1", "--micro-batch", "2"])
    assert set(out["rows"]) == {"im_rm", "ex_rm"}
    for r in out["rows"].values():
        assert r["tokens"] > r["tokens_run"] > 0 and r["of_limit"] > 0
        assert r["fused_adam"] is True  # (the trainer's Adam, recorded)
    assert len(out["revision"]) == 40 and "uncommitted_changes" in out
    # (presumably: the EX-RM reads only the responses' states, so the prompt pass's last layer gets no
    # gradient and autograd skips its backward, which the formula counts: above 1 at this 2-layer shape)
    assert 0.9 <= out["rows"]["im_rm"]["flop_check"] <= 1.0 + 1e-9
    assert 0.9 <= out["rows"]["ex_rm"]["flop_check"] <= 1.2
    from lm_probes.lm import scoring

    args = ["--shape", "tiny", "--steps", "1", "--micro-batch", "2", "--scoring", "whole"]
    whole = _load("train_1b").main(args)
    assert whole["scoring"] == "whole" and scoring.SHARE_GAIN == 1.1  # (the rule restored)
    for r in whole["rows"].values():  # every sequence run whole: the model ran all its tokens
        assert r["tokens"] == r["tokens_run"] and 0.9 <= r["flop_check"] <= 1.2


def test_tokens_run_counts_what_the_decoder_ran(tiny_lm):
    """_limit.TokensRun: shared prompts count once (cached mode), whole sequences whole, passes without
    gradient apart, and each row's keys (a response attends its prompt too) for the attention formula."""
    import torch

    from lm_probes.common import attention_flops
    from lm_probes.lm.encoding import pad_id_of
    from lm_probes.lm.scoring import head_is_linear, score
    from tests.lm.test_scoring import _pairs_of_uneven_prompts

    lim = _load("_limit")
    encs, pad = _pairs_of_uneven_prompts(tiny_lm.tokenizer), pad_id_of(tiny_lm.tokenizer)
    head_is_linear(tiny_lm.model)  # (its once-per-model check runs the decoder too)
    whole = sum(len(e.input_ids) for e in encs)
    shared = sum(e.prompt_len for e in encs[::2]) + sum(e.response_len for e in encs)
    with lim.TokensRun(tiny_lm.model) as run:
        score(tiny_lm.model, encs, pad, mode="cached")
        with torch.no_grad():
            score(tiny_lm.model, encs, pad, mode="whole")
    assert (run.grad, run.no_grad) == (shared, whole) and shared < whole
    prompts = [(e.prompt_len, e.prompt_len) for e in encs[::2]]
    answers = [(e.response_len, len(e.input_ids)) for e in encs]
    wholes = [(len(e.input_ids), len(e.input_ids)) for e in encs]
    assert sorted(run.rows) == sorted(prompts + answers + wholes)
    q, k = zip(*answers, strict=True)
    assert attention_flops(q, 2, 8, keys=k) == 3 * sum(4 * a * b * 2 * 8 for a, b in answers)
    with lim.TokensRun(tiny_lm.model) as after:
        pass
    score(tiny_lm.model, encs, pad, mode="whole")
    assert after.grad == 0  # the hook is removed on exit


def test_shared_prompts_times_each_mode_as_asked_and_restores_the_rule(tiny_lm, monkeypatch):
    """benchmarks/shared_prompts.py: each batch runs twice in each mode (the cached passes counted),
    auto's choice follows shared_prompt_gain, and the rule is restored after."""
    from lm_probes.data.pairs import encode_pairs
    from lm_probes.lm import scoring
    from lm_probes.rm.config import TrainConfig
    from lm_probes.rm.reward_model import RewardModel
    from tests.conftest import TRAIN

    bench, rule = _load("shared_prompts"), scoring.SHARE_GAIN
    rm = RewardModel(tiny_lm, TrainConfig(objective="im_rm"))
    encs = encode_pairs(tiny_lm.tokenizer, TRAIN).encodings
    rm.fill_reference([e for p in encs for e in p])
    calls, cached, whole = [], scoring._cached_pass, scoring._whole_pass
    monkeypatch.setattr(scoring, "_cached_pass", lambda *a: calls.append("C") or cached(*a))
    monkeypatch.setattr(scoring, "_whole_pass", lambda *a: calls.append("W") or whole(*a))
    rows = bench.timed(rm, [encs[:2], encs[2:]])
    assert scoring.SHARE_GAIN == rule and calls == list("WCWC" * 2)  # (each batch: one pass a mode)
    for r, b in zip(rows, [encs[:2], encs[2:]], strict=True):
        assert r["gain"] == scoring.shared_prompt_gain([e for p in b for e in p])
        assert (
            r["auto"] == ("cached" if r["gain"] >= rule else "whole") and r["auto_s"] == r[f"{r['auto']}_s"]
        )
    s = bench.summary(rows)
    assert s["seconds"]["auto"] == sum(r["auto_s"] for r in rows) and s["batches"] == 2


def test_the_probe_benchmark_writes_the_numbers_it_prints(tmp_path):
    """benchmarks/probe.py (SmolLM2, --quick: 20 evaluation responses) writes its breakdown: the
    model-pass and dynamics seconds are the probe's own timings, the savings the scoring passes'."""
    out = _load("probe").main(["--quick", "--json", str(tmp_path / "p.json")])
    got = json.loads((tmp_path / "p.json").read_text())
    assert got["n_eval_responses"] == 20 == out["n_eval_responses"]
    assert got["command"].endswith("--quick --json " + str(tmp_path / "p.json"))
    t = got["timings"]
    assert got["model_seconds"] == sum(v for k, v in t.items() if k.startswith("model")) > 0
    assert got["dynamics_seconds"] == t["dynamics arithmetic"] and 0 < got["dynamics_fraction"] < 1
    s = got["scoring_pass_seconds"]
    assert got["head_saving"] == s["full logits"] / s["head at responses"]
    assert got["cache_saving"] == s["head at responses"] / s["prompt cache"]


def test_the_routing_benchmark_measures_each_configuration_in_its_own_process(tmp_path):
    """benchmarks/into_grad.py at the small shape: four fresh processes, the same gradient with routing
    on and off, and routing's saving on the later micro-batches (the tied 128k × 64 embedding's
    gradient no longer held beside .grad: about 31 MiB here)."""
    out = _load("into_grad").main(
        [
            "--shape",
            "tiny",
            "--micro-batches",
            "2",
            "--objectives",
            "im_rm",
            "--json",
            str(tmp_path / "r.json"),
        ]
    )
    assert json.loads((tmp_path / "r.json").read_text()) == json.loads(json.dumps(out))
    got = out["objectives"]["im_rm"]
    assert [(r["mode"], r["routed"]) for r in got["rows"].values()] == _load("into_grad").CONFIGS
    for mode, saved in got["later_peak_saved_gib"].items():
        off, on = got["rows"][f"{mode}, routing off"], got["rows"][f"{mode}, routing on"]
        assert saved == off["later_peak_gib"] - on["later_peak_gib"] > 0.02
        assert abs(on["grad_norm"] - off["grad_norm"]) <= 1e-5 * off["grad_norm"]


def test_the_adam_benchmark_times_the_three_ways_on_the_same_start(tmp_path):
    bench = _load("adam")
    out = bench.main(["--matrices", "1", "--repeat", "1", "--json", str(tmp_path / "a.json")])
    assert json.loads((tmp_path / "a.json").read_text())["rows"].keys() == bench.WAYS.keys()
    assert out["rows"]["default (for-loop)"]["max_rel_diff_from_default"] == 0.0
    assert 0 < out["rows"]["fused"]["max_rel_diff_from_default"] < 1e-5  # (a different kernel, same step)
    assert out["parameters"] == 8192 * 2048


def test_the_limit_keeps_each_products_best_over_rounds_spread_over_the_replay():
    """benchmarks/_limit.py: every product is replayed once per round, rounds outermost, and keeps
    its best round (so a slow moment of the machine costs no product its best)."""
    import time

    _spread_best = _load("_limit")._spread_best

    made, waits = [], {"a": [0.03, 0.001, 0.02], "b": [0.001, 0.03, 0.02]}

    def make(item):
        made.append(item)
        wait = waits[item][sum(m == item for m in made) - 1]
        return (lambda: time.sleep(wait)), 1

    best = _spread_best(["a", "b"], make, 3)
    assert made == ["a", "b"] * 3
    assert all(0.001 <= t < 0.015 for t in best)


def test_benchmarks_record_the_code_they_ran(tmp_path):
    """_limit.provenance: this checkout's HEAD and whether tracked files differ from it; None for
    both outside a git checkout (an installed copy)."""
    import subprocess

    prov = _load("_limit").provenance
    head = subprocess.run(["git", "-C", str(ROOT), "rev-parse", "HEAD"], capture_output=True, text=True)
    dirty = subprocess.run(["git", "-C", str(ROOT), "status", "--porcelain", "--untracked-files=no"],
                           capture_output=True, text=True).stdout.strip() != ""  # fmt: skip
    assert prov() == {"revision": head.stdout.strip(), "uncommitted_changes": dirty}
    assert prov(tmp_path) == {"revision": None, "uncommitted_changes": None}
