"""Sampling from a trained checkpoint: ``python -m lit_llm generate --checkpoint PATH --prompt TEXT``; the
KV-cached decoding loops that `serve`, `chat` and `evaluate` share (where a completion ends and which of its text may
be shown yet is ``lit_llm.completion``)."""

from __future__ import annotations

from pathlib import Path
from typing import Callable, Iterator, Optional

import torch
from tokenizers import Tokenizer

from lit_llm import checkpoint as ckpt_format
from lit_llm.data.tokenizer import decode, encode, eos_id
from lit_llm.model import Decoder, build_model


def load_checkpoint(path: str | Path, device: str = "cpu",
                    purpose: str = "generation") -> tuple[torch.nn.Module, Tokenizer]:
    """Rebuild a language model and its tokenizer from a lit_llm checkpoint alone (no config files needed)."""
    config, state, tok = ckpt_format.load_network(path, expect="language_model", purpose=purpose)
    model = build_model(config)
    model.load_state_dict(state)
    return model.to(device).eval(), tok


def sample_next(logits: torch.Tensor, temperature: float, top_k: Optional[int], top_p: Optional[float],
                generator: Optional[torch.Generator] = None) -> torch.Tensor:
    """Pick the next token from (B, V) logits. temperature 0 is greedy; top-k then top-p (nucleus) filtering."""
    if temperature == 0:
        return logits.argmax(dim=-1, keepdim=True)
    # shifted so the largest logit is 0 first: the same softmax, and a tiny temperature gives -inf, not inf/nan
    logits = (logits.float() - logits.float().amax(dim=-1, keepdim=True)) / temperature
    if top_k is not None and top_k < logits.size(-1):
        kth = torch.topk(logits, top_k, dim=-1).values[:, -1:]
        logits = logits.masked_fill(logits < kth, float("-inf"))
    if top_p is not None and top_p < 1.0:
        sorted_logits, order = torch.sort(logits, descending=True, dim=-1)
        probs = sorted_logits.softmax(dim=-1)
        drop = probs.cumsum(dim=-1) - probs >= top_p  # keep the smallest prefix with mass >= top_p
        logits = logits.masked_fill(drop.scatter(-1, order, drop), float("-inf"))
    return torch.multinomial(logits.softmax(dim=-1), 1, generator=generator)


def sample_rows(logits: torch.Tensor, temperature: torch.Tensor, top_p: torch.Tensor,
                generators: list[torch.Generator]) -> torch.Tensor:
    """``sample_next`` for (B, V) logits whose rows each have their own temperature, top-p (B,) and generator,
    as continuous batching needs: the filtering and softmax run for all rows at once, and only the draw is per
    row. Row r gets the token ``sample_next(logits[r:r+1], temperature[r], None, top_p[r], generators[r])``
    gives (its probabilities are computed the same way, row by row, so they are the same bits)."""
    greedy = temperature == 0
    tokens = logits.argmax(dim=-1)
    if bool(greedy.all()):
        return tokens
    logits = logits.float()
    logits = (logits - logits.amax(dim=-1, keepdim=True)) / torch.where(greedy, 1.0, temperature)[:, None]
    nucleus = top_p < 1.0
    if bool(nucleus.any()):
        sorted_logits, order = torch.sort(logits, descending=True, dim=-1)
        probs = sorted_logits.softmax(dim=-1)
        drop = (probs.cumsum(dim=-1) - probs >= top_p[:, None]) & nucleus[:, None]
        logits = logits.masked_fill(drop.scatter(-1, order, drop), float("-inf"))
    probs = logits.softmax(dim=-1)
    for r in torch.nonzero(~greedy)[:, 0].tolist():
        tokens[r] = torch.multinomial(probs[r : r + 1], 1, generator=generators[r])[0, 0]
    return tokens


@torch.no_grad()
def iter_tokens(model: Decoder, idx: torch.Tensor, max_new_tokens: int, temperature: float = 1.0,
                top_k: Optional[int] = None, top_p: Optional[float] = None,
                generator: Optional[torch.Generator] = None, use_cache: bool = True,
                sample: Optional[Callable[[torch.Tensor], torch.Tensor]] = None) -> Iterator[torch.Tensor]:
    """Yield ``max_new_tokens`` sampled tokens (B, 1) one at a time after ``idx`` (B, T); the caller may stop early.
    ``sample`` replaces the temperature / top-k / top-p sampling: (B, V) logits -> (B, 1) tokens.

    With ``use_cache`` the prompt is run once and each new token reuses the cached keys and values. Once
    the sequence outgrows ``block_size`` the context is cropped to the last ``block_size`` tokens, which
    shifts every position, so from then on each step recomputes the cropped window (as without a cache).
    """
    block_size = model.config.block_size
    cache = model.new_kv_cache(idx.size(0)) if use_cache else None
    cached = 0  # positions already in the cache
    for _ in range(max_new_tokens):
        if cache is not None and idx.size(1) <= block_size:
            logits = model(idx[:, cached:], cache=cache, start_pos=cached)[:, -1, :]  # (B, V)
            cached = idx.size(1)
        else:
            logits = model(idx[:, -block_size:])[:, -1, :]
        token = sample(logits) if sample is not None else sample_next(logits, temperature, top_k, top_p, generator)
        idx = torch.cat([idx, token], dim=1)
        yield token


@torch.no_grad()
def iter_batch_tokens(model: Decoder, prompts: list[list[int]], max_new_tokens: int,
                      sample: Callable[[torch.Tensor], torch.Tensor], use_cache: bool = True,
                      pad_id: int = 0) -> Iterator[torch.Tensor]:
    """Decode prompts of different lengths together: yield (B,) next tokens ``max_new_tokens`` times.

    The prompts are left-padded to a common length P, so every row writes the same cache slot at each step.
    Each row has its own positions (slot minus its padding) and a mask that hides its padding, so a row's
    logits are those it would get alone (up to float rounding). ``sample`` turns (B, V) logits into (B, 1)
    tokens (rows may sample differently). P + ``max_new_tokens`` must fit in ``block_size``.
    """
    device = next(model.parameters()).device
    B, P = len(prompts), max(len(ids) for ids in prompts)
    total = P + max_new_tokens
    if total > model.config.block_size:
        raise ValueError(f"{P} prompt + {max_new_tokens} new tokens exceed the block_size {model.config.block_size}")
    pad = torch.tensor([P - len(ids) for ids in prompts], device=device)
    idx = torch.full((B, P), pad_id, dtype=torch.long, device=device)
    for row, ids in enumerate(prompts):
        idx[row, P - len(ids):] = torch.tensor(ids, device=device)
    slots = torch.arange(total, device=device)
    positions = (slots[None, :] - pad[:, None]).clamp(min=0)  # (B, total)
    real = slots[None, :] >= pad[:, None]  # (B, total): slots holding a real token

    def mask(start: int, end: int) -> torch.Tensor:  # (B, 1, T, end): queries at slots start..end
        q, k = slots[start:end, None], slots[None, :end]
        # causal over real keys; a padding query sees itself, so no row of the softmax is empty
        return ((real[:, None, :end] & (k <= q)) | (k == q))[:, None]

    cache = model.new_kv_cache(B, total) if use_cache else None
    done = 0  # slots already in the cache
    for _ in range(max_new_tokens):
        end = idx.size(1)
        start = done if cache is not None else 0
        logits = model(idx[:, start:], cache=cache, start_pos=start, positions=positions[:, start:end],
                       attn_mask=mask(start, end))[:, -1, :]
        done = end
        token = sample(logits)
        idx = torch.cat([idx, token], dim=1)
        yield token[:, 0]


class ContinuousBatch:
    """Sequences decoded together that join and leave at any step (continuous batching, as in Orca: Yu et al.,
    OSDI 2022, and vLLM).

    Each sequence holds one row of a KV cache of ``capacity`` rows by ``block_size`` slots and sits there at
    its own length, so a new one never waits for the others to finish and never pads them. ``add`` runs a
    prompt alone into a free row (prefill) and returns its next-token logits; ``step`` feeds every row its next
    token in one forward, each at its own position with a mask that hides the slots past its length, and
    returns the logits; ``remove`` frees a row at once. The active rows are kept as rows 0..n-1 (a leaving
    sequence's row takes the last one's), so a step reads one contiguous view of the cache. A row's logits are
    those it would get decoded alone (``iter_tokens``), up to float rounding.
    """

    def __init__(self, model: Decoder, capacity: int) -> None:
        if capacity < 1:
            raise ValueError(f"capacity must be >= 1, got {capacity}")
        self.model, self.capacity, self.block_size = model, capacity, model.config.block_size
        self.device = next(model.parameters()).device
        self.cache = model.new_kv_cache(capacity)
        self.length = torch.zeros(capacity, dtype=torch.long, device=self.device)  # cached tokens per row
        self.keys: list = []  # the sequence in each active row, in row order

    def __len__(self) -> int:
        return len(self.keys)

    def fits(self, prompt_tokens: int, new_tokens: int) -> bool:
        """Whether a prompt and the tokens to generate after it fit in a row (else decode it with ``iter_tokens``,
        whose context slides)."""
        return 1 <= prompt_tokens and prompt_tokens + new_tokens <= self.block_size

    @torch.no_grad()
    def add(self, key, ids: list[int]) -> torch.Tensor:
        """Prefill ``ids`` into a free row for the sequence ``key``; return its next-token logits (V,)."""
        if len(self.keys) >= self.capacity:
            raise ValueError(f"All {self.capacity} rows are taken: remove a finished sequence first")
        if not 1 <= len(ids) <= self.block_size:
            raise ValueError(f"A prompt of {len(ids)} tokens does not fit a row of {self.block_size} slots")
        row, P = len(self.keys), len(ids)
        alone = self.model.new_kv_cache(1, P)
        logits = self.model(torch.tensor([ids], device=self.device), cache=alone, start_pos=0)[0, -1]
        for name, layer in self.cache.items():
            layer.k[row, :, :P] = alone[name].k[0]
            layer.v[row, :, :P] = alone[name].v[0]
        self.length[row] = P
        self.keys.append(key)
        return logits

    @torch.no_grad()
    def step(self, tokens: torch.Tensor) -> torch.Tensor:
        """Feed row i the token ``tokens[i]`` (one per active row, in ``keys`` order); return the logits (n, V)."""
        n = len(self.keys)
        if tokens.shape != (n,):
            raise ValueError(f"step takes one token per active row ({n}), got shape {tuple(tokens.shape)}")
        slot = self.length[:n]
        if int(slot.max()) >= self.block_size:
            raise ValueError(f"A row is full ({self.block_size} slots): remove its sequence before the next step")
        keys = torch.arange(int(slot.max()) + 1, device=self.device)
        mask = (keys[None, :] <= slot[:, None])[:, None, None, :]  # (n, 1, 1, S): a row sees its own slots
        rows = {name: layer.rows(n) for name, layer in self.cache.items()}
        logits = self.model(tokens.to(self.device)[:, None], cache=rows, start_pos=slot, positions=slot[:, None],
                            attn_mask=mask)[:, -1]
        self.length[:n] += 1
        return logits

    def remove(self, key) -> None:
        """Free the row of ``key`` (the last active row moves into it)."""
        row, last = self.keys.index(key), len(self.keys) - 1
        if row != last:
            for layer in self.cache.values():
                layer.k[row] = layer.k[last]
                layer.v[row] = layer.v[last]
            self.length[row] = self.length[last]
            self.keys[row] = self.keys[last]
        self.keys.pop()


def generate_tokens(model: Decoder, idx: torch.Tensor, max_new_tokens: int, temperature: float = 1.0,
                    top_k: Optional[int] = None, top_p: Optional[float] = None,
                    generator: Optional[torch.Generator] = None, use_cache: bool = True) -> torch.Tensor:
    """``idx`` (B, T) with ``max_new_tokens`` sampled tokens appended (see ``iter_tokens``)."""
    new = list(iter_tokens(model, idx, max_new_tokens, temperature, top_k, top_p, generator, use_cache))
    return torch.cat([idx, *new], dim=1)


def generate(
    checkpoint: str,
    prompt: str = "\n",
    max_new_tokens: int = 200,
    temperature: float = 0.8,
    top_k: Optional[int] = 200,
    top_p: Optional[float] = None,
    seed: int = 1337,
    num_samples: int = 1,
    device: str = "cpu",
    use_cache: bool = True,
    ignore_eos: bool = False,
) -> list[str]:
    """Sample text from a checkpoint written by ``lit_llm fit`` and print it.

    Args:
        checkpoint: path of the .ckpt file.
        prompt: text the samples continue.
        max_new_tokens: number of tokens to sample after the prompt.
        temperature: softmax temperature; 0 means greedy decoding.
        top_k: keep only the k most likely tokens (None: all).
        top_p: nucleus sampling, keep the smallest set of tokens with probability mass >= top_p (None: off).
        seed: random seed of the sampler.
        num_samples: number of independent samples.
        device: torch device to run on.
        use_cache: reuse attention keys/values between steps (KV cache); the output is the same either way.
        ignore_eos: sample all ``max_new_tokens``, past the tokenizer's [EOS]; by default a sample ends there (the
            [EOS] is not printed).
    """
    if max_new_tokens < 0:
        raise ValueError(f"max_new_tokens must be >= 0, got {max_new_tokens}")
    if temperature < 0:
        raise ValueError(f"temperature must be >= 0, got {temperature}")
    if top_k is not None and top_k < 1:
        raise ValueError(f"top_k must be >= 1 or None, got {top_k}")
    if top_p is not None and not 0 < top_p <= 1:
        raise ValueError(f"top_p must be in (0, 1] or None, got {top_p}")
    model, tok = load_checkpoint(checkpoint, device)
    if not model.config.causal:
        raise ValueError(
            f"{checkpoint} holds a {model.config.family} encoder, which does not generate text;"
            " use a gpt2- or llama-family checkpoint"
        )
    texts = sample_texts(model, tok, prompt, max_new_tokens, temperature, top_k, top_p, seed, num_samples, device, use_cache,
                   ignore_eos)
    for i, text in enumerate(texts):
        if num_samples > 1:
            print(f"--- sample {i}")
        print(text)
    return texts


def sample_texts(model: Decoder, tok: Tokenizer, prompt: str, max_new_tokens: int, temperature: float, top_k: Optional[int],
           top_p: Optional[float], seed: int, num_samples: int = 1, device: str = "cpu", use_cache: bool = True,
           ignore_eos: bool = False) -> list[str]:
    """``num_samples`` texts: the prompt and its continuation, each ended at [EOS] unless ``ignore_eos``."""
    ids = encode(tok, prompt)
    if not ids:
        raise ValueError("The prompt is empty; pass --prompt with at least one character")
    generator = torch.Generator(device=device).manual_seed(seed)
    idx = torch.tensor([ids] * num_samples, dtype=torch.long, device=device)
    eos = None if ignore_eos else eos_id(tok)
    rows: list[list[int]] = [[] for _ in range(num_samples)]
    ended = [False] * num_samples
    for step in iter_tokens(model, idx, max_new_tokens, temperature, top_k, top_p, generator, use_cache):
        for row, token in enumerate(step[:, 0].tolist()):
            ended[row] = ended[row] or token == eos
            if not ended[row]:
                rows[row].append(token)
        if all(ended):
            break
    return [decode(tok, ids + row) for row in rows]
