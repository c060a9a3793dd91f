
import pytest
import torch
import torch.nn.functional as F

from lit_llm.data.masking import mask_tokens
from lit_llm.model.loss import IGNORE_INDEX, lm_loss


def _data(n=64, c=16, v=40, seed=0):
    g = torch.Generator().manual_seed(seed)
    h = torch.randn(n, c, generator=g, requires_grad=True)
    w = torch.randn(v, c, generator=g, requires_grad=True)
    t = torch.randint(0, v, (n,), generator=g)
    t[::7] = IGNORE_INDEX
    return h, w, t


def _reference(logits, t, eps=0.0, z=0.0):
    """Straight from the definitions, over non-ignored rows only."""
    keep = t != IGNORE_INDEX
    logp = logits[keep].log_softmax(-1)
    nll = -logp.gather(1, t[keep, None]).squeeze(1)
    smooth = -logp.mean(-1)
    ce = ((1 - eps) * nll + eps * smooth).mean()
    zl = torch.logsumexp(logits[keep], -1).pow(2).mean()
    return ce + z * zl, ce, zl


@pytest.mark.parametrize(("eps", "z"), [(0.0, 0.0), (0.1, 0.0), (0.0, 1e-3), (0.1, 1e-2)])
def test_loss_matches_the_reference_definitions(eps, z):
    h, w, t = _data()
    logits = h @ w.t()
    parts = lm_loss(logits, t, label_smoothing=eps, z_loss=z)
    ref_loss, ref_ce, ref_z = _reference(logits, t, eps, z)
    torch.testing.assert_close(parts["loss"], ref_loss)
    torch.testing.assert_close(parts["ce"], ref_ce)
    if z:
        torch.testing.assert_close(parts["z_loss"], ref_z)
    if eps == 0 and z == 0:
        torch.testing.assert_close(parts["loss"], F.cross_entropy(logits, t))


@pytest.mark.parametrize("chunk", [1, 5, 64, 1000])
def test_chunked_loss_equals_the_plain_loss_and_its_gradients(chunk):
    h, w, t = _data()
    plain = lm_loss(h @ w.t(), t, label_smoothing=0.1, z_loss=1e-3)["loss"]
    gh, gw = torch.autograd.grad(plain, (h, w))
    chunked = lm_loss(h, t, w, label_smoothing=0.1, z_loss=1e-3, chunk_size=chunk)["loss"]
    ch, cw = torch.autograd.grad(chunked, (h, w))
    torch.testing.assert_close(chunked, plain)
    torch.testing.assert_close(ch, gh)
    torch.testing.assert_close(cw, gw)


def test_chunked_loss_with_a_head_bias():
    h, w, t = _data()
    b = torch.randn(w.size(0))
    torch.testing.assert_close(lm_loss(h, t, w, b, chunk_size=9)["loss"], lm_loss(h @ w.t() + b, t)["loss"])


def test_masking_statistics_follow_bert():
    ids = torch.randint(5, 100, (400, 256), generator=torch.Generator().manual_seed(0))
    ids[:, 0] = 1  # a special token that is never masked
    inputs, labels = mask_tokens(ids, mask_id=2, vocab_size=100, rate=0.15,
                                 generator=torch.Generator().manual_seed(1), special_ids=(1,))
    chosen = labels != IGNORE_INDEX
    assert chosen.float().mean().item() == pytest.approx(0.15 * 255 / 256, abs=0.003)
    assert not chosen[:, 0].any()
    assert torch.equal(labels[chosen], ids[chosen])
    n = chosen.sum().item()
    masked = (inputs[chosen] == 2).sum().item() / n
    unchanged = (inputs[chosen] == ids[chosen]).sum().item() / n
    assert masked == pytest.approx(0.8, abs=0.01)
    assert unchanged == pytest.approx(0.1 + 0.1 / 100, abs=0.01)  # 10% kept + random draws of the same id
    assert torch.equal(inputs[~chosen], ids[~chosen])
