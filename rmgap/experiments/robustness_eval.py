"""The robustness experiment's evaluation stage (rmgap.experiments.robustness): the held-out pairs and
their transformed copies, scored by every trained cell, with the IM-RM's reference computed once.

Sets (``eval_sets``): ``original`` (the held-out pairs), ``<transform>_<strength>`` (the same pairs,
both responses rewritten by lm_probes.data.transforms, the prompt kept), and, where the preset has
them, the shipped UltraFeedback rewrites: ``uf_original`` (their originals) and the rewrites, on the
same rows. Each pair keeps its ``where``, which the analysis joins on.

Work is grouped (the originals, then one group per transformation with all its strengths, then the
UltraFeedback rows): within a group every distinct response is scored once and a prompt's KV cache
serves all its responses. ln π_ref of a group is computed once, with the untrained model, in exactly
the chunks the cells use (``<out>/reference/<group>.pt``), so before training every IM reward is exactly
0, and it serves every seed. Each cell writes ``rewards_<set>.jsonl`` (where, reward_chosen,
reward_rejected) and records the group in its ``eval.json`` (digest of the group's pairs, seconds);
a resume skips what is recorded and redoes what changed.
"""

from __future__ import annotations

import hashlib
import json
import os
import time
from dataclasses import dataclass, replace
from pathlib import Path

import torch

from lm_probes.common import write_json, write_jsonl
from lm_probes.data.pairs import Pair, load_rows
from lm_probes.data.splits import length_rule
from lm_probes.data.transforms import get_transform, transform_pairs
from lm_probes.rm.checkpoints import same_config
from lm_probes.rm.evaluation import evaluate_sets
from lm_probes.rm.reward_model import RewardModel
from lm_probes.rm.trainer import encode_for_training
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
            rows, counts = transform_pairs(test, t, s, spec["transform_seed"])
            pairs = [
                replace(p, chosen=r["chosen"], rejected=r["rejected"])
                for p, r in zip(test, rows, strict=True)
            ]
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


def _save(obj, path: Path) -> None:
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save(obj, tmp)
    os.replace(tmp, path)


def reference_tables(factory, groups, im_cfg, out: Path, say=print) -> dict[str, dict]:
    """ln π_ref of every group's encodings, by the untrained model; computed where not saved yet."""
    tables, lm = {}, None
    for group in groups:
        path = out / "reference" / f"{group[0].transform or group[0].name}.pt"
        digest = group_digest(group)
        if path.exists() and (saved := torch.load(path, weights_only=False))["digest"] == digest:
            tables[digest] = saved["table"]
            continue
        lm = lm or factory()
        rm = RewardModel(lm, replace(im_cfg, progress=False))
        t0 = time.perf_counter()
        rm.fill_eval_reference({n: e.encodings for n, e in _encoded(lm, group, im_cfg).items()})
        _save({"digest": digest, "table": rm.ref_eval, "seconds": time.perf_counter() - t0}, path)
        tables[digest] = rm.ref_eval
        say(f"reference {path.stem}: {time.perf_counter() - t0:.0f} s", flush=True)
    return tables


def load_trained(lm, cfg, ckpt: Path) -> RewardModel:
    """The reward model of a finished training cell: its checkpoint's weights (and head) in ``lm``,
    refused when the checkpoint was written with another configuration or before the last epoch."""
    state = torch.load(ckpt, weights_only=False, map_location=lm.device)
    if not same_config(state["config"], cfg) or state["epoch"] != cfg.epochs:
        raise ValueError(f"{ckpt}: not this cell's finished training ({cfg.objective}, seed {cfg.seed})")
    rm = RewardModel(lm, replace(cfg, progress=False))
    rm.model.load_state_dict(state["model"])
    if rm.u is not None:
        rm.u.data.copy_(state["u"])
    rm.model.eval()
    return rm


def evaluate_cell(factory, cfg, d: Path, groups, tables: dict, say=print) -> None:
    """Score every group not yet recorded in ``d``/eval.json with the trained cell in ``d``."""
    record_path = d / "eval.json"
    record = json.loads(record_path.read_text()) if record_path.exists() else {}
    todo = [g for g in groups if record.get(g[0].transform or g[0].name, {}).get("digest") != group_digest(g)]
    if not todo:
        return
    lm = factory()
    rm = load_trained(lm, cfg, d / "checkpoint.pt")
    for group in todo:
        key, digest, t0 = group[0].transform or group[0].name, group_digest(group), time.perf_counter()
        if rm.rt.uses_reference:
            rm.ref_eval = tables[digest]
        enc = _encoded(lm, group, cfg)
        res = evaluate_sets(rm, {n: e.encodings for n, e in enc.items()})
        for s in group:
            kept, rewards = enc[s.name].kept, res[s.name].rewards
            rows = (
                {"where": p.where, "reward_chosen": r[0], "reward_rejected": r[1]}
                for p, r in zip(kept, rewards, strict=True)
            )
            write_jsonl(d / f"rewards_{s.name}.jsonl", rows)
        record[key] = {"digest": digest, "seconds": time.perf_counter() - t0, "sets": [s.name for s in group]}
        write_json(record_path, record)
        say(f"{cfg.objective} seed {cfg.seed}: {key} in {record[key]['seconds']:.0f} s", flush=True)


def evaluate_and_analyze(factory, args, data, preset: dict, seeds, stages) -> dict:
    """The eval stage (every cell, every group), the probe (robustness_probe) and the analysis
    (robustness_analysis), as ``stages`` asks."""
    from rmgap.experiments import robustness_analysis

    lm0 = factory()
    tok, spec = lm0.tokenizer, preset["eval"]
    groups = eval_sets(tok, data.test, spec, preset["max_part_length"], lm0.info.get("max_positions"))
    del lm0
    if "eval" in stages:
        im_cfg = cell_config(args, preset, "im_rm", seeds[0])
        tables = reference_tables(factory, groups, im_cfg, Path(args.out))
        for seed in seeds:
            for obj in OBJECTIVES:
                cfg = cell_config(args, preset, obj, seed)
                evaluate_cell(factory, cfg, cell_dir(args.out, obj, seed), groups, tables)
    if "probe" in stages:
        from rmgap.experiments.robustness_probe import probe_moves

        cfg = cell_config(args, preset, "im_rm", seeds[0])
        n = preset["probe"]
        probe_moves(factory, cfg, data.train[: n["train_pairs"]], groups, n["pairs"], Path(args.out))
    if "analyze" not in stages:
        return {}
    tokenize = lambda text: tok(text, add_special_tokens=False)["input_ids"]  # noqa: E731
    return robustness_analysis.analyze(args, data, groups, seeds, preset, tokenize)
