"""The chat format of lit_llm models: one template for training, serving, the terminal chat and the export.

A from-scratch model has no chat format of its own, so lit_llm gives it a plain transcript, one message per
line, ``role: content``, each assistant turn closed by the tokenizer's end-of-text token::

    system: Answer positive or negative.
    user: a gripping , funny film .
    assistant: positive[EOS]
    user: ...
    assistant:

``CHAT_TEMPLATE`` is that transcript as a Jinja chat template, the form transformers, vLLM and
lm-evaluation-harness read from ``tokenizer_config.json``; ``render`` renders it (with jinja2's sandbox, as
transformers does), so instruction tuning (``data/instructions.py``), ``serve``'s chat route, ``lit_llm chat``
and the HF export (``export.py``) all use this one string. ``segments`` splits a rendered conversation into
the prompt's text and the assistant's, which is where instruction tuning puts its loss.

A model stops at the end-of-text token; a model that was never tuned on the format (it has no
end-of-text token, or never learned to produce it) would go on to write the user's next turn, so generation
also stops at ``STOP_STRINGS``.
"""

from __future__ import annotations

from functools import lru_cache
from typing import Any, Iterable, Iterator, Optional, Sequence

ROLES = ("system", "developer", "user", "assistant")
CHAT_TEMPLATE = (
    "{% for message in messages %}{{ message['role'] }}: {{ message['content'] }}"
    "{% if message['role'] == 'assistant' %}{{ eos_token }}{% endif %}{{ '\\n' }}{% endfor %}"
    "{% if add_generation_prompt %}assistant:{% endif %}"
)
# a new turn of another role: where an answer ends when the model does not stop by itself
STOP_STRINGS = tuple(f"\n{role}:" for role in ROLES if role != "assistant")


@lru_cache(maxsize=1)
def _compiled():
    from jinja2.sandbox import ImmutableSandboxedEnvironment  # a torch dependency; sandboxed as in transformers

    return ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True).from_string(CHAT_TEMPLATE)


def eos_token(tokenizer) -> str:
    """The end-of-text token of a ``tokenizers.Tokenizer`` as text (lit_llm's ``[EOS]``, or the one an imported
    model's checkpoint declares), or "" when its vocabulary has none."""
    from lit_llm.data.tokenizer import eos_token as end_of_text

    return end_of_text(tokenizer)


def check_messages(messages: Any, where: str = "messages") -> list[dict[str, str]]:
    """``messages`` as a list of ``{"role", "content"}`` dicts of known roles and text content; ValueError naming
    ``where`` otherwise."""
    if not isinstance(messages, list) or not messages:
        raise ValueError(f"{where}: 'messages' must be a non-empty list of {{role, content}} objects")
    out = []
    for i, m in enumerate(messages):
        if not isinstance(m, dict) or not isinstance(m.get("content"), str) or "role" not in m:
            raise ValueError(f"{where}: message {i} must be an object with a 'role' and a text 'content'")
        if m["role"] not in ROLES:
            raise ValueError(f"{where}: message {i} has the role {m['role']!r}, which the chat template does not"
                             f" know; use one of {', '.join(ROLES)}")
        out.append({"role": m["role"], "content": m["content"]})
    return out


def render(messages: Sequence[dict[str, str]], add_generation_prompt: bool = False, eos: str = "") -> str:
    """The transcript of ``messages`` (``{"role", "content"}`` dicts); with ``add_generation_prompt`` it ends
    where the assistant's answer begins. ``eos`` closes each assistant turn (``eos_token(tokenizer)``)."""
    return _compiled().render(messages=list(messages), add_generation_prompt=add_generation_prompt, eos_token=eos)


def segments(messages: Sequence[dict[str, str]], eos: str = "") -> list[tuple[str, bool]]:
    """``render(messages)`` cut into ``(text, is_answer)`` pieces: each assistant turn's text (from after its
    generation prompt to the end of its line, end-of-text token included) is an answer, the rest is prompt.
    The pieces joined are exactly the rendered conversation."""
    out: list[tuple[str, bool]] = []
    done = ""
    for i, m in enumerate(messages):
        if m["role"] != "assistant":
            continue
        prompt = render(messages[:i], add_generation_prompt=True, eos=eos)
        full = render(messages[: i + 1], eos=eos)
        if not (prompt.startswith(done) and full.startswith(prompt)):  # pragma: no cover - a template edit broke it
            raise ValueError("CHAT_TEMPLATE must render each conversation as an extension of its prefixes")
        out += [(prompt[len(done):], False), (full[len(prompt):], True)]
        done = full
    whole = render(messages, eos=eos)
    out.append((whole[len(done):], False))
    return [(text, answer) for text, answer in out if text]


def prompt(history: Iterable[dict[str, str]], eos: str = "") -> str:
    """The text a model continues to answer after ``history`` (which ends with a user or system turn)."""
    return render(list(history), add_generation_prompt=True, eos=eos)


def as_messages(record: dict[str, Any], where: str) -> list[dict[str, str]]:
    """A training record as messages: ``{"messages": [...]}`` or ``{"prompt", "response"}`` (and an optional
    ``system``). ValueError naming ``where`` for anything else."""
    if "messages" in record:
        return check_messages(record["messages"], where)
    if isinstance(record.get("prompt"), str) and isinstance(record.get("response"), str):
        system: Optional[str] = record.get("system")
        head = [{"role": "system", "content": system}] if isinstance(system, str) and system else []
        return head + [{"role": "user", "content": record["prompt"]},
                       {"role": "assistant", "content": record["response"]}]
    raise ValueError(f"{where}: a record needs 'messages' (a list of {{role, content}}) or 'prompt' and 'response'"
                     f" strings; got the keys {sorted(record)}")


# ---------------------------------------------------------------------------------------------- lit_llm chat
def answer_content(text: str) -> str:
    """A generated answer as message content: the model writes after ``assistant:``, space included."""
    return text[1:] if text.startswith(" ") else text


class ChatSession:
    """A conversation with a causal language model: the history, and each answer streamed as it is decoded
    with the template and stopping rules of ``serve``'s chat route (the end-of-text token, ``STOP_STRINGS``,
    a length). Turns that no longer fit the context are dropped from the front (the system message stays)."""

    def __init__(self, model, tokenizer, system: Optional[str] = None, max_new_tokens: int = 256,
                 temperature: float = 0.7, top_k: Optional[int] = 50, top_p: Optional[float] = None,
                 seed: int = 1337, use_cache: bool = True) -> None:
        import torch

        self.model, self.tok = model, tokenizer
        self.eos = eos_token(tokenizer)
        self.head = [{"role": "system", "content": system}] if system else []
        self.history: list[dict[str, str]] = list(self.head)
        self.sampling = dict(temperature=temperature, top_k=top_k, top_p=top_p, use_cache=use_cache)
        self.max_new_tokens = max_new_tokens
        self.device = next(model.parameters()).device
        self.generator = torch.Generator(device=self.device).manual_seed(seed)
        self.dropped = 0  # turns dropped to fit the context, in this conversation

    def reset(self) -> None:
        self.history, self.dropped = list(self.head), 0

    def _prompt_ids(self) -> list[int]:
        from lit_llm.data.tokenizer import encode

        room = self.model.config.block_size - 1  # at least one token of answer within the context
        while True:
            ids = encode(self.tok, prompt(self.history, self.eos))
            if len(ids) <= room:
                return ids
            first = len(self.head)
            if len(self.history) - first <= 1:  # the new message alone is too long
                self.history.pop()
                raise ValueError(f"the message is {len(ids)} tokens with the template; the model's context holds"
                                 f" {room + 1}: send a shorter one")
            del self.history[first : first + 2]  # the oldest exchange
            self.dropped += 2

    def reply(self, text: str) -> Iterator[str]:
        """Send the user's ``text``; yield the answer's text as it becomes final. The answer joins the history."""
        import torch

        from lit_llm.completion import CompletionText
        from lit_llm.generate import iter_tokens

        self.history.append({"role": "user", "content": text})
        ids = self._prompt_ids()
        state = CompletionText(self.tok, ids, self.max_new_tokens, list(STOP_STRINGS))
        idx = torch.tensor([ids], device=self.device)
        for token in iter_tokens(self.model, idx, self.max_new_tokens, generator=self.generator, **self.sampling):
            piece = state.push(int(token))
            if piece is not None and piece.text:
                yield piece.text
            if state.done:
                break
        self.history.append({"role": "assistant", "content": answer_content(state.text)})


def chat(checkpoint: str, system: Optional[str] = None, max_new_tokens: int = 256, temperature: float = 0.7,
         top_k: Optional[int] = 50, top_p: Optional[float] = None, seed: int = 1337, device: str = "cpu") -> None:
    """Chat with a language model in the terminal: type a message, the answer streams in. ``/reset`` starts a
    new conversation, ``/exit`` (or Ctrl-D) quits. The transcript, the end-of-text token and the stop strings are
    those of ``serve``'s ``/v1/chat/completions``, and of instruction tuning.

    Args:
        checkpoint: a lit_llm language-model checkpoint (instruction-tuned, or any causal one).
        system: a system message at the start of every conversation.
        max_new_tokens: the longest answer, in tokens.
        temperature: softmax temperature; 0 means greedy decoding.
        top_k: sample among the k most likely tokens (None: all).
        top_p: nucleus sampling (None: off).
        seed: seed of the sampler.
        device: torch device to run on.
    """
    if max_new_tokens < 1 or temperature < 0 or (top_k is not None and top_k < 1) or not (top_p is None or 0 < top_p <= 1):
        raise ValueError(f"Need max_new_tokens >= 1, temperature >= 0, top_k >= 1 or None and top_p in (0, 1] or None;"
                         f" got {max_new_tokens}, {temperature}, {top_k}, {top_p}")
    from lit_llm.generate import load_checkpoint

    model, tok = load_checkpoint(checkpoint, device, purpose="chat")
    if not model.config.causal:
        raise ValueError(f"{checkpoint} holds a {model.config.family} encoder, which does not generate text; use a"
                         " gpt2- or llama-family checkpoint")
    session = ChatSession(model, tok, system, max_new_tokens, temperature, top_k, top_p, seed)
    if not session.eos:
        print("note: this tokenizer has no [EOS] token; answers end at a new turn or at max_new_tokens")
    print(f"Chatting with {checkpoint}. /reset starts over, /exit quits.", flush=True)
    while True:
        try:
            line = input("user: ")
        except EOFError:
            print()
            break
        command = line.strip()
        if command == "/exit":
            break
        if command == "/reset":
            session.reset()
            print("(new conversation)", flush=True)
            continue
        if not command:
            continue
        dropped = session.dropped
        print("assistant:", end="", flush=True)
        try:
            for delta in session.reply(line):
                print(delta, end="", flush=True)
        except ValueError as e:
            print(f" error: {e}", flush=True)
            continue
        print(flush=True)
        if session.dropped > dropped:
            print(f"(the {session.dropped - dropped} oldest messages were dropped to fit the model's context)", flush=True)
