"""Parameters whose gradient goes straight into ``.grad``. One scoring call uses a weight in several
passes (a prompt pass and a response pass; one pass per length group; a tied embedding's lookup and
head), and autograd sums a leaf's contributions before adding them to ``.grad``: it holds the first
pass's gradient of every weight until the last pass's arrives, up to a whole gradient beside
``.grad`` (4.6 GiB at Llama-3.2-1B's shapes in float32; the decoder's share is 3.6 GiB).

    with routed(model):   # every module call inside: each use of a weight adds into .grad itself
        out = model(...)

Each use of a parameter by the module that owns it goes through an identity node made just before that
module runs (so the backward reaches it right after the use's own backward). Its backward adds the
gradient into an existing ``param.grad`` and hands autograd nothing, only when that backward is one
that accumulates into ``param.grad`` (``loss.backward()``, and ``backward(inputs=...)`` for the listed
parameters; not ``torch.autograd.grad``) and builds no graph of the gradient. The sum is the same;
its order is not (``.grad`` + each pass in turn, rather than ``.grad`` + the passes' sum), which in
bfloat16 changes the rounding. Where ``param.grad`` is None (a first micro-batch) it hands autograd
the gradient as before, which takes it without a copy. Nothing is routed under torch.func
transforms, in a distributed run (DDP and FSDP read gradients through autograd's hooks), for a
parameter with hooks of its own (``register_hook``, ``register_post_accumulate_grad_hook``: they
would miss the routed part; checked when the module runs, so a hook registered between the forward
and the backward is not seen), or for tensors that are not trainable ``nn.Parameter``
(functional_call's substitutes, LoRA's frozen base).
"""

from __future__ import annotations

import contextlib

import torch

ENABLED = True  # benchmarks/into_grad.py switches it off to measure what it saves


class _IntoGrad(torch.autograd.Function):
    """Identity on a leaf parameter ``p``; its backward adds the incoming gradient into ``p.grad`` when
    that exists and the engine will run ``p``'s AccumulateGrad node ``acc`` in this backward."""

    @staticmethod
    def forward(ctx, p, acc):
        ctx.p, ctx.acc = p, acc
        return p.view_as(p)

    @staticmethod
    def backward(ctx, g):
        p = ctx.p
        if p.grad is None or torch.is_grad_enabled() or not _accumulates(ctx.acc):
            return g, None
        p.grad.add_(g)
        return None, None


def _accumulates(acc) -> bool:
    """Will this backward run the AccumulateGrad node ``acc``? (torch.autograd.grad runs none, and
    refuses to be asked about one.)"""
    try:
        return torch._C._will_engine_execute_node(acc)
    except RuntimeError as e:
        if "autograd.grad()" in str(e):
            return False
        raise


def _eligible() -> bool:
    if not ENABLED or not torch.is_grad_enabled() or not hasattr(torch.autograd.graph, "get_gradient_edge"):
        return False  # (get_gradient_edge: torch ≥ 2.2)
    if torch._C._are_functorch_transforms_active():
        return False
    return not (torch.distributed.is_available() and torch.distributed.is_initialized())


def _routable(p) -> bool:
    """A trainable leaf parameter without hooks of its own."""
    if not (isinstance(p, torch.nn.Parameter) and p.requires_grad and p.is_leaf):
        return False
    return not (p._backward_hooks or getattr(p, "_post_accumulate_grad_hooks", None))


@contextlib.contextmanager
def routed(model: torch.nn.Module):
    """Inside the block, each use of a trainable parameter of ``model`` by the submodule that owns it
    is routed (see the module's docstring), when eligible on entry: a forward pre-hook swaps the
    parameters for routed identities, a forward hook swaps them back."""
    if not _eligible():
        yield
        return
    owned: dict[torch.nn.Module, dict] = {}

    def route(m, _args):
        for name, p in list(m._parameters.items()):
            if _routable(p):
                owned.setdefault(m, {})[name] = p
                m._parameters[name] = _IntoGrad.apply(p, torch.autograd.graph.get_gradient_edge(p).node)

    def restore(m, *_):
        m._parameters.update(owned.pop(m, {}))

    with contextlib.ExitStack() as stack:
        for m in model.modules():
            if any(p.requires_grad for p in m.parameters(recurse=False)):
                stack.callback(restore, m)  # (also when the forward raises)
                stack.enter_context(m.register_forward_pre_hook(route))
                stack.enter_context(m.register_forward_hook(restore))
        yield
