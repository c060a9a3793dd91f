"""lit_llm from Python: a checkpoint loaded in one line, then generate, chat, classify or score text.

    from lit_llm import load
    lm = load("outputs/quickstart/checkpoints/last.ckpt")
    lm.generate("ROMEO:", max_new_tokens=50, temperature=0)     # the text `lit_llm generate` prints
    lm.chat("a gripping , funny film .")                        # an answer, as `lit_llm chat` gives it
    lm.loss("To be, or not to be")                              # mean next-token loss (perplexity: exp of it)
    clf = load("runs/sst2/checkpoints/best.ckpt")
    clf.classify(["a gripping film", "a dull film"])            # [{"label", "probabilities"}, ...]

Each method runs the code of the command it mirrors (``generate.sample_texts``, ``chat.ChatSession``, the classifier's
``frame_examples`` as ``serve`` uses it), so the answers are those of the CLI and the server.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Optional, Union

import torch

from lit_llm import checkpoint as ckpt_format


class Loaded:
    """A lit_llm checkpoint ready to use: ``task`` is ``language_model`` or ``classification``."""

    def __init__(self, checkpoint: Union[str, Path], device: str = "cpu") -> None:
        self.path, self.device = str(checkpoint), device
        info = ckpt_format.read_info(checkpoint, purpose="lit_llm.load")
        self.task = info.task
        if self.task == "classification":
            from lit_llm.tasks import SequenceClassifier

            module = SequenceClassifier.restore(checkpoint)
            if hasattr(module.backbone, "peft_config"):
                module.merge_lora()
            self.model, self.tokenizer = module.to(device).eval(), module.tokenizer
            self.label_names = module.hparams.label_names
        else:
            from lit_llm.generate import load_checkpoint

            self.model, self.tokenizer = load_checkpoint(checkpoint, device, purpose="lit_llm.load")
        self.config = self.model.config

    def _language_model(self, what: str) -> None:
        if self.task != "language_model":
            raise ValueError(f"{self.path} is a classifier; {what} needs a language model (use .classify)")

    def generate(self, prompt: str, max_new_tokens: int = 200, temperature: float = 0.8, top_k: Optional[int] = 200,
                 top_p: Optional[float] = None, seed: int = 1337, ignore_eos: bool = False) -> str:
        """The prompt and its continuation, as ``lit_llm generate`` prints it (it ends at [EOS])."""
        from lit_llm.generate import sample_texts

        self._language_model("generate")
        return sample_texts(self.model, self.tokenizer, prompt, max_new_tokens, temperature, top_k, top_p, seed, 1,
                      self.device, ignore_eos=ignore_eos)[0]

    def chat(self, message: Union[str, list[dict[str, str]]], max_new_tokens: int = 256, temperature: float = 0.0,
             seed: int = 1337, system: Optional[str] = None) -> str:
        """The answer to ``message`` (a text, or a conversation ending with the user's turn), with the chat template
        and stopping rules of ``serve`` and ``lit_llm chat``."""
        from lit_llm.chat import ChatSession, check_messages

        self._language_model("chat")
        session = ChatSession(self.model, self.tokenizer, system, max_new_tokens, temperature, None, None, seed)
        if isinstance(message, list):
            history = check_messages(message, "chat")
            if history[-1]["role"] == "assistant":
                raise ValueError("the conversation must end with the user's turn, which the answer follows")
            session.history += history[:-1]
            message = history[-1]["content"]
        return "".join(session.reply(message))

    @torch.no_grad()
    def loss(self, text: str) -> float:
        """The mean next-token loss (nats per token) of ``text`` in one context window (cut to the block size)."""
        from lit_llm.data.tokenizer import encode

        self._language_model("loss")
        ids = encode(self.tokenizer, text)[: self.config.block_size + 1]
        if len(ids) < 2:
            raise ValueError("loss needs a text of at least 2 tokens")
        x = torch.tensor([ids], device=self.device)
        logits = self.model(x[:, :-1])
        return torch.nn.functional.cross_entropy(logits[0], x[0, 1:]).item()

    @torch.no_grad()
    def classify(self, texts: Union[str, list[str]], max_length: Optional[int] = None) -> list[dict[str, Any]]:
        """Per text, the predicted ``label`` and the ``probabilities`` of every class (framed and cut as ``serve``
        frames them; ``max_length`` defaults to the model's block size)."""
        from lit_llm.data.labelled import frame_examples, pad_examples

        if self.task != "classification":
            raise ValueError(f"{self.path} is a language model; classify needs a classifier checkpoint")
        texts = [texts] if isinstance(texts, str) else list(texts)
        rows = frame_examples(self.tokenizer, texts, self.config.causal, max_length or self.config.block_size)
        input_ids, mask = pad_examples(self.tokenizer, rows)
        probs = self.model(input_ids.to(self.device), mask.to(self.device)).float().softmax(-1).cpu()
        names = self.label_names or [str(i) for i in range(probs.size(1))]
        return [{"label": names[int(p.argmax())], "probabilities": dict(zip(names, p.tolist()))} for p in probs]


def load(checkpoint: Union[str, Path], device: str = "cpu") -> Loaded:
    """Load a lit_llm checkpoint (a language model or a classifier) for use from Python."""
    return Loaded(checkpoint, device)
