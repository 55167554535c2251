"""The theory's computations on real Hugging Face causal LMs (not built yet: see the lm_probes issue)."""
