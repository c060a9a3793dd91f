"""Weight conversion to and from Hugging Face ``transformers`` (an optional extra: ``pip install lit_llm[hf]``).

Each family maps to one ``transformers`` class; the maps are tables of names:

- ``gpt2``  <-> ``GPT2LMHeadModel`` (its Conv1D weights are stored transposed; q/k/v are one ``c_attn``);
- ``llama`` <-> ``LlamaForCausalLM`` (same rotary convention, so no q/k permutation is needed);
- ``bert``  <-> ``BertForMaskedLM``.

Everything works offline from a config: no hub access is needed to build the target model.
"""

from __future__ import annotations

from typing import Any

import torch

from lit_llm.model import ModelConfig

Tensor = torch.Tensor


def _require_transformers():
    try:
        import transformers
    except ImportError as e:  # pragma: no cover - exercised only without the extra
        raise ImportError("Hugging Face conversion needs transformers: pip install 'lit_llm[hf]'") from e
    return transformers


def _check(cfg: ModelConfig, family: str, **expected: Any) -> None:
    wrong = {k: getattr(cfg, k) for k, v in expected.items() if getattr(cfg, k) != v}
    if wrong:
        raise ValueError(
            f"A {family} model with {wrong} has no Hugging Face {family} equivalent (it needs {expected});"
            " train with the family's default components to export it"
        )


# ---------------------------------------------------------------------------------------------- configs
def to_hf_config(cfg: ModelConfig):
    """The ``transformers`` config that describes the same architecture as ``cfg``."""
    tf = _require_transformers()
    if cfg.family == "gpt2":
        _check(cfg, "gpt2", norm="layernorm", positions="learned", bias=True, n_kv_heads=cfg.n_head)
        if cfg.mlp not in ("gelu", "gelu_tanh"):
            raise ValueError(f"GPT-2 has a GELU MLP; mlp={cfg.mlp!r} cannot be exported as GPT2LMHeadModel")
        return tf.GPT2Config(
            vocab_size=cfg.vocab_size, n_positions=cfg.block_size, n_embd=cfg.n_embd, n_layer=cfg.n_layer,
            n_head=cfg.n_head, n_inner=cfg.intermediate_size,
            activation_function="gelu_new" if cfg.mlp == "gelu_tanh" else "gelu",
            resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0, layer_norm_epsilon=cfg.norm_eps,
            tie_word_embeddings=cfg.tie_embeddings, architectures=["GPT2LMHeadModel"],
            bos_token_id=None, eos_token_id=None,  # set by the tokenizer when it has them
        )
    if cfg.family == "llama":
        _check(cfg, "llama", norm="rmsnorm", positions="rope", mlp="swiglu")
        return tf.LlamaConfig(
            vocab_size=cfg.vocab_size, hidden_size=cfg.n_embd, intermediate_size=cfg.intermediate_size,
            num_hidden_layers=cfg.n_layer, num_attention_heads=cfg.n_head, num_key_value_heads=cfg.n_kv_heads,
            head_dim=cfg.head_dim, max_position_embeddings=cfg.block_size, rms_norm_eps=cfg.norm_eps,
            rope_parameters={"rope_type": "default", "rope_theta": cfg.rope_theta},
            tie_word_embeddings=cfg.tie_embeddings, attention_bias=cfg.bias, mlp_bias=cfg.bias,
            attention_dropout=0.0, architectures=["LlamaForCausalLM"],
        )
    _check(cfg, "bert", norm="layernorm", mlp="gelu", bias=True, tie_embeddings=True, n_kv_heads=cfg.n_head)
    return tf.BertConfig(
        vocab_size=cfg.vocab_size, hidden_size=cfg.n_embd, num_hidden_layers=cfg.n_layer,
        num_attention_heads=cfg.n_head, intermediate_size=cfg.intermediate_size, hidden_act="gelu",
        max_position_embeddings=cfg.block_size, type_vocab_size=cfg.type_vocab_size, layer_norm_eps=cfg.norm_eps,
        hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0, architectures=["BertForMaskedLM"],
    )


def from_hf_config(hf_config) -> ModelConfig:
    """The lit_llm ``ModelConfig`` of a ``transformers`` GPT-2, Llama or BERT config."""
    kind = hf_config.model_type
    if kind == "gpt2":
        act = hf_config.activation_function
        if act not in ("gelu", "gelu_new", "gelu_pytorch_tanh"):
            raise ValueError(f"GPT-2 activation {act!r} has no lit_llm equivalent")
        return ModelConfig(
            name="hf-gpt2", family="gpt2", vocab_size=hf_config.vocab_size, block_size=hf_config.n_positions,
            n_layer=hf_config.n_layer, n_head=hf_config.n_head, n_embd=hf_config.n_embd,
            intermediate_size=hf_config.n_inner or 4 * hf_config.n_embd, mlp="gelu" if act == "gelu" else "gelu_tanh",
            norm_eps=hf_config.layer_norm_epsilon, tie_embeddings=hf_config.tie_word_embeddings,
        )
    if kind == "llama":
        rope = getattr(hf_config, "rope_parameters", None) or {"rope_type": "default", "rope_theta": hf_config.rope_theta}
        if rope.get("rope_type", "default") != "default":
            raise ValueError(f"Llama rope scaling {rope['rope_type']!r} is not supported by lit_llm")
        if hf_config.attention_bias != getattr(hf_config, "mlp_bias", False):
            raise ValueError("lit_llm's bias switch covers attention and MLP together; this Llama sets them differently")
        return ModelConfig(
            name="hf-llama", family="llama", vocab_size=hf_config.vocab_size,
            block_size=hf_config.max_position_embeddings, n_layer=hf_config.num_hidden_layers,
            n_head=hf_config.num_attention_heads, n_kv_heads=hf_config.num_key_value_heads, n_embd=hf_config.hidden_size,
            intermediate_size=hf_config.intermediate_size, rope_theta=rope["rope_theta"], norm_eps=hf_config.rms_norm_eps,
            tie_embeddings=hf_config.tie_word_embeddings, bias=hf_config.attention_bias,
        )
    if kind == "bert":
        return ModelConfig(
            name="hf-bert", family="bert", vocab_size=hf_config.vocab_size, block_size=hf_config.max_position_embeddings,
            n_layer=hf_config.num_hidden_layers, n_head=hf_config.num_attention_heads, n_embd=hf_config.hidden_size,
            intermediate_size=hf_config.intermediate_size, type_vocab_size=hf_config.type_vocab_size,
            norm_eps=hf_config.layer_norm_eps,
        )
    raise ValueError(f"Hugging Face model_type {kind!r} is not one of gpt2, llama, bert")


# ---------------------------------------------------------------------------------------------- weights
def _name_table(cfg: ModelConfig) -> list[tuple[str, str]]:
    """(lit_llm name, transformers name) pairs of tensors that map one to one."""
    rows: list[tuple[str, str]] = []
    wb = ("weight", "bias") if cfg.bias else ("weight",)
    norm_params = ("weight", "bias") if cfg.norm == "layernorm" and cfg.bias else ("weight",)
    for i in range(cfg.n_layer):
        ours = f"layers.{i}."
        if cfg.family == "gpt2":
            hf = f"transformer.h.{i}."
            rows += [(ours + f"attention_norm.{p}", hf + f"ln_1.{p}") for p in norm_params]
            rows += [(ours + f"ffn_norm.{p}", hf + f"ln_2.{p}") for p in norm_params]
            rows += [(ours + f"attention.wo.{p}", hf + f"attn.c_proj.{p}") for p in wb]
            rows += [(ours + f"feed_forward.w1.{p}", hf + f"mlp.c_fc.{p}") for p in wb]
            rows += [(ours + f"feed_forward.w2.{p}", hf + f"mlp.c_proj.{p}") for p in wb]
        elif cfg.family == "llama":
            hf = f"model.layers.{i}."
            rows += [(ours + "attention_norm.weight", hf + "input_layernorm.weight"),
                     (ours + "ffn_norm.weight", hf + "post_attention_layernorm.weight")]
            for a, b in (("wq", "q_proj"), ("wk", "k_proj"), ("wv", "v_proj"), ("wo", "o_proj")):
                rows += [(ours + f"attention.{a}.{p}", hf + f"self_attn.{b}.{p}") for p in wb]
            for a, b in (("w1", "gate_proj"), ("w3", "up_proj"), ("w2", "down_proj")):
                rows += [(ours + f"feed_forward.{a}.{p}", hf + f"mlp.{b}.{p}") for p in wb]
        else:
            hf = f"bert.encoder.layer.{i}."
            for a, b in (("wq", "attention.self.query"), ("wk", "attention.self.key"), ("wv", "attention.self.value"),
                         ("wo", "attention.output.dense")):
                rows += [(ours + f"attention.{a}.{p}", hf + f"{b}.{p}") for p in wb]
            rows += [(ours + f"attention_norm.{p}", hf + f"attention.output.LayerNorm.{p}") for p in norm_params]
            rows += [(ours + f"feed_forward.w1.{p}", hf + f"intermediate.dense.{p}") for p in wb]
            rows += [(ours + f"feed_forward.w2.{p}", hf + f"output.dense.{p}") for p in wb]
            rows += [(ours + f"ffn_norm.{p}", hf + f"output.LayerNorm.{p}") for p in norm_params]
    if cfg.family == "gpt2":
        rows += [("tok_embeddings.weight", "transformer.wte.weight"), ("pos_embeddings.weight", "transformer.wpe.weight")]
        rows += [(f"norm.{p}", f"transformer.ln_f.{p}") for p in norm_params]
        rows += [("output.weight", "lm_head.weight")]
    elif cfg.family == "llama":
        rows += [("tok_embeddings.weight", "model.embed_tokens.weight"), ("norm.weight", "model.norm.weight"),
                 ("output.weight", "lm_head.weight")]
    else:
        e = "bert.embeddings."
        rows += [("tok_embeddings.weight", e + "word_embeddings.weight"),
                 ("pos_embeddings.weight", e + "position_embeddings.weight"),
                 ("type_embeddings.weight", e + "token_type_embeddings.weight"),
                 ("emb_norm.weight", e + "LayerNorm.weight"), ("emb_norm.bias", e + "LayerNorm.bias"),
                 ("head_dense.weight", "cls.predictions.transform.dense.weight"),
                 ("head_dense.bias", "cls.predictions.transform.dense.bias"),
                 ("head_norm.weight", "cls.predictions.transform.LayerNorm.weight"),
                 ("head_norm.bias", "cls.predictions.transform.LayerNorm.bias"),
                 ("output.weight", "cls.predictions.decoder.weight"), ("output.bias", "cls.predictions.bias")]
    return rows


# GPT-2's Conv1D layers store (in, out); nn.Linear stores (out, in)
_GPT2_TRANSPOSED = ("attn.c_proj.weight", "mlp.c_fc.weight", "mlp.c_proj.weight", "attn.c_attn.weight")


def to_hf_state_dict(cfg: ModelConfig, state: dict[str, Tensor]) -> dict[str, Tensor]:
    """Rename (and for GPT-2, fuse and transpose) a lit_llm state dict into ``transformers`` names."""
    out = {}
    for ours, hf in _name_table(cfg):
        t = state[ours]
        out[hf] = t.t().contiguous() if cfg.family == "gpt2" and hf.endswith(_GPT2_TRANSPOSED) else t
    if cfg.family == "gpt2":
        for i in range(cfg.n_layer):
            q, k, v = (state[f"layers.{i}.attention.{w}.weight"] for w in ("wq", "wk", "wv"))
            out[f"transformer.h.{i}.attn.c_attn.weight"] = torch.cat([q, k, v], dim=0).t().contiguous()
            out[f"transformer.h.{i}.attn.c_attn.bias"] = torch.cat(
                [state[f"layers.{i}.attention.{w}.bias"] for w in ("wq", "wk", "wv")])
    if cfg.family == "bert":
        out["cls.predictions.decoder.bias"] = state["output.bias"]
    return out


def from_hf_state_dict(cfg: ModelConfig, hf_state: dict[str, Tensor]) -> dict[str, Tensor]:
    """The inverse of ``to_hf_state_dict``: ``transformers`` names -> lit_llm names."""
    out = {}
    for ours, hf in _name_table(cfg):
        if hf not in hf_state and ours == "output.weight" and cfg.tie_embeddings:
            continue  # a tied head may be saved only once
        t = hf_state[hf]
        out[ours] = t.t().contiguous() if cfg.family == "gpt2" and hf.endswith(_GPT2_TRANSPOSED) else t
    if cfg.family == "gpt2":
        for i in range(cfg.n_layer):
            w = hf_state[f"transformer.h.{i}.attn.c_attn.weight"].t()
            b = hf_state[f"transformer.h.{i}.attn.c_attn.bias"]
            for j, name in enumerate(("wq", "wk", "wv")):
                out[f"layers.{i}.attention.{name}.weight"] = w[j * cfg.n_embd : (j + 1) * cfg.n_embd].contiguous()
                out[f"layers.{i}.attention.{name}.bias"] = b[j * cfg.n_embd : (j + 1) * cfg.n_embd]
    if cfg.tie_embeddings:
        out["output.weight"] = out["tok_embeddings.weight"]
    return out


def to_hf_model(cfg: ModelConfig, state: dict[str, Tensor]):
    """A ``transformers`` model (GPT2LMHeadModel, LlamaForCausalLM or BertForMaskedLM) with these weights."""
    tf = _require_transformers()
    hf_config = to_hf_config(cfg)
    cls = {"gpt2": tf.GPT2LMHeadModel, "llama": tf.LlamaForCausalLM, "bert": tf.BertForMaskedLM}[cfg.family]
    model = cls(hf_config)
    missing, unexpected = model.load_state_dict(to_hf_state_dict(cfg, state), strict=False)
    missing = [k for k in missing if not (cfg.tie_embeddings and k in ("lm_head.weight", "cls.predictions.decoder.weight"))]
    if missing or unexpected:
        raise RuntimeError(f"Conversion to {cls.__name__} left missing={missing} unexpected={unexpected}")
    return model.eval()


def from_hf_model(hf_model) -> tuple[ModelConfig, dict[str, Tensor]]:
    """The lit_llm config and state dict of a ``transformers`` GPT-2, Llama or BERT model."""
    cfg = from_hf_config(hf_model.config)
    return cfg, from_hf_state_dict(cfg, hf_model.state_dict())
