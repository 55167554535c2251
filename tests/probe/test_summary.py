"""lm_probes.probe.summary: predicted-vs-observed metrics."""

from __future__ import annotations

import numpy as np

from lm_probes.probe.summary import compare


def test_compare_metrics():
    c = compare([1.0, 2.0, -3.0, 4.0], [1.1, 2.0, -2.7, 4.4])
    assert c["sign_agreement"] == 1.0 and c["pearson"] > 0.99
    assert np.isclose(c["median_rel_error"], np.median([0.1 / 1.1, 0.0, 0.3 / 2.7, 0.4 / 4.4]))


def test_by_response_pair_recomputes_from_records(tiny_probe):
    """The per-response-pair breakdown equals the mean over its prompts, computed here from records."""
    s, recs = tiny_probe["summary"], tiny_probe["records"]
    (row,) = [r for r in s["by_response_pair"] if r["group"] == "same"]  # the only pair on two prompts
    assert row["n"] == 2 and len(s["by_response_pair"]) == 1
    pairs = [(a, b) for a, b in zip(recs[0::2], recs[1::2], strict=True) if a["group"] == "same"]
    for name in ("im_rm", "ex_rm"):
        d = [a[f"{name}_full"] - b[f"{name}_full"] for a, b in pairs]
        assert np.isclose(row[name]["full"]["mean"], np.mean(d), rtol=1e-12)
        assert row[name]["full"]["fraction_right"] == np.mean(np.array(d) > 0)
