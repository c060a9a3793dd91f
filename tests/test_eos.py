"""End of text, end to end: generation, serving, chat, instruction data and the export stop at the model's own
end-of-text id, for a model trained by lit_llm (BPE, ``[EOS]``) and one imported from transformers whose end of
text is ``<|endoftext|>`` at another id. Each model's weights are set so that greedy decoding always picks its
end-of-text id: a path that stops on the wrong token, or on a string, runs on to ``max_tokens``."""

import json

import pytest
import torch

transformers = pytest.importorskip("transformers")

from lit_llm import checkpoint as ckpt_format  # noqa: E402
from lit_llm.data.tokenizer import TokenizerSpec, eos_id, eos_token, special_tokens, train_tokenizer  # noqa: E402
from lit_llm.generate import load_checkpoint, sample_texts  # noqa: E402
from tests.helpers.checkpoints import gpt2_style_tokenizer, write_lm_checkpoint  # noqa: E402

PROMPT = "a good film"


def _always(ckpt_path, token_id: int) -> None:
    """Make greedy decoding of a GPT-2-family checkpoint pick ``token_id`` at every step: the final LayerNorm
    gives all ones whatever the input, and only that token's output row is non-zero."""
    ckpt = torch.load(ckpt_path, weights_only=True)
    state = ckpt["state_dict"]
    state["model.norm.weight"] = torch.zeros_like(state["model.norm.weight"])
    state["model.norm.bias"] = torch.ones_like(state["model.norm.bias"])
    head = torch.zeros_like(state["model.output.weight"])
    head[token_id] = 1.0
    state["model.output.weight"] = head
    if ckpt["lit_llm"]["model_config"].get("tie_embeddings"):
        state["model.tok_embeddings.weight"] = head
    torch.save(ckpt, ckpt_path)


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    """{"trained": lit_llm's own (BPE, [EOS]), "imported": via import-hf, eos <|endoftext|>}: (ckpt, eos token)."""

    from lit_llm.export import import_hf

    d = tmp_path_factory.mktemp("eos")
    trained = write_lm_checkpoint(d / "trained.ckpt")
    _always(trained, eos_id(load_checkpoint(trained)[1]))

    # a transformers GPT-2 with GPT-2's conventions: <|endoftext|> ends (and starts) texts, no [EOS] anywhere
    tok = gpt2_style_tokenizer()
    end = tok.token_to_id("<|endoftext|>")
    config = transformers.GPT2Config(vocab_size=tok.get_vocab_size(), n_positions=64, n_embd=32, n_layer=1, n_head=2,
                                     bos_token_id=end, eos_token_id=end)
    hf = transformers.GPT2LMHeadModel(config)
    with torch.no_grad():
        hf.transformer.ln_f.weight.zero_()
        hf.transformer.ln_f.bias.fill_(1.0)
        hf.transformer.wte.weight.zero_()  # tied: the output head too
        hf.transformer.wte.weight[end] = 1.0
    src = d / "hf_gpt2"
    hf.save_pretrained(src)
    transformers.PreTrainedTokenizerFast(tokenizer_object=tok, eos_token="<|endoftext|>", bos_token="<|endoftext|>",
                                         pad_token="<|pad|>").save_pretrained(src)
    imported = import_hf(str(src), str(d / "imported.ckpt"))
    return {"trained": (trained, "[EOS]"), "imported": (imported, "<|endoftext|>")}


def test_import_hf_keeps_the_sources_special_tokens(models):
    path, _ = models["imported"]
    info = ckpt_format.read_info(path)
    assert info.special_tokens == {"bos": "<|endoftext|>", "eos": "<|endoftext|>", "pad": "<|pad|>"}
    tok = info.build_tokenizer()
    assert eos_token(tok) == "<|endoftext|>" and eos_id(tok) == tok.token_to_id("<|endoftext|>") != 0
    assert tok.token_to_id("[EOS]") is None


@pytest.mark.parametrize("kind", ["trained", "imported"])
def test_generate_serve_and_chat_stop_at_the_models_end_of_text(models, kind):
    from lit_llm.chat import ChatSession
    from lit_llm.data.tokenizer import encode
    from lit_llm.serve import CompletionJob, decode_static

    path, end = models[kind]
    model, tok = load_checkpoint(path)
    assert eos_token(tok) == end
    # generate: nothing after the prompt; --ignore_eos goes on to max_new_tokens
    assert sample_texts(model, tok, PROMPT, 8, 0.0, None, None, seed=0) == [PROMPT]
    assert sample_texts(model, tok, PROMPT, 8, 0.0, None, None, seed=0, ignore_eos=True)[0].count(end) == 8
    # serve: the worker's completion stream ends at once, with finish_reason "stop" and one sampled token
    job = CompletionJob(encode(tok, PROMPT), max_tokens=8, stop=[], temperature=0.0, stream=True)
    messages = [piece for (piece,) in decode_static(model, tok, [job])]
    assert messages[-1].finish_reason == "stop" and messages[-1].usage.completion_tokens == 1
    assert "".join(m.text for m in messages) == ""
    # chat: an empty answer, and the transcript closes the assistant's turn with the model's end of text
    session = ChatSession(model, tok, temperature=0.0, max_new_tokens=8)
    assert "".join(session.reply("hello")) == ""
    from lit_llm.chat import prompt

    assert f"assistant:{end}\n" in prompt(session.history, session.eos).replace(" ", "")


@pytest.mark.parametrize("kind", ["trained", "imported"])
def test_instruction_data_and_tuned_checkpoints_keep_the_end_of_text(models, kind, tmp_path):
    from lit_llm.data.instructions import encode_conversation
    from lit_llm.tasks import InstructionModel

    path, end = models[kind]
    module = InstructionModel(init_from=str(path))
    ids, answer = encode_conversation(module.tokenizer, [{"role": "user", "content": "hi"},
                                                         {"role": "assistant", "content": "hello"}],
                                      eos_token(module.tokenizer))
    last = max(i for i, t in enumerate(ids) if t == module.tokenizer.token_to_id(end))
    assert answer[last]  # trained on: the answer ends with the model's end of text
    saved: dict = {}
    module.tokenizer_json = module.init_tokenizer
    module.on_save_checkpoint(saved)
    info = ckpt_format.CheckpointInfo.from_dict(saved[ckpt_format.KEY])
    assert eos_token(info.build_tokenizer()) == end


@pytest.mark.parametrize("kind", ["trained", "imported"])
def test_the_export_stops_at_the_models_end_of_text(models, kind, tmp_path):
    from lit_llm.export import export

    path, end = models[kind]
    tok = load_checkpoint(path)[1]
    out = export(str(path), str(tmp_path / "hf"))
    config = json.loads((out / "config.json").read_text())
    generation = json.loads((out / "generation_config.json").read_text())
    assert config["eos_token_id"] == generation["eos_token_id"] == tok.token_to_id(end)
    hf_tok = transformers.AutoTokenizer.from_pretrained(out)
    assert hf_tok.eos_token == end and hf_tok.eos_token_id == tok.token_to_id(end)
    roles = {**special_tokens(tok), "bos": end}  # a lit_llm text follows an [EOS]: the export's BOS is it
    assert {f"{r}_token": t for r, t in roles.items()}.items() <= hf_tok.special_tokens_map.items()
    hf = transformers.AutoModelForCausalLM.from_pretrained(out)
    ids = torch.tensor([hf_tok(PROMPT).input_ids])
    generated = hf.generate(ids, max_new_tokens=8, do_sample=False)
    assert generated.shape[1] == ids.shape[1] + 1 and generated[0, -1].item() == tok.token_to_id(end)


def test_a_character_vocabulary_exports_with_an_unknown_token(tmp_path):
    """transformers reads any text with a character-level export: unseen characters become [UNK] (lit_llm itself
    refuses them, naming them)."""
    from lit_llm.data.tokenizer import encode
    from lit_llm.export import export
    from lit_llm.model import ModelConfig, build_model

    chars = train_tokenizer(TokenizerSpec(kind="char"), ["to be or not to be!"])
    cfg = ModelConfig.from_name("debug", vocab_size=chars.get_vocab_size(), block_size=32)
    ckpt_format.save(tmp_path / "char.ckpt", {f"model.{k}": v for k, v in build_model(cfg).state_dict().items()},
                     ckpt_format.CheckpointInfo(task="language_model", model_config=cfg.to_dict(),
                                                tokenizer=chars.to_str()))
    out = export(str(tmp_path / "char.ckpt"), str(tmp_path / "hf"))
    hf_tok = transformers.AutoTokenizer.from_pretrained(out)
    assert hf_tok.unk_token == "[UNK]"
    assert hf_tok.convert_ids_to_tokens(hf_tok("to bez").input_ids)[-1] == "[UNK]"
    with pytest.raises(ValueError, match=r"does not know: \['z'\]"):
        encode(chars, "to bez")
