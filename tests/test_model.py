import math

import pytest
import torch
import torch.nn.functional as F

from lit_llm.generate import ContinuousBatch, generate_tokens, iter_batch_tokens, sample_next, sample_rows
from lit_llm.model import PRESETS, ModelConfig, build_model

CAUSAL = ["debug", "debug-llama"]
ALL = CAUSAL + ["debug-bert"]


def _model(name="debug", **kw):
    torch.manual_seed(0)
    return build_model(ModelConfig.from_name(name, vocab_size=50, **kw)).eval()


@pytest.mark.parametrize("name", ALL)
def test_output_shape(name):
    assert _model(name)(torch.randint(0, 50, (3, 17))).shape == (3, 17, 50)


@pytest.mark.parametrize("name", CAUSAL)
def test_causal_later_tokens_do_not_change_earlier_logits(name):
    model = _model(name)
    idx = torch.randint(0, 50, (2, 20))
    changed = idx.clone()
    changed[:, 12:] = (changed[:, 12:] + 7) % 50
    a, b = model(idx), model(changed)
    torch.testing.assert_close(a[:, :12], b[:, :12])
    assert not torch.allclose(a[:, 12:], b[:, 12:])  # and the change is visible where it may be


def test_encoder_is_bidirectional_and_respects_padding():
    model = _model("debug-bert")
    idx = torch.randint(0, 50, (2, 20))
    changed = idx.clone()
    changed[:, 15] = (changed[:, 15] + 7) % 50
    assert not torch.allclose(model(idx)[:, :5], model(changed)[:, :5])  # earlier positions see later tokens
    keep = torch.ones(2, 20, dtype=torch.long)
    keep[:, 15:] = 0  # positions 15.. are padding: changing them must not matter
    torch.testing.assert_close(model(idx, attention_mask=keep)[:, :15], model(changed, attention_mask=keep)[:, :15])


@pytest.mark.parametrize("name", sorted(PRESETS))
@pytest.mark.parametrize("tie", [True, False])
@pytest.mark.parametrize("bias", [True, False])
def test_parameter_count_formula_matches_the_module(name, tie, bias):
    cfg = ModelConfig.from_name(name, tie_embeddings=tie, bias=bias)
    with torch.device("meta"):  # billions of parameters cost nothing on the meta device
        model = build_model(cfg)
    assert sum(p.numel() for p in model.parameters()) == cfg.num_parameters()


@pytest.mark.parametrize(
    ("name", "count"),
    [
        ("gpt2-124m", 124_439_808),  # published GPT-2 small, tied embeddings
        ("gpt2-355m", 354_823_168),
        ("gpt2-774m", 774_030_080),
        ("gpt2-1.5b", 1_557_611_200),
        ("llama-7b", 6_738_415_616),  # Llama-2-7B
        ("llama-13b", 13_015_864_320),  # Llama-2-13B
        ("llama-1b", 1_100_048_384),  # TinyLlama-1.1B
        ("llama-70b", 68_976_648_192),  # Llama-2-70B
        ("llama-405b", 405_853_388_800),  # Llama-3.1-405B
        ("bert-base", 109_514_298),  # BertForMaskedLM (no pooler): "110M"
    ],
)
def test_presets_have_the_published_parameter_counts(name, count):
    assert ModelConfig.from_name(name).num_parameters() == count


@pytest.mark.parametrize("name", ALL)
def test_untrained_loss_is_about_log_vocab(name):
    vocab = 65
    torch.manual_seed(0)
    model = build_model(ModelConfig.from_name(name, vocab_size=vocab, block_size=64)).eval()
    idx = torch.randint(0, vocab, (8, 65))
    loss = F.cross_entropy(model(idx[:, :-1]).flatten(0, 1), idx[:, 1:].flatten())
    assert abs(loss.item() - math.log(vocab)) < 0.15


def test_tied_embeddings_share_storage_and_untied_do_not():
    m = _model(tie_embeddings=True)
    assert m.output.weight.data_ptr() == m.tok_embeddings.weight.data_ptr()
    u = _model(tie_embeddings=False)
    assert u.output.weight.data_ptr() != u.tok_embeddings.weight.data_ptr()


def test_residual_projections_use_scaled_init():
    torch.manual_seed(0)
    m = build_model(ModelConfig.from_name("quickstart", vocab_size=65))
    std_wo = m.layers["0"].attention.wo.weight.std().item()
    std_wq = m.layers["0"].attention.wq.weight.std().item()
    assert abs(std_wq - 0.02) < 0.002
    assert abs(std_wo - 0.02 / math.sqrt(2 * 4)) < 0.001


@pytest.mark.parametrize("name", ALL)
def test_meta_device_build_then_init_weights_matches_a_direct_build(name):
    cfg = ModelConfig.from_name(name, vocab_size=50)
    with torch.device("meta"):
        model = build_model(cfg)
    model.to_empty(device="cpu")
    model.init_weights(generator=torch.Generator().manual_seed(0))
    direct = build_model(cfg)
    direct.init_weights(generator=torch.Generator().manual_seed(0))
    idx = torch.randint(0, 50, (1, 9))
    torch.testing.assert_close(model.eval()(idx), direct.eval()(idx))  # rotary tables were filled too


def test_grouped_query_attention_has_fewer_kv_parameters():
    m = _model("debug-llama")
    assert m.layers["0"].attention.wk.weight.shape == (2 * 8, 32)  # 2 kv heads x head_dim 8
    assert m.layers["0"].attention.wq.weight.shape == (32, 32)


@pytest.mark.parametrize("name", CAUSAL)
def test_kv_cache_gives_the_same_logits_and_greedy_tokens(name):
    model = _model(name)
    idx = torch.randint(0, 50, (2, 7))
    full = model(idx)
    cache = model.new_kv_cache(2)
    first = model(idx[:, :4], cache=cache, start_pos=0)
    rest = model(idx[:, 4:], cache=cache, start_pos=4)  # several tokens at once after a prefix
    torch.testing.assert_close(torch.cat([first, rest], 1), full, atol=1e-5, rtol=1e-5)
    # greedy decoding past block_size (32): cached and uncached agree token for token
    cached = generate_tokens(model, idx, 40, temperature=0, use_cache=True)
    plain = generate_tokens(model, idx, 40, temperature=0, use_cache=False)
    assert torch.equal(cached, plain)


@pytest.mark.parametrize("name", ["debug", "debug-llama"])
@pytest.mark.parametrize("use_cache", [True, False])
def test_batched_decoding_of_ragged_prompts_matches_each_prompt_alone(name, use_cache):
    """Left-padded prompts decoded together: every row's logits at every step are those of its own sequence
    run alone (learned positions and RoPE both start at the row's first real token)."""
    model = _model(name)
    prompts = [[5, 6, 7], list(range(1, 12)), [42]]
    seen = []

    def greedy(logits):
        seen.append(logits)
        return logits.argmax(-1, keepdim=True)

    tokens = torch.stack(list(iter_batch_tokens(model, prompts, 8, greedy, use_cache=use_cache)), 1)
    for row, ids in enumerate(prompts):
        seq = torch.tensor([ids + tokens[row].tolist()])
        alone = model(seq)[0, len(ids) - 1 : -1]  # the logits that chose each new token
        torch.testing.assert_close(torch.stack([step[row] for step in seen]), alone, atol=1e-5, rtol=1e-5)
    with pytest.raises(ValueError, match="block_size"):
        next(iter_batch_tokens(model, prompts, 30, greedy))  # 11 + 30 > 32


@pytest.mark.parametrize("name", ["debug", "debug-llama"])
def test_continuous_batch_rows_join_and_leave_and_match_each_sequence_alone(name):
    """Sequences that join a running batch at different steps, each in its own KV-cache row at its own length,
    and leave when done (a later one then takes the freed row): every logit that chose a token is that of the
    sequence run alone, and a row keeps no trace of the sequence that held it before."""
    model = _model(name)
    prompts = [[5, 6, 7], list(range(1, 12)), [42], [9, 8, 7, 6, 5]]
    new_tokens = [6, 9, 4, 7]
    joins = {0: [0, 1], 2: [2], 5: [3]}  # step -> sequences that arrive then
    batch = ContinuousBatch(model, capacity=3)
    tokens = {i: [] for i in range(4)}
    chose = {i: [] for i in range(4)}  # the logits that chose each token

    def take(i, logits):
        chose[i].append(logits)
        tokens[i].append(int(logits.argmax()))
        if len(tokens[i]) == new_tokens[i]:
            batch.remove(i)

    for step in range(20):
        keys = list(batch.keys)
        if keys:
            for i, logits in zip(keys, batch.step(torch.tensor([tokens[i][-1] for i in keys]))):
                take(i, logits)
        for i in joins.get(step, []):
            take(i, batch.add(i, prompts[i]))
    assert not batch.keys and all(len(tokens[i]) == new_tokens[i] for i in range(4))
    for i, ids in enumerate(prompts):
        alone = model(torch.tensor([ids + tokens[i]]))[0, len(ids) - 1 : -1]
        torch.testing.assert_close(torch.stack(chose[i]), alone, atol=1e-5, rtol=1e-5)
    with pytest.raises(ValueError, match="rows are taken"):
        for i in range(4):
            batch.add(i, [1])
    with pytest.raises(ValueError, match="does not fit"):
        ContinuousBatch(model, 1).add(0, list(range(33)))


def test_sampling_rows_together_draws_what_each_row_draws_alone():
    """``sample_rows`` (continuous batching: one call per step, each row with its own temperature, top-p and
    generator) picks, row for row, the token ``sample_next`` picks for that row alone with the same seed."""
    torch.manual_seed(0)
    temperature = torch.tensor([0.0, 1.0, 0.7, 1.3, 1.0, 0.0, 2.0])
    top_p = torch.tensor([1.0, 0.9, 1.0, 0.5, 0.95, 0.3, 1.0])
    for trial in range(50):
        logits = torch.randn(7, 67) * 3
        seeds = [trial * 10 + r for r in range(7)]
        together = sample_rows(logits, temperature, top_p, [torch.Generator().manual_seed(s) for s in seeds])
        for r in range(7):
            t, p = float(temperature[r]), float(top_p[r])
            alone = sample_next(logits[r : r + 1], t, None, p if p < 1 else None, torch.Generator().manual_seed(seeds[r]))
            assert int(together[r]) == int(alone)


def test_sequence_longer_than_block_size_is_refused():
    with pytest.raises(ValueError, match="block_size"):
        _model()(torch.zeros(1, 33, dtype=torch.long))


def test_bad_configs_give_clear_errors():
    with pytest.raises(ValueError, match="Unknown model preset 'nope'.*quickstart"):
        ModelConfig.from_name("nope")
    with pytest.raises(ValueError, match="Unknown ModelConfig field.*n_layers"):
        ModelConfig.from_name("debug", n_layers=3)
    with pytest.raises(ValueError, match="divisible by n_head"):
        ModelConfig.from_name("debug", n_embd=33)
    with pytest.raises(ValueError, match="multiple of n_kv_heads"):
        ModelConfig.from_name("debug-llama", n_kv_heads=3)
    with pytest.raises(ValueError, match="family must be one of"):
        ModelConfig(family="t5")
    with pytest.raises(ValueError, match="norm must be one of"):
        ModelConfig(norm="batchnorm")


def test_family_defaults_and_overrides():
    llama = ModelConfig(family="llama")
    assert (llama.norm, llama.mlp, llama.positions, llama.bias, llama.tie_embeddings) == (
        "rmsnorm", "swiglu", "rope", False, False)
    assert ModelConfig(family="llama", norm="layernorm").norm == "layernorm"
    cfg = ModelConfig.from_name("debug-llama")
    assert ModelConfig.from_dict(cfg.to_dict()) == cfg


@pytest.mark.parametrize("name", CAUSAL)
def test_forward_tolerates_being_cut_into_pipeline_stages(name):
    """Two stages made by deleting modules (as torch.distributed.pipelining splits do) compute the same logits."""
    import copy

    model = _model(name, tie_embeddings=False)
    first, second = copy.deepcopy(model), copy.deepcopy(model)
    del first.layers["1"]
    first.norm, first.output = None, None
    del second.layers["0"]
    second.tok_embeddings, second.pos_embeddings = None, None
    idx = torch.randint(0, 50, (2, 10))
    torch.testing.assert_close(second(first(idx)), model(idx))
