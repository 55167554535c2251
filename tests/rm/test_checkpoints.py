"""lm_probes.rm.checkpoints: which recorded configurations count as the same run."""

from __future__ import annotations

import json

from lm_probes.rm.checkpoints import same_config
from lm_probes.rm.config import TrainConfig


def test_same_config_counts_options_added_since_at_their_defaults():
    cfg = TrainConfig(objective="im_rm", lr=1e-5)
    recorded = json.loads(json.dumps(cfg.__dict__))  # as a summary records it (tuples → lists)
    assert same_config(recorded, cfg)
    del recorded["token_dropout"]  # recorded before the option existed: its default
    assert same_config(recorded, cfg)
    assert not same_config(recorded, TrainConfig(objective="im_rm", lr=1e-5, token_dropout=0.3))
    assert not same_config({**recorded, "lr": 1e-6}, cfg)
