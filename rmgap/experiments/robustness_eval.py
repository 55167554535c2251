"""The robustness experiment's evaluation stage (rmgap.experiments.robustness): the held-out pairs and
their transformed copies, scored by every trained cell, with the IM-RM's reference computed once.

Sets (``eval_sets``): ``original`` (the held-out pairs), ``<transform>_<strength>`` (the same pairs,
both responses rewritten by lm_probes.data.transforms, the prompt kept), and, where the preset has
them, the shipped UltraFeedback rewrites: ``uf_original`` (their originals) and the rewrites, on the
same rows. Each pair keeps its ``where``, which the analysis joins on.

Work goes cell by cell, each (type, seed) cell through every group (the originals, then one group per
transformation with all its strengths, in the preset's order, then the UltraFeedback rows), so that a
cell once through needs its checkpoint no more: a run stopped part-way leaves whole cells, and a
finished cell lives in committed files alone. A cell whose checkpoint is gone (a fresh clone, a wiped
ignored folder) while groups remain is trained again and must reproduce what it recorded
(``trained_cell``). Within a group every distinct response is scored once and a prompt's KV cache
serves all its responses. ln π_ref of a group is computed once, with the untrained model, in exactly
the chunks the cells use (``<out>/reference/<group>.pt``), so before training every IM reward is
exactly 0, and it serves every seed. Each cell writes ``rewards_<set>.jsonl.gz`` (where, reward_chosen,
reward_rejected) and records the group in its ``eval.json`` (digest of the group's pairs, seconds); a
resume skips what is recorded and redoes what changed. The analysis reads the groups every cell has
scored and lists the others as pending.
"""

from __future__ import annotations

import hashlib
import json
import shutil
import time
from dataclasses import dataclass, replace
from functools import partial
from pathlib import Path

from lm_probes.common import jsonl_file, read_jsonl_rows, write_json, write_output_jsonl
from lm_probes.data.pairs import Pair, load_rows
from lm_probes.data.splits import length_rule
from lm_probes.data.transforms import get_transform, transformed_pairs
from lm_probes.rm.checkpoints import load_file, load_weights, read_checkpoint, same_config, save_atomic
from lm_probes.rm.evaluation import evaluate_sets
from lm_probes.rm.reward_model import RewardModel
from lm_probes.rm.trainer import encode_for_training, train_reward_model
from rmgap.experiments.robustness_cells import OBJECTIVES, cell_config, cell_dir


@dataclass
class EvalSet:
    name: str
    transform: str | None  # None: the originals (strength 0)
    strength: float
    pairs: list[Pair]
    counts: dict  # transform_pairs' counts (rows changed, refused, sites)
    original: str = "original"  # the set whose pairs these rewrite


def set_name(transform: str, strength: float) -> str:
    return f"{transform}_{strength:g}"


def _uf_sets(tokenizer, spec: dict, max_part: int, max_length) -> list[EvalSet]:
    """The shipped UltraFeedback rewrites on the same rows: their originals and each rewrite, the rows
    where every version passes the length rule, the first ``spec["n"]``."""
    names = spec["sets"]
    rows = {n: load_rows(n, "test") for n in names}
    n_rows = min(len(r) for r in rows.values())
    versions = {
        "uf_original": [
            Pair(r["prompt"], r["orig_chosen"], r["orig_rejected"], "uf", w) for w, r in rows[names[0]]
        ]
    }
    for n in names:
        w0 = [w for w, _ in rows[names[0]]]
        versions[n] = [
            Pair(r["prompt"], r["chosen"], r["rejected"], "uf", w0[i]) for i, (_, r) in enumerate(rows[n])
        ]
    ok = set(range(n_rows))
    for pairs in versions.values():
        ok &= set(length_rule(tokenizer, pairs[:n_rows], max_part, max_length)[0])
    keep = sorted(ok)[: spec["n"]]
    return [
        EvalSet(
            n,
            None if n == "uf_original" else n,
            0.0 if n == "uf_original" else 1.0,
            [p[i] for i in keep],
            {},
            "uf_original",
        )
        for n, p in versions.items()
    ]


def eval_sets(tokenizer, test: list[Pair], spec: dict, max_part: int, max_length) -> list[list[EvalSet]]:
    """The groups of evaluation sets the preset's ``eval`` spec names (see the module docstring)."""
    groups = [[EvalSet("original", None, 0.0, list(test), {})]]
    for name, strengths in spec["transforms"].items():
        t, group = get_transform(name), []
        for s in strengths:
            pairs, counts = transformed_pairs(test, t, s, spec["transform_seed"])
            group.append(EvalSet(set_name(name, s), name, s, pairs, counts))
        groups.append(group)
    if spec.get("rewrites"):
        groups.append(_uf_sets(tokenizer, spec["rewrites"], max_part, max_length))
    return groups


def group_digest(group: list[EvalSet]) -> str:
    h = hashlib.sha256()
    for s in group:
        h.update(json.dumps([s.name, [[p.where, p.prompt, p.chosen, p.rejected] for p in s.pairs]]).encode())
    return h.hexdigest()


def _encoded(lm, group: list[EvalSet], cfg) -> dict:
    """Each set encoded as the cells score it (lm_probes.data.pairs.EncodedPairs): the chat template,
    no length rule (a rewrite may be a few tokens longer than its original; the originals passed the
    rule), identical pairs left out."""
    cfg = replace(cfg, max_part_length=None)
    return {s.name: encode_for_training(lm, s.pairs, cfg) for s in group}


def _key(group: list[EvalSet]) -> str:
    return group[0].transform or group[0].name


def reference_table(factory, group, im_cfg, out: Path, say=print) -> dict:
    """ln π_ref of a group's encodings by the untrained model (``<out>/reference/<group>.pt``, computed
    once: read back while its digest is the group's)."""
    path, digest = out / "reference" / f"{_key(group)}.pt", group_digest(group)
    if path.exists() and (saved := load_file(path))["digest"] == digest:
        return saved["table"]
    lm = factory()
    rm = RewardModel(lm, replace(im_cfg, progress=False))
    t0 = time.perf_counter()
    rm.fill_eval_reference({n: e.encodings for n, e in _encoded(lm, group, im_cfg).items()})
    save_atomic({"digest": digest, "table": rm.ref_eval, "seconds": time.perf_counter() - t0}, path)
    say(f"reference {path.stem}: {time.perf_counter() - t0:.0f} s", flush=True)
    return rm.ref_eval


def load_trained(lm, cfg, ckpt: Path) -> RewardModel:
    """The reward model of a finished training cell: its checkpoint's weights (and head) in ``lm``,
    refused when the checkpoint was written with another configuration or before the last epoch."""
    state = read_checkpoint(ckpt, map_location=lm.device)
    if not same_config(state["config"], cfg) or state["epoch"] != cfg.epochs:
        raise ValueError(f"{ckpt}: not this cell's finished training ({cfg.objective}, seed {cfg.seed})")
    rm = RewardModel(lm, replace(cfg, progress=False))
    load_weights(ckpt, rm, state)
    rm.model.eval()
    return rm


def done(d: Path, group) -> bool:
    """Whether the cell in ``d`` has scored ``group`` (its eval.json holds the group's digest)."""
    return _record(d).get(_key(group), {}).get("digest") == group_digest(group)


def group_rewards(rm, cfg, group, table: dict | None) -> dict[str, list[dict]]:
    """A trained cell's (``rm``) rewards on one group: set name → rows (where, reward_chosen,
    reward_rejected), the pairs the set keeps, in order."""
    if rm.rt.uses_reference:
        rm.ref_eval = table
    enc = _encoded(rm.lm, group, cfg)
    res = evaluate_sets(rm, {n: e.encodings for n, e in enc.items()})
    return {
        s.name: [
            {"where": p.where, "reward_chosen": r[0], "reward_rejected": r[1]}
            for p, r in zip(enc[s.name].kept, res[s.name].rewards, strict=True)
        ]
        for s in group
    }


def evaluate_group(rm, cfg, d: Path, group, table: dict | None, say=print) -> None:
    """Score one group with a trained cell (``rm``), write its sets' rewards and record it in
    ``d``/eval.json."""
    key, t0 = _key(group), time.perf_counter()
    for name, rows in group_rewards(rm, cfg, group, table).items():
        write_output_jsonl(d / f"rewards_{name}.jsonl.gz", rows)
    record = _record(d)
    record[key] = {
        "digest": group_digest(group),
        "seconds": time.perf_counter() - t0,
        "sets": [s.name for s in group],
    }
    write_json(d / "eval.json", record)
    say(f"{cfg.objective} seed {cfg.seed}: {key} in {record[key]['seconds']:.0f} s", flush=True)


def _record(d: Path) -> dict:
    return json.loads((d / "eval.json").read_text()) if (d / "eval.json").exists() else {}


REPRODUCE_TOL = 1e-4  # |Δ reward| a retrained cell may differ by on the originals (float32 sums)


def trained_cell(factory, cfg, d: Path, train, originals, table, say=print) -> RewardModel:
    """The cell's trained RM: from ``d``/checkpoint.pt, or, where the checkpoint is gone, trained again
    (same pairs, settings and seed, in ``d``/.retrain) and accepted only if it reproduces what the cell
    recorded: the epoch losses of its history.json exactly, and its rewards on the originals
    (rewards_original.jsonl.gz) within REPRODUCE_TOL. The check is recorded in eval.json ("retrained");
    a cell that does not reproduce is refused in one line (its recorded groups came from other weights)."""
    if not (d / "summary.json").exists():
        raise ValueError(f"{d}: this cell is not trained yet; run --stages train first")
    if (d / "checkpoint.pt").exists():
        return load_trained(factory(), cfg, d / "checkpoint.pt")
    t0, tmp = time.perf_counter(), d / ".retrain"
    say(f"{cfg.objective} seed {cfg.seed}: checkpoint gone, training again to continue", flush=True)
    result = train_reward_model(factory(), train, {}, cfg, tmp, resume=True)
    rm = load_trained(factory(), cfg, tmp / "checkpoint.pt")
    losses = lambda h: [e.get("train_loss") for e in h]  # noqa: E731
    recorded = json.loads((d / "history.json").read_text())
    diff = _diff_on_originals(rm, cfg, d, originals, table)
    check = {
        "seconds": time.perf_counter() - t0,
        "history_identical": losses(result.summary["history"]) == losses(recorded),
        "max_abs_diff_original": diff,
    }
    if not check["history_identical"] or (diff is not None and diff > REPRODUCE_TOL):
        raise ValueError(
            f"{d}: training again did not reproduce the recorded cell (epoch losses identical: "
            f"{check['history_identical']}, max |Δ reward| on the originals {diff}); move the cell "
            "folder aside to train and evaluate it anew"
        )
    shutil.move(tmp / "checkpoint.pt", d / "checkpoint.pt")
    shutil.rmtree(tmp)
    record = _record(d)
    record["retrained"] = [*record.get("retrained", []), check]
    write_json(d / "eval.json", record)
    say(f"{cfg.objective} seed {cfg.seed}: reproduced (max |Δ reward| {diff})", flush=True)
    return rm


def _diff_on_originals(rm, cfg, d: Path, originals, table) -> float | None:
    """max |Δ reward| of ``rm`` against the cell's recorded rewards_original.jsonl.gz (or an older
    run's .jsonl; None: none recorded); a different set of pairs is refused."""
    recorded = jsonl_file(d / "rewards_original.jsonl.gz")
    if not recorded.exists():
        return None
    old = {r["where"]: r for r in read_jsonl_rows(recorded)}
    new = group_rewards(rm, cfg, originals, table)["original"]
    if [r["where"] for r in new] != list(old):
        raise ValueError(f"{d}: the retrained cell keeps other original pairs than it recorded")
    return max(abs(r[k] - old[r["where"]][k]) for r in new for k in ("reward_chosen", "reward_rejected"))


def evaluate_all(factory, args, preset, seeds, groups, train) -> None:
    """Cell by cell, every group the cell has not scored (see the module docstring); the IM-RM's
    reference tables are made once per group and shared by the seeds."""
    out = Path(args.out)
    im_cfg = cell_config(args, preset, "im_rm", seeds[0])
    for seed in seeds:
        for obj in OBJECTIVES:
            d = cell_dir(out, obj, seed)
            todo = [g for g in groups if not done(d, g)]
            if not todo:
                continue
            cfg = cell_config(args, preset, obj, seed)
            table = partial(reference_table, factory, im_cfg=im_cfg, out=out) if obj == "im_rm" else None
            rm = trained_cell(factory, cfg, d, train, groups[0], table and table(groups[0]))
            for group in todo:
                evaluate_group(rm, cfg, d, group, table and table(group))
            del rm


def evaluate_and_analyze(factory, args, data, preset: dict, seeds, stages) -> dict:
    """The eval stage (every cell, every group), the probe (robustness_probe) and the analysis
    (robustness_analysis), as ``stages`` asks."""
    from rmgap.experiments import robustness_analysis

    lm0 = factory()
    tok, spec = lm0.tokenizer, preset["eval"]
    groups = eval_sets(tok, data.test, spec, preset["max_part_length"], lm0.info.get("max_positions"))
    del lm0
    if "eval" in stages:
        evaluate_all(factory, args, preset, seeds, groups, data.train)
    if "probe" in stages:
        from rmgap.experiments.robustness_probe import probe_moves

        cfg = cell_config(args, preset, "im_rm", seeds[0])
        n = preset["probe"]
        probe_moves(factory, cfg, data.train[: n["train_pairs"]], groups, n["pairs"], Path(args.out))
    if "analyze" not in stages:
        return {}
    complete = [
        g for g in groups if all(done(cell_dir(args.out, o, k), g) for o in OBJECTIVES for k in seeds)
    ]
    if not complete or complete[0] is not groups[0]:
        raise ValueError(
            f"{args.out}: the original pairs are not scored by every cell yet; run --stages eval"
        )
    pending = [_key(g) for g in groups if g not in complete]
    tokenize = lambda text: tok(text, add_special_tokens=False)["input_ids"]  # noqa: E731
    return robustness_analysis.analyze(args, data, complete, seeds, preset, tokenize, pending)
