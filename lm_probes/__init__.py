"""The theory's computations on real Hugging Face causal LMs. Parts, by what they hold:

loading.py      load_lm: any hub id or local path, or the offline default ``smollm2`` (GGUF, cached)
numerics.py     dtype-preserving attention and RMSNorm (float64 check mode, forward-mode autodiff)
scoring.py      the one scoring path: encode (prompt + response), score (ln π, states), extract_states
rewards.py      the reward registry: every reward type defined once (ex_rm, ex_rm_mean, im_rm, ...)
data.py         shipped datasets by name (datasets/), JSONL files with row-level errors, encode_pairs
persona.py      the Persona statements, templates, probe set and experiment split
train.py        training of any registered reward type (Adam, accumulation, checkpoints, metrics)
probe.py        one preference update: fixed-state prediction, exact first order, observed steps
reports.py      what runs write and print (summary.json, rewards, curves, the probe's report)
cli.py          shared command-line flags; rmgap train, rmgap probe, rmgap data
common.py       progress bars, timers, JSON output
experiments/    one module per paper experiment, with cpu and paper presets (persona)
"""
