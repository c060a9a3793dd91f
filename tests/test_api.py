"""``from lit_llm import load``: the Python API gives what the commands give."""

import subprocess
import sys

import pytest
import torch

from lit_llm import chat, load
from lit_llm.generate import generate
from lit_llm.tasks import SequenceClassifier
from tests.helpers.checkpoints import write_lm_checkpoint
from tests.helpers.training import tiny_fit


@pytest.fixture(scope="module")
def lm_ckpt(tmp_path_factory):
    return write_lm_checkpoint(tmp_path_factory.mktemp("api") / "lm.ckpt")


def test_import_lit_llm_stays_light():
    """``import lit_llm`` (and so ``lit_llm --help``) does not import torch; ``load`` does when it is used."""
    code = "import sys, lit_llm; assert 'torch' not in sys.modules; lit_llm.load; assert 'torch' in sys.modules"
    assert subprocess.run([sys.executable, "-c", code]).returncode == 0


def test_generate_chat_and_loss_match_the_commands(lm_ckpt, capsys):
    lm = load(lm_ckpt)
    assert lm.task == "language_model"
    text = lm.generate("a good film", max_new_tokens=12, temperature=0.9, seed=3)
    assert text == generate(str(lm_ckpt), prompt="a good film", max_new_tokens=12, temperature=0.9, seed=3)[0]
    session = chat.ChatSession(lm.model, lm.tokenizer, max_new_tokens=6, temperature=0.0)
    assert lm.chat("a fine film", max_new_tokens=6) == "".join(session.reply("a fine film"))
    history = [{"role": "user", "content": "a fine film"}, {"role": "assistant", "content": "positive"},
               {"role": "user", "content": "a dull film"}]
    session = chat.ChatSession(lm.model, lm.tokenizer, max_new_tokens=6, temperature=0.0)
    session.history = history[:2]
    assert lm.chat(history, max_new_tokens=6) == "".join(session.reply("a dull film"))
    ids = torch.tensor([lm.tokenizer.encode("a good film , really").ids])
    expected = torch.nn.functional.cross_entropy(lm.model(ids[:, :-1])[0], ids[0, 1:]).item()
    assert lm.loss("a good film , really") == pytest.approx(expected, abs=1e-6)
    with pytest.raises(ValueError, match="needs a classifier"):
        lm.classify("a good film")


def test_classify_matches_the_classifier(lm_ckpt, tmp_path):
    path = tmp_path / "clf.ckpt"
    tiny_fit(SequenceClassifier(init_from=str(lm_ckpt), label_names=["negative", "positive"]), [], 2,
             tmp_path).save_checkpoint(path)
    clf = load(path)
    out = clf.classify(["a gripping film", "a dull , dull film"])
    module = SequenceClassifier.restore(path).eval()
    from lit_llm.data.labelled import frame_examples, pad_examples

    rows = frame_examples(module.tokenizer, ["a gripping film", "a dull , dull film"], True, module.config.block_size)
    with torch.no_grad():
        probs = module(*pad_examples(module.tokenizer, rows)).softmax(-1)
    for got, p in zip(out, probs):
        assert got["probabilities"]["positive"] == pytest.approx(p[1].item(), abs=1e-6)
        assert got["label"] == ["negative", "positive"][int(p.argmax())]
    with pytest.raises(ValueError, match="needs a language model"):
        clf.generate("a good film")
