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


def test_a_loaded_float64_model_keeps_its_float64_norms_through_train_and_eval(tmp_path):
    """transformers ≥ 5.25 loads models with hub kernels on and re-kernelizes them on every
    train()/eval(), which put back its own RMSNorm (float32 inside) over rmgap's float64 one: a resumed
    run then differed from an uninterrupted one at 1e-9. load_lm switches the kernels off."""
    from lm_probes.lm.loading import load_lm

    tiny = make_tiny_lm(dtype=torch.float32, tie=False)
    tiny.model.save_pretrained(tmp_path)
    tiny.tokenizer.save_pretrained(tmp_path)
    lm = load_lm(str(tmp_path), dtype="float64", quiet=True)
    ids = torch.tensor([[5, 6, 7, 8, 9, 10]])
    with torch.no_grad():
        before = lm.model(ids).logits
    lm.model.train()
    lm.model.eval()
    with torch.no_grad():
        assert torch.equal(lm.model(ids).logits, before)
    assert lm.info["float64_rms_norms"] > 0
    assert all(
        m.forward.__name__ == "_rms_norm_in_dtype"
        for m in lm.model.modules()
        if hasattr(m, "variance_epsilon")
    )
