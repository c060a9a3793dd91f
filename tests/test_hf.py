"""Parity with Hugging Face transformers after weight conversion (litgpt's test_against_hf style)."""

import re

import pytest
import torch

transformers = pytest.importorskip("transformers")

from lit_llm.convert_hf import from_hf_model, to_hf_config, to_hf_model  # noqa: E402
from lit_llm.generate import generate_tokens  # noqa: E402
from lit_llm.model import ModelConfig, build_model  # noqa: E402

CASES = [
    ("debug", {}),  # nanoGPT-style GPT-2 with exact GELU
    ("debug", {"mlp": "gelu_tanh", "tie_embeddings": False}),  # GPT-2's own GELU, untied head
    ("debug-llama", {}),  # RMSNorm, RoPE, SwiGLU, GQA 4/2
    ("debug-llama", {"bias": True, "tie_embeddings": True, "rope_theta": 500000.0}),
    ("debug-bert", {}),
]


def _random_model(name, **kw):
    torch.manual_seed(0)
    cfg = ModelConfig.from_name(name, vocab_size=97, block_size=48, **kw)
    model = build_model(cfg).eval()
    with torch.no_grad():  # non-trivial norms and biases, so a swapped or dropped one shows
        for pname, p in model.named_parameters():
            if p.dim() == 1:
                p.normal_(1.0 if "norm" in pname and pname.endswith("weight") else 0.0, 0.1)
    return cfg, model


@pytest.mark.parametrize(("name", "kw"), CASES, ids=lambda x: str(x))
def test_logits_match_transformers(name, kw):
    cfg, model = _random_model(name, **kw)
    hf = to_hf_model(cfg, model.state_dict())
    idx = torch.randint(0, 97, (3, 40))
    with torch.no_grad():
        ours, theirs = model(idx), hf(idx).logits
    torch.testing.assert_close(ours, theirs, atol=1e-5, rtol=1e-5)
    if not cfg.causal:  # padding masks mean the same thing on both sides
        keep = torch.ones_like(idx)
        keep[:, 30:] = 0
        with torch.no_grad():
            torch.testing.assert_close(model(idx, attention_mask=keep)[:, :30],
                                       hf(idx, attention_mask=keep).logits[:, :30], atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize(("name", "kw"), CASES, ids=lambda x: str(x))
def test_import_from_transformers_round_trips(name, kw):
    cfg, model = _random_model(name, **kw)
    back_cfg, state = from_hf_model(to_hf_model(cfg, model.state_dict()))
    assert {**back_cfg.to_dict(), "name": cfg.name} == cfg.to_dict()
    back = build_model(back_cfg).eval()
    back.load_state_dict(state)
    idx = torch.randint(0, 97, (2, 20))
    with torch.no_grad():
        torch.testing.assert_close(back(idx), model(idx), atol=0, rtol=0)


@pytest.mark.parametrize("name", ["debug", "debug-llama"])
def test_greedy_generation_matches_transformers(name):
    cfg, model = _random_model(name)
    hf = to_hf_model(cfg, model.state_dict())
    prompt = torch.randint(0, 97, (1, 5))
    ours = generate_tokens(model, prompt, 30, temperature=0)
    theirs = hf.generate(prompt, max_new_tokens=30, do_sample=False, pad_token_id=0, eos_token_id=None)
    assert torch.equal(ours, theirs)


def test_architectures_without_an_hf_equivalent_are_refused():
    with pytest.raises(ValueError, match="no Hugging Face gpt2 equivalent"):
        to_hf_config(ModelConfig.from_name("debug", positions="rope"))
    with pytest.raises(ValueError, match="no Hugging Face llama equivalent"):
        to_hf_config(ModelConfig.from_name("debug-llama", mlp="gelu"))


# ---------------------------------------------------------------------------------------------- export's --out
def test_export_refuses_a_non_empty_out_and_replaces_it_only_with_overwrite(tmp_path, capsys):
    import shutil

    from lit_llm.cli import main
    from lit_llm.export import _write_dir, export
    from tests.helpers.checkpoints import write_lm_checkpoint

    ckpt = str(write_lm_checkpoint(tmp_path / "lm.ckpt"))
    run = tmp_path / "outputs" / "run"  # a training run's folder: `export --out outputs/run` must not delete it
    (run / "checkpoints").mkdir(parents=True)
    (run / "checkpoints" / "last.ckpt").write_bytes(b"weights")
    with pytest.raises(FileExistsError, match="exists and is not empty; pass another --out, or --overwrite true"):
        export(ckpt, str(run))
    with pytest.raises(SystemExit) as exit_:  # the command line: one error line, exit code 2
        main(["export", "--checkpoint", ckpt, "--out", str(run)])
    assert exit_.value.code == 2 and "--overwrite true" in capsys.readouterr().err
    assert (run / "checkpoints" / "last.ckpt").read_bytes() == b"weights"  # nothing deleted
    # a write that fails half-way leaves the old folder as it was, and no temporary folder
    def broken(tmp):
        (tmp / "config.json").write_text("{}")
        raise RuntimeError("disk full")

    with pytest.raises(RuntimeError, match="disk full"):
        _write_dir(str(run), broken, overwrite=True)
    assert (run / "checkpoints" / "last.ckpt").read_bytes() == b"weights"
    assert sorted(p.name for p in run.parent.iterdir()) == ["run"]
    # --overwrite true replaces it, once the new folder is complete
    out = export(ckpt, str(run), overwrite=True)
    assert out == run and (run / "model.safetensors").is_file() and not (run / "checkpoints").exists()
    assert sorted(p.name for p in run.parent.iterdir()) == ["run"]  # no temporary or old folder left
    # never a folder that holds the checkpoint being exported, even with --overwrite
    shutil.copy(ckpt, run / "lm.ckpt")
    with pytest.raises(ValueError, match="holds the checkpoint .* being exported"):
        export(str(run / "lm.ckpt"), str(run), overwrite=True)
    assert (run / "lm.ckpt").is_file()


@pytest.mark.parametrize("family", ["debug", "debug-llama"])
def test_export_stops_at_the_tokenizers_eos(tmp_path, family):
    """The exported config, generation config and tokenizer name [EOS]/[BOS]/[PAD] by their ids, so that
    transformers' generate stops at [EOS]; a character vocabulary has none, and gets None, not Llama's 2."""
    import json

    from tokenizers import Tokenizer

    from lit_llm.data.tokenizer import TokenizerSpec, train_tokenizer
    from lit_llm.export import export
    from tests.helpers.checkpoints import write_lm_checkpoint

    ckpt = write_lm_checkpoint(tmp_path / "lm.ckpt", family=family)
    out = export(str(ckpt), str(tmp_path / "hf"))
    tok = Tokenizer.from_file(str(out / "tokenizer.json"))
    config = json.loads((out / "config.json").read_text())
    generation = json.loads((out / "generation_config.json").read_text())
    # a text starts after an [EOS] in lit_llm's training, never after [BOS]: the export's BOS is the [EOS] (as GPT-2's)
    for name, token in (("bos", "[EOS]"), ("eos", "[EOS]"), ("pad", "[PAD]")):
        assert config[f"{name}_token_id"] == generation[f"{name}_token_id"] == tok.token_to_id(token)
    hf_tok = transformers.AutoTokenizer.from_pretrained(out)
    assert hf_tok.eos_token == "[EOS]" and hf_tok.eos_token_id == config["eos_token_id"]
    # a class transformers 4.x loads too (5.x writes TokenizersBackend), and the context as the longest input
    assert json.loads((out / "tokenizer_config.json").read_text())["tokenizer_class"] == "PreTrainedTokenizerFast"
    assert hf_tok.model_max_length == 64
    hf = transformers.AutoModelForCausalLM.from_pretrained(out)
    with torch.no_grad():  # a head that always prefers [EOS]: generation ends after one token
        hf.lm_head.weight.zero_()
        hf.lm_head.weight[config["eos_token_id"]] = 1.0
        if hasattr(hf.lm_head, "bias") and hf.lm_head.bias is not None:
            hf.lm_head.bias.zero_()
    ids = torch.tensor([tok.encode("a good film").ids])
    generated = hf.generate(ids, max_new_tokens=10, do_sample=False)
    assert generated.shape[1] == ids.shape[1] + 1 and generated[0, -1].item() == config["eos_token_id"]

    # the chat template gives the server's transcript, and the tokenizer round-trips text
    from lit_llm.serve.protocol import ChatMessage, chat_prompt
    messages = [{"role": "system", "content": "be brief"}, {"role": "user", "content": "a good film?"}]
    assert hf_tok.apply_chat_template(messages, tokenize=False, add_generation_prompt=True) == chat_prompt(
        [ChatMessage(**m) for m in messages])
    text = "the film is good , and the cast is great"
    assert hf_tok.decode(hf_tok(text).input_ids, skip_special_tokens=True) == tok.decode(tok.encode(text).ids)

    # character level: no [EOS] in the vocabulary
    chars = train_tokenizer(TokenizerSpec(kind="char"), ["to be or not to be!"])
    cfg = ModelConfig.from_name(family, vocab_size=chars.get_vocab_size(), block_size=64)
    model = build_model(cfg)
    torch.save({"state_dict": {f"model.{k}": v for k, v in model.state_dict().items()},
                "lit_llm": {"model_config": cfg.to_dict(), "tokenizer": chars.to_str()}}, ckpt)
    out = export(str(ckpt), str(tmp_path / "hf_char"))
    config = json.loads((out / "config.json").read_text())
    assert config.get("eos_token_id") is None and config.get("bos_token_id") is None


@pytest.mark.slow
def test_import_hf_takes_a_hub_id_from_the_local_cache_offline(tmp_path):
    """``import-hf gpt2``-style: a Hub id resolves through huggingface_hub's snapshot_download. Offline
    (HF_HUB_OFFLINE=1), a model in the local Hub cache (laid out here as the Hub client lays it out) imports to
    the same weights as its folder; one that is not cached is one error line that says so."""
    import subprocess
    import sys

    from lit_llm.export import export
    from tests.helpers.checkpoints import write_lm_checkpoint
    from tests.helpers.paths import cli_env

    ckpt = write_lm_checkpoint(tmp_path / "lm.ckpt")
    folder = export(str(ckpt), str(tmp_path / "hf"))
    commit = "0123456789abcdef0123456789abcdef01234567"
    repo = tmp_path / "hub" / "models--someone--tiny-gpt2"
    (repo / "refs").mkdir(parents=True)
    (repo / "refs" / "main").write_text(commit)
    snapshot = repo / "snapshots" / commit
    snapshot.mkdir(parents=True)
    for name in ("config.json", "generation_config.json", "tokenizer.json", "tokenizer_config.json", "model.safetensors"):
        (snapshot / name).write_bytes((folder / name).read_bytes())
    env = {**cli_env(tmp_path), "HF_HUB_OFFLINE": "1", "HF_HUB_CACHE": str(tmp_path / "hub")}

    def import_hf(*args):
        return subprocess.run([sys.executable, "-m", "lit_llm", "import-hf", *args], cwd=tmp_path, env=env,
                              capture_output=True, text=True, timeout=300)

    done = import_hf("--hf_dir", "someone/tiny-gpt2", "--out", "hub.ckpt")
    assert done.returncode == 0, done.stderr
    assert import_hf("--hf_dir", str(folder), "--out", "dir.ckpt").returncode == 0
    hub, local = (torch.load(tmp_path / f, weights_only=True) for f in ("hub.ckpt", "dir.ckpt"))
    assert hub["lit_llm"] == local["lit_llm"]
    assert all(torch.equal(v, local["state_dict"][k]) for k, v in hub["state_dict"].items())
    missing = import_hf("--hf_dir", "someone/not-cached", "--out", "x.ckpt")
    last = missing.stderr.strip().splitlines()[-1]
    assert missing.returncode == 2 and last.startswith("error: ") and "neither in the local Hub cache nor reachable" in last
    assert not (tmp_path / "x.ckpt").exists()


def test_export_refuses_the_current_folder_and_its_parents_and_publishes_readable_folders(tmp_path, monkeypatch):
    import os
    import stat

    from lit_llm.export import export
    from tests.helpers.checkpoints import write_lm_checkpoint

    ckpt = str(write_lm_checkpoint(tmp_path / "lm.ckpt"))
    work = tmp_path / "work"
    work.mkdir()
    monkeypatch.chdir(work)
    for out in (".", "..", "./", str(work)):
        with pytest.raises(ValueError, match=f"--out {re.escape(out)} is the current folder or one above it"):
            export(ckpt, out, overwrite=True)
    assert work.is_dir() and (tmp_path / "lm.ckpt").is_file()
    old = os.umask(0o022)
    try:
        out = export(ckpt, "exported")
    finally:
        os.umask(old)
    assert stat.S_IMODE(out.stat().st_mode) == 0o755  # mkdtemp's 0700 hid it from everyone else


# transformers 4.x, as lm-eval and vLLM often run it: the newest 4.x and the tokenizers / hub it accepts
TRANSFORMERS_4 = ["transformers==4.57.6", "tokenizers==0.22.1", "huggingface_hub==0.36.0"]
_LOAD_UNDER_4X = r"""
import json, sys
import torch, transformers
out, ids = sys.argv[1], json.loads(sys.argv[2])
tok = transformers.AutoTokenizer.from_pretrained(out)
model = transformers.AutoModelForCausalLM.from_pretrained(out).eval()
with torch.no_grad():
    logits = model(torch.tensor([ids])).logits[0].tolist()
print(json.dumps({"version": transformers.__version__, "tokenizer": type(tok).__name__,
                  "ids": tok("a good film")["input_ids"], "eos": [tok.eos_token, tok.eos_token_id],
                  "model_max_length": tok.model_max_length, "logits": logits}))
"""


@pytest.fixture(scope="module")
def transformers4(tmp_path_factory):
    """A folder that holds transformers 4.x (pip install --target), put first on PYTHONPATH to shadow 5.x."""
    import subprocess
    import sys

    target = tmp_path_factory.mktemp("transformers4")
    subprocess.run([sys.executable, "-m", "pip", "install", "-q", "--no-deps", "--target", str(target), *TRANSFORMERS_4],
                   check=True, timeout=600)
    return target


@pytest.mark.slow
@pytest.mark.parametrize("family", ["debug", "debug-llama"])
def test_the_export_loads_under_transformers_4(tmp_path, family, transformers4):
    """The export written under transformers 5 loads in transformers 4.57 (installed beside the test's
    environment with pip --target, reusing its torch): the same tokenizer ids, end of text, context and logits."""
    import json
    import subprocess
    import sys

    from lit_llm.data.tokenizer import encode
    from lit_llm.export import export
    from lit_llm.generate import load_checkpoint
    from tests.helpers.checkpoints import write_lm_checkpoint

    ckpt = write_lm_checkpoint(tmp_path / "lm.ckpt", family=family)
    out = export(str(ckpt), str(tmp_path / "hf"))
    model, tok = load_checkpoint(ckpt)
    ids = encode(tok, "the cast is great , and the film is good")
    env = {"PYTHONPATH": str(transformers4), "HF_HUB_OFFLINE": "1", "PATH": "/usr/bin:/bin"}
    done = subprocess.run([sys.executable, "-c", _LOAD_UNDER_4X, str(out), json.dumps(ids)], env=env,
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    got = json.loads(done.stdout.strip().splitlines()[-1])
    assert got["version"].startswith("4.") and got["tokenizer"] == "PreTrainedTokenizerFast"
    assert got["ids"] == encode(tok, "a good film")
    assert got["eos"] == ["[EOS]", tok.token_to_id("[EOS]")] and got["model_max_length"] == model.config.block_size
    with torch.no_grad():
        ours = model(torch.tensor([ids]))[0]
    torch.testing.assert_close(torch.tensor(got["logits"]), ours, atol=1e-4, rtol=1e-4)
