"""lm_probes.lm.loading: the one untying of the output head."""

from __future__ import annotations

import torch

from lm_probes.lm.loading import untie_output_head
from tests.conftest import make_tiny_lm


def test_untie_output_head_copies_the_embedding():
    lm = make_tiny_lm(tie=True)
    assert untie_output_head(lm.model)
    head, emb = lm.model.get_output_embeddings().weight, lm.model.get_input_embeddings().weight
    assert head.data_ptr() != emb.data_ptr() and torch.equal(head, emb)
    assert not untie_output_head(lm.model)
