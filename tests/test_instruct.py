"""Fine-tuning the language model itself: the chat template, instruction tuning (loss on the answers only, LoRA
merged on load), DPO (against TRL's loss), pairs from the feedback store, and `lit_llm chat`."""

import io
import json
import logging
import math
import subprocess
import sys
from collections import defaultdict
from pathlib import Path
from types import SimpleNamespace

import lightning as L
import pytest
import torch

from lit_llm import chat
from lit_llm import checkpoint as ckpt_format
from lit_llm.completion import CompletionText
from lit_llm.data.instructions import InstructionDataModule, PreferenceDataModule
from lit_llm.feedback import FeedbackStore, preference_pairs
from lit_llm.generate import iter_tokens, load_checkpoint
from lit_llm.model import build_model
from lit_llm.model.loss import IGNORE_INDEX
from lit_llm.tasks import InstructionModel, LoraSpec, PreferenceModel
from lit_llm.tasks.preference import dpo_loss
from tests.helpers.checkpoints import write_lm_checkpoint
from tests.helpers.paths import REPO, cli_env

CONVERSATION = [{"role": "system", "content": "Answer in one word."}, {"role": "user", "content": "a fine film"},
                {"role": "assistant", "content": "positive"}, {"role": "user", "content": "a dull film"},
                {"role": "assistant", "content": "negative"}]


def write_jsonl(path: Path, records) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in records))
    return path


def sentiment_records(n: int) -> list[dict]:
    words = ["fine", "dull", "gripping", "boring", "lovely", "awful"]
    return [{"prompt": f"a {words[i % 6]} film , number {i}", "response": "positive" if i % 2 == 0 else "negative"}
            for i in range(n)]


@pytest.fixture(scope="module")
def lm_ckpt(tmp_path_factory) -> Path:
    return write_lm_checkpoint(tmp_path_factory.mktemp("lm") / "lm.ckpt")


@pytest.fixture(scope="module")
def sft_file(tmp_path_factory) -> Path:
    return write_jsonl(tmp_path_factory.mktemp("sft") / "sft.jsonl", sentiment_records(24))


def trainer(steps: int, **kw) -> L.Trainer:
    return L.Trainer(max_steps=steps, accelerator="cpu", logger=False, enable_checkpointing=False,
                     enable_progress_bar=False, enable_model_summary=False, num_sanity_val_steps=0,
                     limit_val_batches=0, **kw)


def setup_data(dm, module) -> None:
    """Attach the data module to a module as ``fit`` does (the data encodes with the model's tokenizer)."""
    dm.trainer = SimpleNamespace(lightning_module=module, strategy=None)
    dm.setup("fit")


# ---------------------------------------------------------------------------------------------- the template
def test_one_chat_template_for_training_serving_and_export(lm_ckpt):
    """transformers renders the exported template exactly as lit_llm does; serve's chat route prompts with it; the
    training segments join to the same text, the answers being each assistant turn and its [EOS]."""
    import transformers as tf

    from lit_llm.serve.protocol import ChatMessage, chat_prompt

    _, _, tok = ckpt_format.load_network(lm_ckpt)
    hf_tok = tf.PreTrainedTokenizerFast(tokenizer_object=tok, eos_token="[EOS]")
    hf_tok.chat_template = chat.CHAT_TEMPLATE
    assert hf_tok.apply_chat_template(CONVERSATION, tokenize=False) == chat.render(CONVERSATION, eos="[EOS]")
    head = CONVERSATION[:4]
    assert (hf_tok.apply_chat_template(head, tokenize=False, add_generation_prompt=True)
            == chat.prompt(head, eos="[EOS]")
            == chat_prompt([ChatMessage(**m) for m in head], eos="[EOS]"))
    parts = chat.segments(CONVERSATION, "[EOS]")
    assert "".join(t for t, _ in parts) == chat.render(CONVERSATION, eos="[EOS]")
    assert [t for t, answer in parts if answer] == [" positive[EOS]\n", " negative[EOS]\n"]


# ---------------------------------------------------------------------------------------------- instruction tuning
def test_only_the_answer_tokens_are_trained(lm_ckpt, sft_file):
    """The labels are the answer's tokens ([EOS] included) and nothing else, and the loss sends no gradient to
    the logits of any prompt or padding position."""
    module = InstructionModel(str(lm_ckpt))
    dm = InstructionDataModule(str(sft_file), batch_size=4, val_fraction=0.0)
    setup_data(dm, module)
    batch = dm.collate(dm.rows["train"][:4])
    tok = module.tokenizer
    for row, labels in zip(dm.rows["train"][:4], batch["labels"]):
        answer = [t for t in labels.tolist() if t != IGNORE_INDEX]
        assert tok.decode(answer, skip_special_tokens=False).strip() in ("positive [EOS]", "positive[EOS]",
                                                                          "negative [EOS]", "negative[EOS]")
    module.configure_model()
    x, y = module._inputs_targets(batch)
    logits = module.model(x)
    logits.retain_grad()
    torch.nn.functional.cross_entropy(logits.transpose(1, 2), y, ignore_index=IGNORE_INDEX).backward()
    grad_norm = logits.grad.norm(dim=-1)  # (B, T)
    prompt = y == IGNORE_INDEX
    assert prompt.any() and (~prompt).any()
    assert torch.all(grad_norm[prompt] == 0)
    assert torch.all(grad_norm[~prompt] > 0)


@pytest.mark.parametrize("records, message", [
    ([{"messages": [{"role": "user", "content": "hi"}]}], "no assistant turn"),
    ([{"messages": [{"role": "robot", "content": "hi"}, {"role": "assistant", "content": "x"}]}],
     "the role 'robot', which the chat template does not know"),
    ([{"question": "hi", "answer": "x"}], "'prompt' and 'response'"),
    (["not an object"], "not an object"),
])
def test_bad_conversations_get_one_clear_error(tmp_path, lm_ckpt, records, message):
    path = tmp_path / "bad.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in records))
    dm = InstructionDataModule(str(path), val_fraction=0.0)
    with pytest.raises(ValueError, match=message) as e:
        setup_data(dm, InstructionModel(str(lm_ckpt)))
    assert "bad.jsonl:1" in str(e.value)


def test_unreadable_files_are_named(tmp_path, lm_ckpt):
    module = InstructionModel(str(lm_ckpt))
    latin1 = tmp_path / "latin1.jsonl"
    latin1.write_bytes(b'{"prompt": "caf\xe9", "response": "x"}\n')
    with pytest.raises(ValueError, match="latin1.jsonl is not UTF-8"):
        setup_data(InstructionDataModule(str(latin1), val_fraction=0.0), module)
    broken = write_jsonl(tmp_path / "broken.jsonl", sentiment_records(2))
    broken.write_text(broken.read_text() + '{"prompt": "x", \n')
    with pytest.raises(ValueError, match="broken.jsonl:3 is not a JSON object"):
        setup_data(InstructionDataModule(str(broken), val_fraction=0.0), module)
    with pytest.raises(FileNotFoundError):
        InstructionDataModule(str(tmp_path / "missing.jsonl"))


def test_conversations_longer_than_the_context_are_counted(tmp_path, lm_ckpt, caplog):
    long = {"prompt": "a fine film " * 40, "response": "positive"}  # well over the 64-token context
    path = write_jsonl(tmp_path / "mixed.jsonl", sentiment_records(3) + [long])
    module = InstructionModel(str(lm_ckpt))
    with pytest.raises(ValueError, match="mixed.jsonl:4: the conversation is .* tokens, longer than the model's context"):
        setup_data(InstructionDataModule(str(path), val_fraction=0.0, overlong="error"), module)
    with caplog.at_level(logging.INFO):
        dm = InstructionDataModule(str(path), val_fraction=0.0, overlong="drop")
        setup_data(dm, module)
    assert len(dm.rows["train"]) == 3
    assert "1 of 4 dropped and 0 cut" in caplog.text
    dm = InstructionDataModule(str(path), val_fraction=0.0, overlong="truncate")
    setup_data(dm, module)  # the cut conversation lost its answer: nothing to learn, so it is dropped
    assert len(dm.rows["train"]) == 3 and all(len(x) <= 63 for x, _ in dm.rows["train"])


def test_a_tokenizer_without_eos_is_refused_before_training(tmp_path, sft_file):
    from lit_llm.data.tokenizer import train_char_tokenizer
    from lit_llm.model import ModelConfig

    tok = train_char_tokenizer("abcdefghijklmnopqrstuvwxyz ,0123456789")
    cfg = ModelConfig.from_name("debug", vocab_size=tok.get_vocab_size(), block_size=64)
    path = tmp_path / "char.ckpt"
    torch.save({"state_dict": {f"model.{k}": v for k, v in build_model(cfg).state_dict().items()},
                "lit_llm": {"model_config": cfg.to_dict(), "tokenizer": tok.to_str()}}, path)
    with pytest.raises(ValueError, match=r"no \[EOS\] token"):
        setup_data(InstructionDataModule(str(sft_file)), InstructionModel(str(path)))


def test_a_lora_tuned_checkpoint_loads_as_a_plain_language_model(tmp_path, lm_ckpt, sft_file):
    """LoRA adapters trained by InstructionModel are merged when the checkpoint is read: generate, serve, export
    and init_from see a plain model whose logits equal the adapted one's."""
    module = InstructionModel(str(lm_ckpt), lora=LoraSpec(rank=4, targets=["wq", "wv", "w1"]),
                              optimizer={"learning_rate": 1e-2, "warmup_steps": 0})
    t = trainer(4)
    t.fit(module, InstructionDataModule(str(sft_file), batch_size=4, val_fraction=0.0))
    t.save_checkpoint(tmp_path / "lora.ckpt")
    assert any("lora_B" in k for k in torch.load(tmp_path / "lora.ckpt", weights_only=True)["state_dict"])
    model, _ = load_checkpoint(tmp_path / "lora.ckpt")
    base, _ = load_checkpoint(lm_ckpt)
    x = torch.randint(0, model.config.vocab_size, (2, 16))
    module.eval()
    with torch.no_grad():
        assert torch.allclose(model(x), module.model(x), atol=1e-5)
        assert not torch.allclose(model(x), base(x), atol=1e-3)  # the adapters did change the model
    again = InstructionModel(str(tmp_path / "lora.ckpt"))  # a later stage starts from it
    again.configure_model()
    with torch.no_grad():
        assert torch.allclose(again.model.eval()(x), model(x), atol=1e-5)


@pytest.mark.slow
def test_fit_through_the_cli_tunes_and_resumes(tmp_path, lm_ckpt, sft_file):
    """`fit` with the instruction config trains with LoRA, writes a language-model checkpoint, and a resumed run
    continues it."""
    def fit(steps: int, *extra: str) -> None:
        args = [sys.executable, "-m", "lit_llm", "fit", "--config", str(REPO / "configs/experiment/instruct.yaml"),
                "--model.init_from", str(lm_ckpt), "--data.train", str(sft_file), "--data.batch_size", "4",
                "--trainer.max_steps", str(steps), "--trainer.val_check_interval", "3",
                "--trainer.default_root_dir", str(tmp_path / "run"), "--model.optimizer.warmup_steps", "1",
                "--plots.enabled", "false", "--trainer.logger", "false", "--model.lora", "{rank: 4}", *extra]
        r = subprocess.run(args, capture_output=True, text=True, env=cli_env(tmp_path), cwd=tmp_path, timeout=300)
        assert r.returncode == 0, r.stderr[-3000:]

    fit(3)
    info = ckpt_format.read_info(tmp_path / "run/checkpoints/last.ckpt")
    assert info.task == "language_model" and info.lora is not None
    fit(5, "--ckpt_path", "last")
    assert torch.load(tmp_path / "run/checkpoints/last.ckpt", weights_only=True)["global_step"] == 5


# ---------------------------------------------------------------------------------------------- DPO
def _trl_loss(loss_type, beta, smoothing, logps, ref_logps, completion_mask):
    """TRL's DPOTrainer._compute_loss on given summed log-probabilities: its model returns them spread over each
    row's completion tokens; the reference's are precomputed."""
    from trl.trainer import dpo_trainer as dpo  # the dev extra has TRL for this check
    shifted = completion_mask[:, 1:]
    per_token = (logps / shifted.sum(1))[:, None] * shifted
    zeros = torch.zeros_like(per_token)
    outputs = SimpleNamespace(log_probs=per_token, entropy=zeros, mean_logits=zeros, is_top1=zeros.bool())
    accel = SimpleNamespace(device="cpu", gather_for_metrics=lambda t: t, gather=lambda t: t, unwrap_model=lambda m: m)

    class Policy:  # the model TRL calls: it returns the log-probabilities
        training = True

        def __call__(self, **kw):
            return outputs

    stub = SimpleNamespace(model=Policy(), accelerator=accel, aux_loss_enabled=False, ld_alpha=None, precompute_ref_logps=True,
                f_divergence_type="reverse_kl", loss_types=[loss_type], loss_weights=[1.0], beta=beta,
                label_smoothing=smoothing, use_weighting=False, _metrics={"train": defaultdict(list)},
                _total_train_tokens=0, _tp_size=1)
    chosen_ref, rejected_ref = ref_logps.chunk(2)
    inputs = {"input_ids": torch.ones_like(completion_mask), "attention_mask": torch.ones_like(completion_mask),
              "completion_mask": completion_mask, "ref_chosen_logps": chosen_ref, "ref_rejected_logps": rejected_ref}
    loss = dpo.DPOTrainer._compute_loss(stub, stub.model, inputs, return_outputs=False)
    return loss, stub._metrics["train"]


@pytest.mark.parametrize("loss_type, smoothing", [("sigmoid", 0.0), ("robust", 0.2), ("ipo", 0.0)])
def test_dpo_loss_matches_trl(loss_type, smoothing):
    """The same log-probabilities give TRL's loss, reward margin and reward accuracy to 1e-6."""
    g = torch.Generator().manual_seed(0)
    B, beta = 6, 0.3
    logps = -torch.rand(2 * B, generator=g, dtype=torch.float64) * 20
    ref = logps + torch.randn(2 * B, generator=g, dtype=torch.float64)
    completion_mask = torch.ones(2 * B, 4, dtype=torch.long)  # answers of 2 or 3 tokens (ipo averages over them)
    completion_mask[::3, 0] = 0
    expected, metrics = _trl_loss(loss_type, beta, smoothing, logps, ref, completion_mask)
    losses, chosen_r, rejected_r = dpo_loss(*logps.chunk(2), *ref.chunk(2), beta, loss_type, smoothing,
                                            *completion_mask.sum(1).chunk(2))
    assert losses.mean().item() == pytest.approx(expected.item(), abs=1e-6)
    assert (chosen_r - rejected_r).mean().item() == pytest.approx(metrics["rewards/margins"][0], abs=1e-6)
    assert (chosen_r > rejected_r).double().mean().item() == pytest.approx(metrics["rewards/accuracies"][0], abs=1e-6)


@pytest.fixture(scope="module")
def pairs_file(tmp_path_factory) -> Path:
    # one consistent preference, which even a model that cannot yet read the prompt can learn in a few steps
    records = [{"prompt": r["prompt"], "chosen": "positive", "rejected": "negative"} for r in sentiment_records(16)]
    return write_jsonl(tmp_path_factory.mktemp("pairs") / "pairs.jsonl", records)


@pytest.mark.parametrize("lora", [None, LoraSpec(rank=4, targets=["wq", "wv", "w1", "w2", "w3"])], ids=["full", "lora"])
def test_dpo_starts_at_log_2_and_learns_the_preferences(lm_ckpt, pairs_file, lora):
    """Policy = reference at the start, so every pair's loss is log 2 exactly; a few steps later the policy
    prefers each chosen answer (reward accuracy 1, loss below log 2)."""
    module = PreferenceModel(str(lm_ckpt), lora=lora, optimizer={"learning_rate": 5e-3 if lora is None else 5e-2,
                                                                "warmup_steps": 0})
    dm = PreferenceDataModule(str(pairs_file), batch_size=8)
    module.configure_model()
    setup_data(dm, module)
    batch = dm.collate(dm.rows["train"][:8])
    assert module._pair_loss(batch)["loss"].item() == pytest.approx(math.log(2), abs=1e-6)
    trainer(12).fit(module, PreferenceDataModule(str(pairs_file), batch_size=8))
    out = module._pair_loss(batch)
    assert out["loss"].item() < math.log(2) - 0.05
    assert out["accuracy"].item() == 1.0 and out["margin"].item() > 0


def test_feedback_store_becomes_preference_pairs(tmp_path, lm_ckpt):
    """A correction pairs the corrected text (chosen) with the answer served (rejected); two answers to one request
    rated 1 and -1 make a pair; a rating with no opposite, and classifier feedback, make none."""
    store = FeedbackStore(tmp_path / "feedback.jsonl")
    store.append({"kind": "completion", "request": "a dull film", "response": " positive", "corrected_text": "negative"})
    store.append({"kind": "completion", "request": "a fine film", "response": " positive", "rating": 1})
    store.append({"kind": "completion", "request": "a fine film", "response": " negative", "rating": -1})
    store.append({"kind": "completion", "request": "a long film", "response": " positive", "rating": 1})
    store.append({"kind": "classification", "request": "x", "corrected_label": 1})
    pairs, counts = preference_pairs(store.records())
    assert pairs == [{"prompt": "a dull film", "chosen": "negative", "rejected": "positive"},
                     {"prompt": "a fine film", "chosen": "positive", "rejected": "negative"}]
    assert counts == {"corrections": 1, "rated_pairs": 1, "unused": 1 + 1}
    module = PreferenceModel(str(lm_ckpt))
    dm = PreferenceDataModule(str(store.path))
    setup_data(dm, module)
    assert len(dm.rows["train"]) == 2
    empty = FeedbackStore(tmp_path / "empty.jsonl")
    empty.append({"kind": "completion", "request": "a", "response": " b", "rating": 1})
    with pytest.raises(ValueError, match="give no preference pair"):
        setup_data(PreferenceDataModule(str(empty.path)), module)


def test_dpo_options_are_checked(lm_ckpt):
    with pytest.raises(ValueError, match="robust only"):
        PreferenceModel(str(lm_ckpt), label_smoothing=0.1)
    with pytest.raises(ValueError, match="beta must be > 0"):
        PreferenceModel(str(lm_ckpt), beta=0)


# ---------------------------------------------------------------------------------------------- lit_llm chat
def test_chat_keeps_history_streams_and_resets(lm_ckpt, monkeypatch, capsys):
    """The terminal chat answers as a greedy decode of the template's prompt with serve's stopping rules;
    the second turn's prompt holds the first exchange; /reset starts over (the same first answer again)."""
    model, tok = load_checkpoint(lm_ckpt)
    eos = chat.eos_token(tok)

    def expected(history):
        from lit_llm.data.tokenizer import encode

        ids = encode(tok, chat.prompt(history, eos))
        state = CompletionText(tok, ids, 8, list(chat.STOP_STRINGS))
        for token in iter_tokens(model, torch.tensor([ids]), 8, temperature=0.0):
            state.push(int(token))
            if state.done:
                break
        return state.text

    first = expected([{"role": "user", "content": "a fine film"}])
    second = expected([{"role": "user", "content": "a fine film"},
                       {"role": "assistant", "content": chat.answer_content(first)},
                       {"role": "user", "content": "and this one"}])
    monkeypatch.setattr(sys, "stdin", io.StringIO("a fine film\nand this one\n/reset\na fine film\n/exit\n"))
    chat.chat(str(lm_ckpt), max_new_tokens=8, temperature=0.0)
    out = capsys.readouterr().out
    answers = [line.split("assistant:", 1)[1] for line in out.splitlines() if "assistant:" in line]
    assert answers == [first, second, first]
    assert "(new conversation)" in out


def test_chat_refuses_a_message_longer_than_the_context(lm_ckpt):
    model, tok = load_checkpoint(lm_ckpt)
    session = chat.ChatSession(model, tok, max_new_tokens=4, temperature=0.0)
    with pytest.raises(ValueError, match="send a shorter one"):
        list(session.reply("a fine film " * 40))
    assert session.history == []  # the refused message is not kept
    for _ in range(8):  # a long conversation: the oldest exchanges make room
        list(session.reply("a fine film , a fine film"))
    assert session.dropped > 0 and session.history[-2]["content"] == "a fine film , a fine film"


@pytest.mark.parametrize("task", ["instruction-lora", "dpo-full"])
def test_muon_steps_exactly_the_trainable_block_matrices_of_fine_tuning(lm_ckpt, task):
    """--model.optimizer.name muon in instruction tuning and DPO: Muon gets the trainable 2-D weights inside the
    blocks (with LoRA: the adapters, not the frozen base; in DPO: the policy's, never the reference's), AdamW the
    other trainable parameters, and a step moves only those."""
    optimizer = {"name": "muon", "warmup_steps": 0, "muon_lr": 0.02}
    if task == "instruction-lora":
        module = InstructionModel(str(lm_ckpt), lora=LoraSpec(rank=4, targets=["wq", "wv"]), optimizer=optimizer)
    else:
        module = PreferenceModel(str(lm_ckpt), optimizer=optimizer)
    module.configure_model()
    opt, _ = module.build_optimizer(10)
    muon = {id(p) for g in opt.muon.param_groups for p in g["params"]}
    adamw = {id(p) for g in (opt.adamw.param_groups if opt.adamw else []) for p in g["params"]}  # LoRA: none
    trainable = {id(p): n for n, p in module.named_parameters() if p.requires_grad}
    blocks = {id(p) for p in module.network.layers.parameters() if p.dim() == 2 and p.requires_grad}
    assert muon == blocks and muon.isdisjoint(adamw) and muon | adamw == set(trainable)
    if task == "instruction-lora":
        assert all("lora_" in trainable[i] for i in muon)
    before = {n: p.detach().clone() for n, p in module.named_parameters()}
    x = torch.randint(0, module.network.config.vocab_size, (2, 8))
    module.network(x).float().pow(2).mean().backward()
    opt.step()
    moved = {n for n, p in module.named_parameters() if not torch.equal(p, before[n])}
    assert moved and moved <= set(trainable.values())
