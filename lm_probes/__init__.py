"""The theory's computations on real Hugging Face causal LMs: a library (no command line; the commands
are rmgap's). Its wings, bottom up:

lm/       the model: loading (any hub id, or the offline ``smollm2``), numerics (dtype-preserving
          attention), scoring (the one scoring path: encode, score), states, generation
data/     what the models read: pairs (shipped datasets in datasets/, JSONL with row-level errors,
          encode_pairs), persona, cycles (the Hamiltonian-cycle task), rewrites (their quality)
rm/       reward models: rewards (the registry), config (TrainConfig), reward_model, mitigations,
          trainer, evaluation, checkpoints, precision
probe/    one preference update: one_step (fixed-state prediction, exact first order, real steps)
          and summary (predicted vs observed)
common.py  stats.py  reports.py  distributed.py    shared helpers, statistics, outputs, processes
"""
