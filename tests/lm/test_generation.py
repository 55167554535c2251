"""lm_probes.lm.generation: seeded sampling, and its log-probabilities against the scoring path."""

import numpy as np
import pytest
import torch

from lm_probes.data.cycles import cycle_grammar, hamiltonian_data, parse_response
from lm_probes.lm.encoding import Encoded, prompt_ids
from lm_probes.lm.generation import SamplingConfig, eos_ids, generate, set_logprob
from tests.conftest import graph_lm


def test_generation_is_reproducible_and_its_logprob_is_the_scoring_paths():
    lm = graph_lm()
    data = hamiltonian_data(n=5, edge_prob=0.3, n_train=5, n_test=1, seed=0)
    prompts = data["train"].prompts  # different lengths: left padding within a batch
    cfg = SamplingConfig(max_new_tokens=7, batch_size=3, seed=5)
    rng_before = torch.get_rng_state()
    a, b = generate(lm, prompts, cfg), generate(lm, prompts, cfg)
    assert torch.equal(rng_before, torch.get_rng_state())  # the global RNG is left alone
    assert [g.token_ids for g in a] == [g.token_ids for g in b]
    c = generate(lm, prompts, SamplingConfig(max_new_tokens=7, batch_size=3, seed=6))
    assert [g.token_ids for g in a] != [g.token_ids for g in c]
    # the sampler's ln π of each sample = the scoring path's, and the exact mass of the set of samples
    # (set_logprob) = the sum of the sampled sequences' probabilities (generate rounds logits to float32:
    # a wrong position or padding would be off by far more than that)
    for g in a:
        p = prompt_ids(lm.tokenizer, g.prompt)[1]
        enc = Encoded(tuple(p) + g.token_ids, len(p), False)
        assert set_logprob(lm, [enc]) == pytest.approx(g.logprob, rel=1e-6)
    many = generate(lm, [prompts[0]] * 40, SamplingConfig(max_new_tokens=3, batch_size=8, seed=1))
    p = prompt_ids(lm.tokenizer, prompts[0])[1]
    distinct = {g.token_ids: g.logprob for g in many if g.stopped == "length"}
    encs = [Encoded(tuple(p) + ids, len(p), False) for ids in distinct]
    assert set_logprob(lm, encs + encs[:3]) == pytest.approx(
        np.logaddexp.reduce(list(distinct.values())), rel=1e-6
    )
    # greedy decoding is the argmax path
    greedy = generate(lm, prompts[:1], SamplingConfig(temperature=0, max_new_tokens=3))[0]
    ids = list(prompt_ids(lm.tokenizer, prompts[0])[1])
    for _ in range(3):
        ids.append(int(lm.model(input_ids=torch.tensor([ids])).logits[0, -1].argmax()))
    assert greedy.token_ids == tuple(ids[-3:]) or greedy.stopped == "eos"


def test_constrained_sampling_draws_only_the_format_from_the_renormalised_distribution():
    """cycle_grammar through generate(allowed=...): every sample is n distinct vertices joined by <sep>
    and then the end; greedy picks, at each vertex step, the most probable unused vertex (computed
    here from the model's own logits); the recorded ln π is the unconstrained one (the scoring path)."""
    lm = graph_lm()
    n, eos = 5, eos_ids(lm)[0]
    prompts = hamiltonian_data(n=n, edge_prob=0.3, n_train=6, n_test=1, seed=0)["train"].prompts
    allowed = cycle_grammar(lm.tokenizer, n, eos)
    outs = generate(lm, prompts * 4, SamplingConfig(max_new_tokens=2 * n, batch_size=8, seed=2), allowed)
    for g in outs:
        seq = parse_response(g.text, n)
        assert g.stopped == "eos" and seq is not None and sorted(seq.tolist()) == list(range(n)), g
        p = prompt_ids(lm.tokenizer, g.prompt)[1]
        assert set_logprob(lm, [Encoded(tuple(p) + g.token_ids, len(p), False)]) == pytest.approx(
            g.logprob, rel=1e-6
        )
    assert len({g.token_ids for g in outs}) > len(prompts)  # it samples, not one path per prompt
    greedy = generate(lm, prompts[:1], SamplingConfig(temperature=0, max_new_tokens=2 * n), allowed)[0]
    vertex = {lm.tokenizer(str(v), add_special_tokens=False)["input_ids"][0]: v for v in range(n)}
    ids, want = list(prompt_ids(lm.tokenizer, prompts[0])[1]), []
    for k in range(n):
        with torch.no_grad():
            logits = lm.model(input_ids=torch.tensor([ids])).logits[0, -1]
        best = max((t for t in vertex if vertex[t] not in want), key=lambda t: float(logits[t]))
        want.append(vertex[best])
        ids += [best] + (
            [lm.tokenizer("<sep>", add_special_tokens=False)["input_ids"][0]] if k < n - 1 else []
        )
    assert parse_response(greedy.text, n).tolist() == want


def test_an_end_of_sequence_id_outside_the_vocabulary_is_refused_in_one_line():
    """(A random model built from a config class keeps the family's default ids: Phi-3's 32 000.)"""
    import pytest

    from lm_probes.lm.generation import eos_ids
    from tests.conftest import make_tiny_lm

    lm = make_tiny_lm()
    lm.model.generation_config.eos_token_id = 32000
    with pytest.raises(ValueError, match="outside the model's vocabulary") as exc:
        eos_ids(lm)
    assert "\n" not in str(exc.value)
