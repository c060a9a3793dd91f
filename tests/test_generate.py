import torch

from lit_llm.generate import generate_tokens, sample_next
from lit_llm.model import Decoder, ModelConfig


def test_top_k_1_and_tiny_top_p_are_greedy():
    torch.manual_seed(0)
    logits = torch.randn(4, 30)
    greedy = sample_next(logits, 0.0, None, None)
    assert torch.equal(greedy, logits.argmax(-1, keepdim=True))
    g = torch.Generator().manual_seed(0)
    assert torch.equal(sample_next(logits, 1.0, 1, None, g), greedy)
    assert torch.equal(sample_next(logits, 1.0, None, 1e-6, g), greedy)


def test_top_k_and_top_p_only_sample_allowed_tokens():
    logits = torch.log(torch.tensor([[0.5, 0.3, 0.1, 0.06, 0.04]]))
    g = torch.Generator().manual_seed(0)
    top_k = {sample_next(logits, 1.0, 2, None, g).item() for _ in range(200)}
    assert top_k == {0, 1}
    top_p = {sample_next(logits, 1.0, None, 0.85, g).item() for _ in range(300)}  # 0.5 + 0.3 + 0.1 >= 0.85
    assert top_p == {0, 1, 2}


def test_sampling_is_reproducible_for_a_seed_and_crops_the_context():
    torch.manual_seed(0)
    model = Decoder(ModelConfig.from_name("debug", vocab_size=20, block_size=8)).eval()
    idx = torch.zeros(2, 3, dtype=torch.long)

    def run(seed):
        return generate_tokens(model, idx, 12, 1.0, None, None, torch.Generator().manual_seed(seed))

    a, b, c = run(1), run(1), run(2)
    assert a.shape == (2, 15) and torch.equal(a, b) and not torch.equal(a, c)


def test_generate_ends_a_sample_at_eos(tmp_path):
    """A model that always prefers [EOS] gives back the prompt alone (nothing after the end of text is printed);
    with ignore_eos the samples run on, [EOS] and all."""
    from tokenizers import Tokenizer

    from lit_llm.generate import generate
    from tests.helpers.checkpoints import write_lm_checkpoint

    path = write_lm_checkpoint(tmp_path / "lm.ckpt", tie_embeddings=False)
    ckpt = torch.load(path, weights_only=True)
    state = ckpt["state_dict"]
    eos = Tokenizer.from_str(ckpt["lit_llm"]["tokenizer"]).token_to_id("[EOS]")
    state["model.norm.weight"].zero_()
    state["model.norm.bias"].fill_(1.0)  # every position's final hidden state is all ones
    state["model.output.weight"].zero_()
    state["model.output.weight"][eos] = 1.0  # so [EOS] has the highest logit everywhere
    torch.save(ckpt, path)
    assert generate(str(path), prompt="a good film", max_new_tokens=5, temperature=0, num_samples=2) == [
        "a good film", "a good film"]
    run_on = generate(str(path), prompt="a good film", max_new_tokens=3, temperature=0, ignore_eos=True)[0]
    assert run_on.count("[EOS]") == 3
