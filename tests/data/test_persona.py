"""lm_probes.data.persona: the probe set's groups."""

from __future__ import annotations

from lm_probes.data.persona import persona_probe_set


def test_persona_probe_set_groups():
    s = persona_probe_set(n_eval_statements=3, n_margin_statements=2, seed=1)
    assert len(s["train"]) == 1 and len(s["margin"]) == 2 and len(s["eval"]) == 15
    assert [p.group for p in s["eval"][:5]] == ["same", "overlap", "overlap", "paraphrase", "paraphrase"]
    train_words = set((s["train"][0].chosen + " " + s["train"][0].rejected).lower().replace(",", "").split())
    for p in s["eval"]:
        if p.group == "paraphrase":
            # no content word in common (theory/README.md §5); the pronoun "I" is the only shared word
            assert set((p.chosen + " " + p.rejected).lower().split()) & train_words <= {"i"}
    prompts = {p.prompt for p in s["eval"]}
    assert s["train"][0].prompt not in prompts
