"""The machine's limit for a piece of work, measured so that no benchmark can beat it: the work's own
matrix products, at the shapes it runs them, each timed alone (best of several runs), summed.

    gemms = profile_gemms(lambda: step(batch))          # torch: every mm/addmm/bmm the work ran
    lim = replay_limit(gemms, repeat=5)                  # Σ count · best time of each shape alone (5 rounds)
    ratio = lim["seconds"] / work_seconds                # ≤ 1: the work runs these products and more

Why not a square n×n matmul: its rate depends on n and on the moment it is measured. Measured once
at start-up, it let training report 118–133 % "of the matmul rate" (issue 26). The products a step
really runs (skinny activations × weights, attention's batched products) go at their own rates,
and the step's time holds them all plus everything else, so the share of the step's time that
these products alone would take is at most 1, up to timing noise between the best-of runs; a
ratio above 1 is reported as the limit beaten, never clipped. The FLOPs the products do (counted
by torch's profiler, or by record_gemms's dispatch mode) are returned to check the FLOP formulas
the benchmarks report rates with.
"""

from __future__ import annotations

import contextlib
import subprocess
import time
from collections import Counter
from pathlib import Path

GEMM_OPS = ("aten::mm", "aten::addmm", "aten::bmm", "aten::baddbmm")
ROUND = 8  # at most this many calls of one product back to back per timed round


def profile_gemms(fn, within: tuple[str, ...] = ()) -> list[tuple]:
    """Run ``fn`` once under torch's profiler; the matrix products it ran, one (op, (shape_a, shape_b))
    per call: the two operands' shapes as the profiler records them (addmm's bias left out).
    ``within``: keep only the products that started inside a ``torch.profiler.record_function`` range
    of one of these names (the trainer labels its timed parts so)."""
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CPU], record_shapes=True) as prof:
        fn()
    events = prof.events()
    ranges = [(e.time_range.start, e.time_range.end) for e in events if e.name in within]
    out = []
    for e in events:
        if e.name in GEMM_OPS and (not within or any(a <= e.time_range.start <= b for a, b in ranges)):
            shapes = tuple(tuple(s) for s in e.input_shapes if len(s) >= 2)[-2:]
            out.append((e.name, shapes))
    return out


def record_gemms(fn, within: tuple[str, ...] = ()) -> list[tuple]:
    """The same list as profile_gemms, recorded by a dispatch mode instead of the profiler: no event
    store, so it fits beside a 1B model's training step (benchmarks/train_1b.py) and a whole epoch
    with shared prompts (benchmarks/train.py: the profiler's events for 160 pairs outgrew 24 GiB).
    ``within``: only inside record_function ranges of these names (their enter and exit reach the
    mode as ops)."""
    import torch
    from torch.utils._python_dispatch import TorchDispatchMode

    out, ranges = [], []
    enter = torch.ops.profiler._record_function_enter_new.default
    leave = torch.ops.profiler._record_function_exit._RecordFunction

    class Recorder(TorchDispatchMode):
        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            if func is enter:
                ranges.append(args[0])
            elif func is leave:
                ranges.pop()
            op = f"aten::{func._overloadpacket.__name__}"
            if op in GEMM_OPS and (not within or any(r in within for r in ranges)):
                mats = [a for a in args if isinstance(a, torch.Tensor) and a.dim() >= 2]
                out.append((op, tuple(tuple(m.shape) for m in mats[-2:])))
            return func(*args, **(kwargs or {}))

    with Recorder():
        fn()
    return out


def gemm_flops(op: str, shapes) -> float:
    """2·m·k·n (times the batch for bmm) of one product."""
    a, b = shapes
    batch = a[0] if op in ("aten::bmm", "aten::baddbmm") else 1
    return 2.0 * batch * a[-2] * a[-1] * b[-1]


def provenance(folder: Path | None = None) -> dict:
    """The code a benchmark ran: the git revision of ``folder``'s checkout and whether tracked files
    differed from it (None for both outside a git checkout), to be written beside its numbers.
    ``folder``: benchmarks/ by default."""
    folder = folder or Path(__file__).resolve().parent

    def git(*args):
        out = subprocess.run(["git", "-C", str(folder), *args], capture_output=True, text=True, check=False)
        return out.stdout.strip() if out.returncode == 0 else None

    try:
        rev = git("rev-parse", "HEAD")
        dirty = git("status", "--porcelain", "--untracked-files=no")
    except OSError:  # (no git)
        rev = dirty = None
    return {"revision": rev, "uncommitted_changes": None if rev is None or dirty is None else bool(dirty)}


def _best(fn, repeat: int, calls: int = 1) -> float:
    """Best time per call of ``fn`` over ``repeat`` rounds of ``calls`` back-to-back calls (as the
    work runs its products: threads stay awake between them), after one warm-up round."""
    for _ in range(calls):
        fn()
    best = float("inf")
    for _ in range(repeat):
        t0 = time.perf_counter()
        for _ in range(calls):
            fn()
        best = min(best, (time.perf_counter() - t0) / calls)
    return best


def _spread_best(items: list, make, repeat: int) -> list[float]:
    """Best time per call of each item's product over ``repeat`` rounds, each of which replays every
    item once (``make(item)`` → (fn on fresh operands, calls): a warm-up, then ``calls`` back-to-back
    calls). Rounds are spread over the whole replay, so that a product's tries do not all fall in
    one slow spell of this shared machine, whose speed was seen to change for seconds at a time."""
    best = [float("inf")] * len(items)
    for _ in range(repeat):
        for i, item in enumerate(items):
            fn, calls = make(item)
            best[i] = min(best[i], _best(fn, 1, calls))
    return best


def replay_limit(gemms, repeat: int = 5, dtype=None) -> dict:
    """Σ over the distinct products of (count × best time per call of that product alone over
    ``repeat`` rounds spread over the replay, in runs of up to ROUND calls), with torch on fresh
    contiguous operands of the same shapes and dtype; and their FLOPs."""
    import torch

    dtype = dtype or torch.get_default_dtype()
    items = list(Counter(gemms).items())

    def make(item):
        (_, (sa, sb)), n = item
        a, b = torch.randn(sa, dtype=dtype), torch.randn(sb, dtype=dtype)
        mm = torch.bmm if len(sa) == 3 else torch.mm
        return (lambda: mm(a, b)), min(n, ROUND)

    best = _spread_best(items, make, repeat)
    seconds = sum(n * t for (_, n), t in zip(items, best, strict=True))
    flops = sum(n * gemm_flops(op, shapes) for (op, shapes), n in items)
    return {"seconds": seconds, "flops": flops, "gflops": flops / seconds / 1e9, "distinct": len(items)}


def numpy_replay_limit(products, repeat: int = 5, dtype=None) -> dict:
    """The same for numpy products given as (m, k, n, count, layout): a (m, k) times b (k, n), with
    layout "nn" (``a @ b``), "nt" (``a @ b.T``, b stored (n, k)) or "tn" (``a.T @ b``, a stored
    (k, m)), as the work calls them. ``each``: every product's count × best time."""
    import numpy as np

    rng = np.random.default_rng(0)

    def make(item):
        m, k, n, count, layout = item
        a = rng.standard_normal((k, m) if layout == "tn" else (m, k)).astype(dtype)
        b = rng.standard_normal((n, k) if layout == "nt" else (k, n)).astype(dtype)
        fn = {"nn": lambda: a @ b, "nt": lambda: a @ b.T, "tn": lambda: a.T @ b}[layout]
        return fn, min(count, ROUND)

    best = _spread_best(list(products), make, repeat)
    each = [p[3] * t for p, t in zip(products, best, strict=True)]
    flops = sum(2.0 * m * k * n * count for m, k, n, count, _ in products)
    seconds = sum(each)
    return {"seconds": seconds, "flops": flops, "gflops": flops / seconds / 1e9, "each": each}


def share_of_limit(work_seconds: float, limit: dict, formula_flops: float | None = None) -> dict:
    """The work against its limit: ``of_limit`` = limit seconds / work seconds (≤ 1 unless timing noise
    beat the best-of runs, then ``limit_beaten``), the achieved and limit GFLOP/s, and the formula's
    FLOPs over the products' counted ones (``flop_check``; 1 when the formula counts what ran)."""
    out = {
        "work_seconds": work_seconds,
        "limit_seconds": limit["seconds"],
        "limit_gflops": limit["gflops"],
        "gemm_flops": limit["flops"],
        "of_limit": limit["seconds"] / work_seconds,
    }
    out["limit_beaten"] = out["of_limit"] > 1.0
    if formula_flops is not None:
        out["formula_gflops"] = formula_flops / work_seconds / 1e9
        out["flop_check"] = formula_flops / limit["flops"]
    return out


class TokensRun:
    """What a model's decoder ran, read off a forward pre-hook: real new tokens (the attention mask over
    the pass's new positions) in passes with gradient (``grad``: training) and without (``no_grad``),
    and each row's (new tokens, keys they attend) in ``rows`` for the attention formula. The scorer
    runs a prompt once for all its responses when that saves tokens (lm_probes.lm.scoring's cached
    mode), so these can be fewer than the sequences' tokens; the FLOP formula is checked on them.

        with TokensRun(lm.model) as run:
            rm.fill_reference(encs)                      # run.no_grad: the tokens it ran"""

    def __init__(self, model):
        self.decoder = model.get_decoder()
        self.grad = self.no_grad = 0
        self.rows: list[tuple[int, int]] = []

    def _hook(self, module, args, kwargs):
        import torch

        ids = kwargs.get("input_ids", args[0] if args else None)
        if ids is None:  # (scoring's cached mode passes the looked-up embeddings)
            ids = kwargs["inputs_embeds"][..., 0]
        mask = kwargs.get("attention_mask")
        if mask is None:
            mask = torch.ones(ids.shape[:2], dtype=torch.long)
        new, keys = mask[:, -ids.shape[1] :].sum(1).tolist(), mask.sum(1).tolist()
        self.rows += list(zip(new, keys, strict=True))
        if torch.is_grad_enabled():
            self.grad += sum(new)
        else:
            self.no_grad += sum(new)

    def __enter__(self):
        self._handle = self.decoder.register_forward_pre_hook(self._hook, with_kwargs=True)
        return self

    def __exit__(self, *exc):
        self._handle.remove()


def training_steps(rm, batches, lr: float, repeat: int = 5, timed=None, accumulate: int = 1) -> dict:
    """Training of a RewardModel ``rm`` (lm_probes.rm.reward_model) on micro-batches of encoded pairs
    as the trainer runs it: a forward and backward per micro-batch, an Adam update after every
    ``accumulate`` of them (the trainer's batch_size / micro_batch) and after the last. ``batches[0]``
    warms up (with an update), the rest are timed; then the same batches' matrix products (recorded
    on a second pass: the same shapes) are replayed alone for the limit. Returns the seconds, the
    page faults, the limit and the recording pass's :class:`TokensRun`; ``timed(seconds)`` is called
    before the recording pass (to keep the time should that pass fail)."""
    import resource

    from lm_probes.rm.trainer import adam

    opt = adam(rm.trainable(), lr)  # (the trainer's)
    rm.model.train()

    def step(b, update: bool):
        rm.batch_loss(b).backward()
        if update:
            opt.step()
            opt.zero_grad(set_to_none=True)

    def timed_pass():
        n = len(batches) - 1
        for i, b in enumerate(batches[1:], 1):
            step(b, i % accumulate == 0 or i == n)

    step(batches[0], True)  # warm-up
    faults = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    t0 = time.perf_counter()
    timed_pass()
    seconds = time.perf_counter() - t0
    faults = resource.getrusage(resource.RUSAGE_SELF).ru_minflt - faults
    if timed:
        timed(seconds)
    with TokensRun(rm.model) as run:
        gemms = record_gemms(timed_pass)
    limit = replay_limit(gemms, repeat)
    out = {"seconds": seconds, "minor_page_faults": faults, "limit": limit, "tokens_run": run}
    return out | {"fused_adam": bool(opt.defaults.get("fused"))}


@contextlib.contextmanager
def scoring_forced(mode: str):
    """lm_probes.lm.scoring's ``"auto"`` rule forced to ``mode`` (``"whole"``: never share prompts,
    ``"cached"``: always; ``"auto"``: the rule as it is) inside the block, restored after."""
    from lm_probes.lm import scoring

    rule = scoring.SHARE_GAIN
    scoring.SHARE_GAIN = {"whole": float("inf"), "cached": 0.0, "auto": rule}[mode]
    try:
        yield
    finally:
        scoring.SHARE_GAIN = rule


def bucketed_batches(rm, encs, micro: int, steps: int) -> list:
    """The first ``steps`` + 1 training micro-batches as the trainer buckets them (by length, seeded),
    with ``rm``'s reference log-probs filled for them (the trainer's one reference pass, untimed)."""
    import numpy as np

    from lm_probes.rm.trainer import length_buckets

    order = length_buckets(encs, micro, np.random.default_rng([0, 1]))[: steps + 1]
    batches = [[encs[i] for i in b] for b in order]
    rm.fill_reference([e for b in batches for p in b for e in p])
    return batches


def step_flops(lm, objective: str, seq, run: TokensRun | None = None) -> tuple[float, float]:
    """(lm_probes.common.train_flops, attention_flops) of training steps over the encodings ``seq``
    (no reference pass): N_body excludes the output head and, when untied, the input embedding. With
    ``run`` (what the decoder ran on them): its tokens and attention rows, not the whole sequences'."""
    from lm_probes.common import attention_flops, train_flops

    n_head = lm.model.get_output_embeddings().weight.numel()
    n_emb = lm.model.get_input_embeddings().weight.numel()
    n_body = lm.info["n_parameters"] - n_head - (0 if lm.info["tied_head"] else n_emb)
    tokens, resp = sum(len(e.input_ids) for e in seq), sum(e.response_len for e in seq)
    queries = [len(e.input_ids) for e in seq]
    keys = None
    if run is not None:
        tokens, queries, keys = run.grad, [q for q, _ in run.rows], [k for _, k in run.rows]
    cfg = lm.model.config
    att = attention_flops(queries, cfg.num_hidden_layers, cfg.hidden_size, keys=keys)
    return train_flops(objective, n_body, n_head, tokens, resp, reference=False), att
