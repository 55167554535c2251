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


def test_the_dynamics_engine_benchmark_lists_the_products_the_engine_runs():
    """benchmarks/dynamics_engine.py's limit replays the route's products: their FLOPs are the route's
    formula, for both routes."""
    bench = _load("dynamics_engine")
    for k, d in ((128, 2048), (512, 64)):  # rho route, gradient route
        prods = bench.products(k, 2 * k, 32_000, d, bench.np.float64)
        flops = sum(2.0 * m * kk * n * c for m, kk, n, c, _ in prods)
        assert flops == bench.route_flops(k, 2 * k, 32_000, d)


def test_the_1b_shaped_training_benchmark_runs_at_its_small_shape(tmp_path):
    """(The formula / profiled FLOP ratio exceeds 1 where a micro-batch's pairs share a prompt: the
    trainer runs it once for all their responses, lm_probes.lm.scoring, while the formula counts every
    sequence whole.)"""
    out = _load("train_1b").main(["--shape", "tiny", "--steps", "1", "--micro-batch", "2"])
    assert set(out["rows"]) == {"im_rm", "ex_rm"}
    for r in out["rows"].values():
        assert r["tokens"] > 0 and r["of_limit"] > 0 and r["flop_check"] >= 0.9


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
