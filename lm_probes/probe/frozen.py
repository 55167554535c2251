"""What a reward model could read from the LM before any training, at θ₀: a linear probe on the frozen
states (an EX-RM that trains only its head) and the reference LM's own log-probabilities (π_ref as a
verifier). Where both are at chance, a reward model that verifies must have learned it in training.

    base = frozen_baselines(lm, train_pairs, test_pairs, chat_template=False)
    base["linear_probe"]["last"]["test"]      # held-out accuracy of the best head on frozen last states
    base["reference_logprob"]["test"]         # accuracy of ln π_ref(y+) − ln π_ref(y−)

The probe is Bradley–Terry with a linear head and no intercept, on the state differences d = h+ − h−
(each coordinate scaled by its root mean square over the training pairs): minimise
mean softplus(−⟨w, d⟩) + λ‖w‖², λ chosen by k-fold cross-validation on the training pairs only.
"""

from __future__ import annotations

import numpy as np
import torch

from lm_probes.data.pairs import Pair, encode_pairs
from lm_probes.lm.encoding import pad_id_of
from lm_probes.lm.scoring import score
from lm_probes.stats import wilson_ci
from theory import accuracy

LAMBDAS = (1e-4, 1e-3, 1e-2, 1e-1, 1.0)


@torch.no_grad()
def pair_features(lm, pairs: list[Pair], *, chat_template: bool) -> dict[str, np.ndarray]:
    """For each pair: ln π of (y+, y−) (N, 2), the last response token's state (N, 2, D) and the mean
    state over the response (N, 2, D), from one scoring pass (lm_probes.lm.scoring.score)."""
    enc = encode_pairs(lm.tokenizer, pairs, chat_template=chat_template, too_long="raise").encodings
    sc = score(lm.model, [e for pr in enc for e in pr], pad_id_of(lm.tokenizer))
    n = len(enc)
    return {
        "logprob": sc.logprob.double().cpu().numpy().reshape(n, 2),
        "last": sc.last_hidden.double().cpu().numpy().reshape(n, 2, -1),
        "mean": sc.mean_hidden.double().cpu().numpy().reshape(n, 2, -1),
    }


def fit_pair_probe(diffs: np.ndarray, lam: float) -> np.ndarray:
    """w (D,) minimising mean softplus(−diffs @ w) + lam·‖w‖² (strictly convex: L-BFGS to its minimum).
    diffs (N, D): h+ − h− per training pair."""
    x = torch.as_tensor(diffs, dtype=torch.float64)
    w = torch.zeros(x.shape[1], dtype=torch.float64, requires_grad=True)
    opt = torch.optim.LBFGS(
        [w], max_iter=1000, tolerance_grad=1e-10, tolerance_change=1e-15, line_search_fn="strong_wolfe"
    )

    def closure():
        opt.zero_grad()
        loss = torch.nn.functional.softplus(-(x @ w)).mean() + lam * (w @ w)
        loss.backward()
        return loss

    with torch.enable_grad():
        opt.step(closure)
    return w.detach().numpy()


def _acc(diffs: np.ndarray, w: np.ndarray) -> float:
    m = diffs @ w
    return accuracy(m, np.zeros_like(m)).half_ties


def cross_validated_lambda(diffs: np.ndarray, lambdas=LAMBDAS, folds: int = 5, seed: int = 0):
    """(λ with the best mean held-out-fold accuracy (ties: the larger λ), {λ: that accuracy})."""
    if len(diffs) < 2:
        raise ValueError(f"the frozen-state probe needs at least 2 training pairs, got {len(diffs)}")
    order = np.random.default_rng(seed).permutation(len(diffs))
    folds = min(folds, len(diffs))  # (no empty fold)
    parts = np.array_split(order, folds)
    cv = {}
    for lam in lambdas:
        accs = []
        for k in range(folds):
            train = np.concatenate([p for j, p in enumerate(parts) if j != k])
            accs.append(_acc(diffs[parts[k]], fit_pair_probe(diffs[train], lam)))
        cv[lam] = float(np.mean(accs))
    best = max(cv, key=lambda lam: (cv[lam], lam))
    return best, cv


def frozen_baselines(lm, train: list[Pair], test: list[Pair], *, chat_template: bool, seed: int = 0) -> dict:
    """The linear probe (last and mean state) and the reference log-probability, train and test
    accuracy (ties as ½) with the test accuracy's 95 % Wilson CI."""
    f = {"train": pair_features(lm, train, chat_template=chat_template)}
    f["test"] = pair_features(lm, test, chat_template=chat_template)

    def with_ci(acc: float, n: int) -> dict:
        return {"test": acc, "test_ci95": list(wilson_ci(round(acc * n), n))}

    out: dict = {"n": {s: len(f[s]["logprob"]) for s in f}, "linear_probe": {}}
    for key in ("last", "mean"):
        d = {s: f[s][key][:, 0] - f[s][key][:, 1] for s in f}
        scale = np.sqrt((d["train"] ** 2).mean(0)) + 1e-12
        d = {s: v / scale for s, v in d.items()}
        lam, cv = cross_validated_lambda(d["train"], seed=seed)
        w = fit_pair_probe(d["train"], lam)
        out["linear_probe"][key] = {
            "lambda": lam,
            "cv_accuracy": {str(k): v for k, v in cv.items()},
            "train": _acc(d["train"], w),
            **with_ci(_acc(d["test"], w), out["n"]["test"]),
        }
    lp = {s: accuracy(f[s]["logprob"][:, 0], f[s]["logprob"][:, 1]).half_ties for s in f}
    out["reference_logprob"] = {"train": lp["train"], **with_ci(lp["test"], out["n"]["test"])}
    return out
