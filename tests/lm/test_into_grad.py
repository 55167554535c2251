"""lm_probes.lm.into_grad: a scoring call's weights add their gradients into .grad themselves, so
autograd holds no pass's gradient while it waits for the others; every other route is untouched."""

from __future__ import annotations

import pytest
import torch

from lm_probes.lm import into_grad
from lm_probes.lm.encoding import encode, pad_id_of
from lm_probes.lm.scoring import score
from tests.conftest import PROBE_EVALS, make_tiny_lm


def _setup(tie: bool):
    lm = make_tiny_lm(tie=tie)
    encs = [encode(lm.tokenizer, p.prompt, r) for p in PROBE_EVALS[:3] for r in (p.chosen, p.rejected)]
    return lm.model, encs, pad_id_of(lm.tokenizer)


def _loss(model, encs, pad, mode):
    sc = score(model, encs, pad, mode=mode)
    return sc.logprob.sum() + sc.last_hidden.pow(2).sum()


def _accumulated(model, batches, pad, mode, routed: bool, arrivals=None, order=None) -> dict:
    """.grad after each micro-batch's backward in turn. During the last: ``arrivals`` collects what
    autograd hands each parameter's AccumulateGrad node (None where it hands nothing), and ``order``
    the last decoder layer's weights whose .grad has already changed when the backward first reaches
    that layer's input (in the cached mode, the response pass's)."""
    into_grad.ENABLED = routed
    hooks, nodes = [], []
    try:
        model.zero_grad(set_to_none=True)
        for i, mb in enumerate(batches):
            if i == len(batches) - 1:
                hooks, nodes = _watch(model, arrivals, order)
            _loss(model, mb, pad, mode).backward()
        return {n: p.grad.clone() for n, p in model.named_parameters()}
    finally:
        into_grad.ENABLED = True
        for h in hooks:
            h.remove()
        nodes.clear()


def _watch(model, arrivals, order) -> tuple[list, list]:
    """The hooks of :func:`_accumulated`, and the AccumulateGrad nodes to keep alive while they watch
    (a parameter holds its own only weakly)."""
    hooks, nodes = [], []
    if arrivals is not None:
        for n, p in model.named_parameters():
            nodes.append(torch.autograd.graph.get_gradient_edge(p).node)
            hooks.append(nodes[-1].register_prehook(lambda g, n=n: arrivals.append((n, g[0]))))
    if order is not None:
        last = len(model.get_decoder().layers) - 1
        layers = {n: p for n, p in model.named_parameters() if f".layers.{last}." in n}
        before = {n: p.grad.clone() for n, p in layers.items()}

        fired = []

        def changed(_g):
            if not fired:  # (the first pass the backward meets only)
                fired.append(True)
                order.extend(n for n in layers if not torch.equal(layers[n].grad, before[n]))

        def at_input(_m, args, kwargs):
            (args[0] if args else kwargs["hidden_states"]).register_hook(changed)

        hooks.append(model.get_decoder().layers[last].register_forward_pre_hook(at_input, with_kwargs=True))
    return hooks, nodes


@pytest.mark.parametrize("tie", [True, False])
@pytest.mark.parametrize("mode", ["cached", "whole"])
def test_each_use_adds_into_grad_and_autograd_holds_nothing(mode, tie):
    model, encs, pad = _setup(tie)
    batches = (encs[:4], encs[4:])  # two micro-batches: the second adds to an existing .grad
    ref = _accumulated(model, batches, pad, mode, routed=False)
    arrivals, order = [], []
    got = _accumulated(model, batches, pad, mode, routed=True, arrivals=arrivals, order=order)
    for n in ref:  # the same accumulated gradient, every parameter (the tied head's two uses too)
        torch.testing.assert_close(got[n], ref[n], rtol=1e-12, atol=1e-12, msg=n)
    held = [n for n, g in arrivals if g is not None]
    assert held == [], f"autograd handed gradients to {held[:3]}"
    # each use's gradient lands as soon as its backward ran, not at the end of the whole backward
    last = len(model.get_decoder().layers) - 1
    assert sorted(order) == sorted(n for n, _ in model.named_parameters() if f".layers.{last}." in n)
    # without routing, autograd hands every parameter its summed gradient
    plain = []
    _accumulated(model, batches, pad, mode, routed=False, arrivals=plain)
    assert len([g for _, g in plain if g is not None]) >= len(ref)


@pytest.mark.parametrize("route", ["autograd.grad", "backward(inputs=...)"])
def test_routes_that_do_not_accumulate_get_the_whole_gradient(route):
    """torch.autograd.grad (the probes) and a backward restricted to some inputs see the same
    gradients with routing as without it, on a model whose .grad already holds a micro-batch's (where
    routing would act): autograd.grad leaves every .grad as it was, backward(inputs=...) adds to the
    listed parameters' only."""
    model, encs, pad = _setup(tie=True)
    params = list(model.parameters())
    ref = _accumulated(model, [encs[:4]], pad, "cached", routed=False)
    model.zero_grad(set_to_none=True)
    _loss(model, encs[4:], pad, "cached").backward()
    before = [p.grad.clone() for p in params]
    loss = _loss(model, encs[:4], pad, "cached")
    if route == "autograd.grad":
        got = torch.autograd.grad(loss, params)
        for p, b in zip(params, before, strict=True):
            assert torch.equal(p.grad, b)
    else:
        loss.backward(inputs=params[:3])
        got = [p.grad - b for p, b in zip(params[:3], before, strict=False)]
        for p, b in zip(params[3:], before[3:], strict=True):
            assert torch.equal(p.grad, b)  # (the others untouched)
    for (n, _), g in zip(model.named_parameters(), got, strict=False):
        torch.testing.assert_close(g, ref[n], rtol=1e-10, atol=1e-12, msg=n)


def test_a_parameter_with_its_own_hook_sees_its_whole_gradient():
    """A hook on a parameter (here one that zeroes half its gradient) sees every pass's part: such a
    parameter is not routed."""
    model, encs, pad = _setup(tie=True)
    name = f"model.layers.{len(model.get_decoder().layers) - 1}.mlp.up_proj.weight"
    p = model.get_parameter(name)
    mask = (torch.arange(p.shape[0]) % 2 == 0).to(p.dtype)[:, None]
    handle = p.register_hook(lambda g: g * mask)
    try:
        ref = _accumulated(model, (encs[:4], encs[4:]), pad, "cached", routed=False)
        got = _accumulated(model, (encs[:4], encs[4:]), pad, "cached", routed=True)
    finally:
        handle.remove()
    assert float(got[name][1::2].abs().max()) == 0.0
    for n in ref:
        torch.testing.assert_close(got[n], ref[n], rtol=1e-12, atol=1e-12, msg=n)


@pytest.mark.filterwarnings("ignore:Using backward\\(\\) with create_graph")
def test_a_backward_that_builds_a_graph_keeps_the_gradients_graph():
    """backward(create_graph=True): the same second derivative (of Σ ‖.grad‖²) with routing as without."""
    model, encs, pad = _setup(tie=True)
    params = list(model.parameters())
    second = []
    for routed in (False, True):
        into_grad.ENABLED = routed
        try:
            model.zero_grad(set_to_none=True)
            _loss(model, encs[4:], pad, "cached").backward()  # (an existing .grad, as routing needs)
            _loss(model, encs[:4], pad, "cached").backward(create_graph=True)
            second.append(torch.autograd.grad(sum(p.grad.pow(2).sum() for p in params), params[1]))
            model.zero_grad(set_to_none=True)  # (breaks the parameter ↔ gradient cycle)
        finally:
            into_grad.ENABLED = True
    torch.testing.assert_close(second[1], second[0], rtol=1e-10, atol=1e-12)
