import math

import pytest
import torch
import torch.nn.functional as F

from lit_llm.model import GPT, ModelConfig
from lit_llm.model.config import PRESETS


def _model(**kw) -> GPT:
    torch.manual_seed(0)
    return GPT(ModelConfig.from_name("debug", vocab_size=50, **kw)).eval()


def test_output_shape():
    model = _model()
    idx = torch.randint(0, 50, (3, 17))
    assert model(idx).shape == (3, 17, 50)


def test_causal_later_tokens_do_not_change_earlier_logits():
    model = _model()
    idx = torch.randint(0, 50, (2, 20))
    changed = idx.clone()
    changed[:, 12:] = (changed[:, 12:] + 7) % 50
    a, b = model(idx), model(changed)
    torch.testing.assert_close(a[:, :12], b[:, :12])
    assert not torch.allclose(a[:, 12:], b[:, 12:])  # and the change is visible where it may be


@pytest.mark.parametrize("name", sorted(PRESETS))
@pytest.mark.parametrize("tie", [True, False])
@pytest.mark.parametrize("bias", [True, False])
def test_parameter_count_formula_matches_the_module(name, tie, bias):
    cfg = ModelConfig.from_name(name, tie_embeddings=tie, bias=bias)
    with torch.device("meta"):
        model = GPT(cfg)
    assert sum(p.numel() for p in model.parameters()) == cfg.num_parameters()


def test_gpt2_small_has_the_published_parameter_count():
    assert ModelConfig.from_name("gpt2-124m").num_parameters() == 124_439_808


def test_untrained_loss_is_about_log_vocab():
    vocab = 65
    torch.manual_seed(0)
    model = GPT(ModelConfig.from_name("quickstart", vocab_size=vocab)).eval()
    idx = torch.randint(0, vocab, (8, 65))
    loss = F.cross_entropy(model(idx[:, :-1]).flatten(0, 1), idx[:, 1:].flatten())
    assert abs(loss.item() - math.log(vocab)) < 0.1


def test_tied_embeddings_share_storage_and_untied_do_not():
    m = _model(tie_embeddings=True)
    assert m.output.weight.data_ptr() == m.tok_embeddings.weight.data_ptr()
    u = _model(tie_embeddings=False)
    assert u.output.weight.data_ptr() != u.tok_embeddings.weight.data_ptr()


def test_residual_projections_use_scaled_init():
    torch.manual_seed(0)
    m = GPT(ModelConfig.from_name("quickstart", vocab_size=65))
    std_wo = m.layers["0"].attention.wo.weight.std().item()
    std_wq = m.layers["0"].attention.wq.weight.std().item()
    assert abs(std_wq - 0.02) < 0.002
    assert abs(std_wo - 0.02 / math.sqrt(2 * 4)) < 0.001


def test_meta_device_build_then_init_weights():
    cfg = ModelConfig.from_name("debug", vocab_size=50)
    with torch.device("meta"):
        model = GPT(cfg)
    model.to_empty(device="cpu")
    model.init_weights()
    assert all(torch.isfinite(p).all() for p in model.parameters())
    assert model(torch.zeros(1, 4, dtype=torch.long)).shape == (1, 4, 50)


def test_sequence_longer_than_block_size_is_refused():
    model = _model()
    with pytest.raises(ValueError, match="block_size"):
        model(torch.zeros(1, 33, dtype=torch.long))


def test_unknown_preset_and_field_give_clear_errors():
    with pytest.raises(ValueError, match="Unknown model preset 'nope'.*quickstart"):
        ModelConfig.from_name("nope")
    with pytest.raises(ValueError, match="Unknown ModelConfig field.*n_layers"):
        ModelConfig.from_name("debug", n_layers=3)
    with pytest.raises(ValueError, match="divisible by n_head"):
        ModelConfig.from_name("debug", n_embd=33)
