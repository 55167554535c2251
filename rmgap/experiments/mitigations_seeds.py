"""``rmgap mitigations --seeds 0,1,2``: every mitigation trained once per seed (data order and head; one
data split), then per mitigation and cell (original / paraphrased × train / test prompts) the mean
accuracy over seeds, its range and a 95 % CI resampling seeds and statements
(rmgap.experiments.persona_seeds.cell), and the one-step prediction per seed. Each seed's own table is
in <out>/seed<k>/; this writes <out>/table_seeds.json and <out>/table_seeds.md from their files."""

from __future__ import annotations

from pathlib import Path

from lm_probes.common import write_json, write_text
from rmgap.experiments.persona import read_finished
from rmgap.experiments.persona_seeds import SETS, cell, ci_cell


def write_seeds(out: Path, names, seeds, cfgs: dict, data: dict, command: str, n_boot: int = 10_000) -> dict:
    """The aggregate over seeds (module docstring) of the finished per-seed runs under ``out``;
    ``cfgs``: {seed: {mitigation: TrainConfig}}, what each seed's run was trained with."""
    import json

    table = {}
    for name in names:
        runs = [read_finished(out / f"seed{k}" / name, cfgs[k][name], data) for k in seeds]
        if any(r is None for r in runs):
            raise ValueError(f"{out}: mitigation {name} is not finished for every seed {seeds}")
        pred = [json.loads((out / f"seed{k}" / name / "prediction.json").read_text()) for k in seeds]
        table[name] = {kind: {} for kind in ("original", "paraphrased")}
        for set_name, (kind, split) in SETS.items():
            table[name][kind][split] = cell(runs, set_name, n_boot)
        table[name]["prediction_paraphrase_over_original"] = [p["paraphrase_over_original"] for p in pred]
    lines = [
        f"Mitigations on Persona over training seeds {seeds}: paraphrased accuracy, mean [95 % CI over "
        "seeds and statements] (range over seeds); the one-step prediction per seed. Command: "
        f"`{command}`",
        "",
        "| mitigation | paraphrased, train prompts | paraphrased, test prompts | original, test "
        "| prediction |",
        "|---|---|---|---|---|",
    ]
    for name, t in table.items():
        cells = [
            ci_cell(t["paraphrased"]["train"]),
            ci_cell(t["paraphrased"]["test"]),
            ci_cell(t["original"]["test"]),
        ]
        pred = ", ".join(f"{v:+.3f}" for v in t["prediction_paraphrase_over_original"])
        lines.append(f"| {name} | " + " | ".join(cells) + f" | {pred} |")
    res = {
        "seeds": list(seeds),
        "command": command,
        "mitigations": table,
        "markdown": "\n".join(lines) + "\n",
    }
    write_json(out / "table_seeds.json", {k: v for k, v in res.items() if k != "markdown"})
    write_text(out / "table_seeds.md", res["markdown"])
    print("\n" + res["markdown"])
    return res
