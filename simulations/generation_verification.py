"""Theorem 1 (theory/README.md §2): an IM-RM can verify without being able to generate. Hamiltonian cycles
on small random graphs, with a response space small enough to sum π(C(x)|x) exactly.

    python simulations/generation_verification.py          # ≈ 15 s → figures/generation_verification.*
    python simulations/generation_verification.py --quick  # ≈ 5 s, used by the tests

Task: a prompt x is a graph on n vertices (a planted Hamiltonian cycle plus random edges); a response
is a sequence of n vertex tokens; C(x) = the sequences that traverse a Hamiltonian cycle (any start,
either direction), enumerated exactly from the n! permutations.
LM: an autoregressive MLP over vertex tokens, π_θ(y_k | x, y_<k) = softmax(W h_k), where h_k reads
the adjacency matrix, the last and first vertex and the visited set. π_ref = the initial LM.
Training, as in the paper (Adam, BT loss, effective batch 32, β = 0.01), on triples (x, y+ a
Hamiltonian cycle, y− a permutation that is not one): an IM-RM r = β ln π_θ/π_ref (all parameters
trained) and an EX-RM r = ⟨u, h_final⟩ (same network, linear head on the state after the response).

Reported on held-out graphs: verification accuracy of both; π_θ(C|x) against π_ref(C|x), both exact;
the fraction of sampled and greedy generations that are Hamiltonian cycles, before and after
training; and Theorem 1's construction on the same graphs (theory.verification: the tilt of π_ref
with margin δ = β is an exact verifier over the whole response space with π(C) = τ(p) ≤ e·p).
The trained IM-RM's margins are measured on (cycle, permutation) pairs only, not over every
sequence, so τ at those margins is not a bound on it.
Paper (10 vertices, Pythia-1B): test accuracy EX 0.980, IM 0.993; correct cycles generated: 0.
"""

from __future__ import annotations

import argparse
from dataclasses import dataclass, replace

import numpy as np
import torch
from scipy.special import logsumexp

from simulations._common import add_common_args, bradley_terry, print_table, run_and_save
from theory import accuracy, tilted_correct_mass, tilting_bound
from theory.graphs import (
    cycle_pairs,
    hamiltonian_cycles,
    is_hamiltonian_cycle,
    planted_cycle_graphs,
    vertex_permutations,
)

NAME = "generation_verification"


@dataclass(frozen=True)
class Config:
    n: int = 7
    edge_prob: float = 0.3
    n_train: int = 640
    n_test: int = 160
    hidden: int = 128
    epochs: int = 15
    batch: int = 32
    lr: float = 1e-3
    beta: float = 0.01
    samples: int = 64
    seed: int = 0


QUICK = dict(n=6, n_train=320, n_test=64, hidden=64, epochs=12, samples=32)


class VertexLM(torch.nn.Module):
    """π(y_k | graph, y_<k) = softmax(W h_k). The state at position k reads what attention over the
    prompt would give a transformer: the adjacency matrix, the last and first vertex, the visited set,
    the last vertex's neighbours, whether the last step followed an edge (and, at the end, whether the
    closing step does), plus a running sum over positions, so the final state summarises the path."""

    def __init__(self, n: int, hidden: int):
        super().__init__()
        self.n = n
        self.inp = torch.nn.Linear(n * n + 4 * n + 3, hidden)
        self.acc = torch.nn.Linear(n * n + 4 * n + 3, hidden)
        self.mid = torch.nn.Linear(2 * hidden, hidden)
        self.W = torch.nn.Linear(hidden, n, bias=False)  # the unembedding
        self.u = torch.nn.Linear(hidden, 1, bias=False)  # EX-RM head
        torch.nn.init.zeros_(self.u.weight)
        self.float()

    def states(self, adj: torch.Tensor, seqs: torch.Tensor) -> torch.Tensor:
        """adj (B, n, n), seqs (B, n) → hidden states (B, n + 1, H): position k has read y_<k."""
        B, n = seqs.shape
        rows = torch.arange(B)[:, None]
        f32 = dict(dtype=torch.float32)  # explicit: independent of torch's global default dtype
        adj = adj.to(torch.float32)
        onehot = torch.nn.functional.one_hot(seqs, n).to(torch.float32)  # (B, n, n)
        visited = torch.cat([torch.zeros(B, 1, n, **f32), onehot.cumsum(1)], 1)  # (B, n+1, n)
        last = torch.cat([torch.zeros(B, 1, n, **f32), onehot], 1)
        first = onehot[:, :1].expand(B, n + 1, n).clone()
        first[:, 0] = 0
        neighbours = last @ adj  # (B, n+1, n): adjacency row of the last vertex
        step_edge = torch.zeros(B, n + 1, 1, **f32)
        step_edge[:, 2:, 0] = adj[rows, seqs[:, :-1], seqs[:, 1:]]  # did y_{k-2} → y_{k-1} follow an edge
        closing = torch.zeros(B, n + 1, 1, **f32)
        closing[:, -1, 0] = adj[torch.arange(B), seqs[:, -1], seqs[:, 0]]
        bos = torch.zeros(B, n + 1, 1, **f32)
        bos[:, 0] = 1
        g = adj.reshape(B, 1, n * n).expand(B, n + 1, n * n)
        z = torch.cat([g, last, first, visited, neighbours, step_edge, closing, bos], -1)
        running = torch.tanh(self.acc(z)).cumsum(1) / n
        return torch.tanh(self.mid(torch.cat([torch.tanh(self.inp(z)), running], -1)))

    def logprob(self, adj, seqs) -> tuple[torch.Tensor, torch.Tensor]:
        """(Σ_k ln π(y_k|x, y_<k) (B,), final hidden state (B, H))."""
        h = self.states(adj, seqs)
        lp = torch.log_softmax(self.W(h[:, :-1]), -1).gather(-1, seqs[..., None]).squeeze(-1).sum(-1)
        return lp, h[:, -1]

    @torch.no_grad()
    def generate(self, adj: torch.Tensor, greedy: bool, gen: torch.Generator) -> torch.Tensor:
        B, n = adj.shape[0], self.n
        seqs = torch.zeros(B, n, dtype=torch.long)
        for k in range(n):
            logits = self.W(self.states(adj, seqs)[:, k])
            seqs[:, k] = (
                logits.argmax(-1)
                if greedy
                else torch.multinomial(torch.softmax(logits, -1), 1, generator=gen)[:, 0]
            )
        return seqs


def correct_mass(model, adj_np) -> float:
    """ln π(C(x)|x), summed exactly over the cycle sequences."""
    seqs = hamiltonian_cycles(adj_np)
    with torch.no_grad():
        lp, _ = model.logprob(
            torch.as_tensor(adj_np, dtype=torch.float32).expand(len(seqs), -1, -1), torch.as_tensor(seqs)
        )
    return float(logsumexp(lp.double().numpy()))


def rewards(model, ref_logp, adj, seqs, kind, beta):
    lp, h = model.logprob(adj, seqs)
    return beta * (lp - ref_logp) if kind == "im" else model.u(h)[:, 0]


def train(kind: str, cfg: Config, data, init_state, seed: int):
    torch.manual_seed(seed)
    model = VertexLM(cfg.n, cfg.hidden)
    model.load_state_dict(init_state)
    (adj, pos, neg), ref = data["train"], data["ref_train"]
    opt = torch.optim.Adam(model.parameters(), lr=cfg.lr)
    gen = torch.Generator().manual_seed(seed)
    for _ in range(cfg.epochs):
        order = torch.randperm(len(adj), generator=gen)
        for b in range(0, len(adj), cfg.batch):
            i = order[b : b + cfg.batch]
            rp = rewards(model, ref[0][i], adj[i], pos[i], kind, cfg.beta)
            rm = rewards(model, ref[1][i], adj[i], neg[i], kind, cfg.beta)
            loss = bradley_terry(rp, rm).mean()
            if not torch.isfinite(loss):
                raise FloatingPointError(f"{kind} loss became {loss.item()}")
            opt.zero_grad()
            loss.backward()
            opt.step()
    return model


def evaluate(model, kind, cfg, adj, pos, neg, ref):
    with torch.no_grad():
        rp = rewards(model, ref[0], adj, pos, kind, cfg.beta).double().numpy()
        rm = rewards(model, ref[1], adj, neg, kind, cfg.beta).double().numpy()
    return accuracy(rp, rm), rp - rm


def generation(model, cfg, adj_t, adj_np, gen):
    samp = model.generate(adj_t.repeat_interleave(cfg.samples, 0), greedy=False, gen=gen).numpy()
    greedy = model.generate(adj_t, greedy=True, gen=gen).numpy()
    return (
        float(is_hamiltonian_cycle(np.repeat(adj_np, cfg.samples, 0), samp).mean()),
        float(is_hamiltonian_cycle(adj_np, greedy).mean()),
    )


def run(cfg: Config) -> dict:
    rng = np.random.default_rng(cfg.seed)
    torch.manual_seed(cfg.seed)
    perms = vertex_permutations(cfg.n)
    adj_tr = planted_cycle_graphs(cfg.n, cfg.edge_prob, cfg.n_train, rng)
    adj_te = planted_cycle_graphs(cfg.n, cfg.edge_prob, cfg.n_test, rng)
    (p_tr, n_tr), (p_te, n_te) = cycle_pairs(adj_tr, perms, rng), cycle_pairs(adj_te, perms, rng)
    T = lambda a, dt=torch.float32: torch.as_tensor(a, dtype=dt)  # noqa: E731
    ref_model = VertexLM(cfg.n, cfg.hidden)
    init = {k: v.clone() for k, v in ref_model.state_dict().items()}
    with torch.no_grad():
        ref_tr = tuple(ref_model.logprob(T(adj_tr), T(s, torch.long))[0] for s in (p_tr, n_tr))
        ref_te = tuple(ref_model.logprob(T(adj_te), T(s, torch.long))[0] for s in (p_te, n_te))
    data = {"train": (T(adj_tr), T(p_tr, torch.long), T(n_tr, torch.long)), "ref_train": ref_tr}
    log_p_ref = np.array([correct_mass(ref_model, a) for a in adj_te])
    gen = torch.Generator().manual_seed(cfg.seed)
    samp0, greedy0 = generation(ref_model, cfg, T(adj_te), adj_te, gen)
    out = {
        "reference": dict(
            mean_correct_mass=float(np.exp(log_p_ref).mean()),
            sampled_cycle_rate=samp0,
            greedy_cycle_rate=greedy0,
        ),
        "n_cycle_sequences_mean": float(np.mean([is_hamiltonian_cycle(a, perms).sum() for a in adj_te])),
        "response_space_size": cfg.n**cfg.n,
    }
    for kind in ("im", "ex"):
        model = train(kind, cfg, data, init, cfg.seed + 1)
        tr_acc, _ = evaluate(model, kind, cfg, T(adj_tr), T(p_tr, torch.long), T(n_tr, torch.long), ref_tr)
        te_acc, margins = evaluate(
            model, kind, cfg, T(adj_te), T(p_te, torch.long), T(n_te, torch.long), ref_te
        )
        res = dict(train_accuracy=tr_acc.strict, test_accuracy=te_acc.strict, test_tie_rate=te_acc.tie_rate)
        if kind == "im":
            log_p = np.array([correct_mass(model, a) for a in adj_te])
            samp, greedy = generation(model, cfg, T(adj_te), adj_te, gen)
            delta = float(np.median(margins))
            p_ref = np.exp(log_p_ref)
            res.update(
                mean_correct_mass=float(np.exp(log_p).mean()),
                mean_log_ratio_correct_mass=float(np.mean(log_p - log_p_ref)),
                max_ratio_correct_mass=float(np.exp(np.max(log_p - log_p_ref))),
                sampled_cycle_rate=samp,
                greedy_cycle_rate=greedy,
                median_test_margin=delta,
                per_graph=[
                    dict(log_p_ref=float(a), log_p_theta=float(b))
                    for a, b in zip(log_p_ref, log_p, strict=True)
                ],
            )
        out[kind] = res
    # Theorem 1's construction on the same held-out graphs: tilting π_ref with margin δ = β gives an
    # exact verifier over the whole response space whose generation mass is τ(p) ≤ e·p.
    p_ref = np.exp(log_p_ref)
    out["tilt"] = dict(
        margin=cfg.beta,
        mean_correct_mass=float(np.mean(tilted_correct_mass(p_ref, margin=cfg.beta, beta=cfg.beta))),
        mean_bound=float(np.mean(tilting_bound(p_ref, margin=cfg.beta, beta=cfg.beta))),
    )
    return out


def plot(summary: dict, cfg: Config):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    im, ex, ref = summary["im"], summary["ex"], summary["reference"]
    fig, ax = plt.subplots(1, 3, figsize=(15, 4.2))
    names = ["EX-RM", "IM-RM"]
    x = np.arange(2)
    ax[0].bar(x - 0.2, [ex["train_accuracy"], im["train_accuracy"]], 0.4, label="train")
    ax[0].bar(x + 0.2, [ex["test_accuracy"], im["test_accuracy"]], 0.4, label="held-out graphs")
    ax[0].set(
        xticks=x,
        xticklabels=names,
        ylim=(0, 1.05),
        ylabel="verification accuracy",
        title=f"verification (n = {cfg.n} vertices)",
    )
    ax[0].legend(fontsize=8)
    pg = im["per_graph"]
    a = np.array([p["log_p_ref"] for p in pg]) / np.log(10)
    b = np.array([p["log_p_theta"] for p in pg]) / np.log(10)
    ax[1].scatter(a, b, s=10, c="C3", label="held-out graphs")
    lo, hi = min(a.min(), b.min()) - 0.3, max(a.max(), b.max()) + 0.3
    ax[1].plot([lo, hi], [lo, hi], "k:", lw=0.8, label="no change")
    ax[1].set(
        xlabel="log10 π_ref(C(x)|x)",
        ylabel="log10 π_θ(C(x)|x) (IM-RM's LM)",
        title="generation mass on correct outputs, exact",
    )
    ax[1].legend(fontsize=8)
    vals = [
        ref["sampled_cycle_rate"],
        im["sampled_cycle_rate"],
        ref["greedy_cycle_rate"],
        im["greedy_cycle_rate"],
    ]
    ax[2].bar(range(4), vals, color=["C7", "C3", "C7", "C3"])
    ax[2].set(
        xticks=range(4),
        xticklabels=["sampled\nπ_ref", "sampled\nπ_θ", "greedy\nπ_ref", "greedy\nπ_θ"],
        ylim=(0, 1),
        ylabel="fraction that are Hamiltonian cycles",
        title="generation",
    )
    for i, v in enumerate(vals):
        ax[2].text(i, v + 0.02, f"{v:.2g}", ha="center", fontsize=8)
    fig.tight_layout()
    return fig


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_common_args(ap)
    ap.add_argument("--n", type=int, default=None, help="vertices per graph (6–8)")
    ap.add_argument("--epochs", type=int, default=None)
    args = ap.parse_args(argv)
    cfg = replace(Config(seed=args.seed), **(QUICK if args.quick else {}))
    if args.n:
        if not 4 <= args.n <= 8:
            ap.error("--n must be between 4 and 8 (the n! permutations are enumerated)")
        cfg = replace(cfg, n=args.n)
    if args.epochs:
        cfg = replace(cfg, epochs=args.epochs)
    summary = run_and_save(NAME, cfg, run, plot, args)
    im, ex, ref = summary["im"], summary["ex"], summary["reference"]
    print_table(
        [
            ("EX-RM", ex["train_accuracy"], ex["test_accuracy"], "-", "-", "-"),
            (
                "IM-RM",
                im["train_accuracy"],
                im["test_accuracy"],
                im["mean_correct_mass"],
                im["sampled_cycle_rate"],
                im["greedy_cycle_rate"],
            ),
            (
                "π_ref",
                "-",
                "-",
                ref["mean_correct_mass"],
                ref["sampled_cycle_rate"],
                ref["greedy_cycle_rate"],
            ),
        ],
        ("model", "train acc", "test acc", "π(C|x) exact", "sampled cycles", "greedy cycles"),
    )
    tilt = summary["tilt"]
    print(
        f"IM-RM's LM: π_θ(C)/π_ref(C) = ×{np.exp(im['mean_log_ratio_correct_mass']):.3g} "
        f"(geometric mean over graphs, max ×{im['max_ratio_correct_mass']:.3g}); "
        f"median test margin {im['median_test_margin']:.3g}.\n"
        f"Theorem 1's tilt (δ = β = {cfg.beta}): an exact verifier over all {summary['response_space_size']} "
        f"sequences with π(C) = {tilt['mean_correct_mass']:.3g} ≤ e·π_ref(C) = {tilt['mean_bound']:.3g}."
    )
    print(f"[{summary['seconds']:.1f} s] wrote {args.out_dir / (NAME + '.json')}")
    return summary


if __name__ == "__main__":
    main()
