"""The model: loading, numerics, scoring, states and generation (lm_probes' bottom floor)."""
