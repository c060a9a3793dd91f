"""``python -m lit_llm evaluate --checkpoint CKPT --tasks hellaswag arc_easy``: a lit_llm checkpoint on EleutherAI's
lm-evaluation-harness (lm-eval), natively: the checkpoint's own model and tokenizer answer lm-eval's requests, with
no export to transformers first.

``LitLLMEval`` is an lm-eval model, registered as ``lit_llm`` (``simple_evaluate(model="lit_llm",
model_args={"checkpoint": PATH})`` once this module is imported). It leaves to lm-eval what lm-eval's own
``--model hf`` (``HFLM``) leaves to it: ``TemplateLM`` splits a request into context and continuation tokens,
``Collator`` sorts requests by length and batches them, ``get_rolling_token_windows`` cuts a document into the
windows of a rolling log-likelihood. So a checkpoint scores here what its ``lit_llm export`` scores under
``--model hf``, and a model imported with ``lit_llm import-hf`` what its source directory scores (to 1e-4;
tests/test_evaluate.py checks both). A text without context (a perplexity task's first window, an empty
context) starts after the end-of-text token, as every document does in lit_llm's training (``prepare`` ends each
one with it); the export names that token as its BOS, which is what HFLM puts first.

lm-eval is the ``eval`` extra: this module imports it, and the CLI imports this module only when ``evaluate`` runs.
"""

from __future__ import annotations

import difflib
import json
from pathlib import Path
from typing import Any, Optional

import torch
import torch.nn.functional as F
from tqdm import tqdm

from lit_llm import checkpoint as ckpt_format
from lit_llm.completion import CompletionText
from lit_llm.data.tokenizer import encode, eos_id, special_id
from lit_llm.errors import UsageError, one_line
from lit_llm.generate import iter_batch_tokens, iter_tokens, load_checkpoint
from lit_llm.io import check_writable, write_text_atomic

try:
    import lm_eval.models  # noqa: F401 - lm-eval's own models (hf ...) stay known: its registry lists them only

    # when it is empty at the first look-up, and the registration below fills it
    from lm_eval.api.model import TemplateLM
    from lm_eval.api.registry import register_model
    from lm_eval.evaluator import simple_evaluate
    from lm_eval.models.utils import Collator, normalize_gen_kwargs
    from lm_eval.tasks import TaskManager
    from lm_eval.utils import get_rolling_token_windows, handle_non_serializable, make_disjoint_window, make_table
except ModuleNotFoundError as e:
    if (e.name or "").partition(".")[0] != "lm_eval":
        raise
    raise ImportError("evaluate runs EleutherAI's lm-evaluation-harness (lm_eval), which is not installed:"
                      " pip install 'lit_llm[eval]'") from e

# the generation arguments a task's generation_kwargs may hold (after lm-eval's normalize_gen_kwargs)
GEN_KWARGS = ("until", "max_gen_toks", "do_sample", "temperature", "top_k", "top_p")


@register_model("lit_llm")
class LitLLMEval(TemplateLM):
    """A lit_llm language-model checkpoint as an lm-eval model: log-likelihoods of continuations (multiple choice),
    rolling log-likelihoods of whole documents (perplexity) and generation until stop strings.

    Args:
        checkpoint: the .ckpt file of a gpt2- or llama-family language model (a sharded folder: consolidate it
            first, ``lit_llm consolidate``).
        device: torch device the model runs on.
        batch_size: sequences per forward pass: log-likelihood requests, and greedy generations decoded together
            (left-padded, with the KV cache; sampled ones and those whose ``max_gen_toks`` fills the block run one
            at a time).
        seed: seed of the sampler, for tasks whose generation_kwargs sample (``do_sample: true``).
    """

    def __init__(self, checkpoint: str, device: str = "cpu", batch_size: int = 8, seed: int = 1234) -> None:
        super().__init__()
        if int(batch_size) < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        self.model, self.tok = load_checkpoint(checkpoint, device, purpose="evaluate")
        if not self.model.config.causal:
            raise ValueError(f"{checkpoint} holds a {self.model.config.family} encoder, which has no next-token"
                             " probabilities for lm-eval to score; evaluate a gpt2- or llama-family checkpoint")
        self.checkpoint = checkpoint
        self.unk_id = special_id(self.tok, "unk")
        self._device = torch.device(device)
        self.batch_size = int(batch_size)
        self.generator = torch.Generator(device=self._device).manual_seed(seed)

    @property
    def eot_token_id(self) -> int:
        """The end-of-text id: the token every training document ended with, so the one before a text's first
        token (lm-eval's prefix of rolling windows and empty contexts)."""
        eos = eos_id(self.tok)
        if eos is None:
            raise ValueError(f"The tokenizer of {self.checkpoint} has no end-of-text token, which lm-eval puts before"
                             " a text that has no context (perplexity tasks, empty contexts); evaluate a model"
                             " trained with an [EOS] token (the bpe, wordpiece and unigram tokenizers have one)")
        return eos

    @property
    def max_length(self) -> int:
        """The longest input the model takes: its block_size (rolling windows are this long)."""
        return self.model.config.block_size

    @property
    def max_gen_toks(self) -> int:
        """Tokens generated when a task does not say (lm-eval's and HFLM's default)."""
        return 256

    def tok_encode(self, string: str, add_special_tokens: Optional[bool] = None, **kwargs: Any) -> list[int]:
        """The ids of ``string`` encoded whole, as ``prepare`` encodes a document and as the exported tokenizer
        does (``lit_llm.data.tokenizer.encode`` encodes line by line, which can split a run of spaces before a
        newline differently). lit_llm's tokenizers add no special tokens, so ``add_special_tokens`` changes
        nothing, as it changes nothing for the export under HFLM. A character that a character-level vocabulary
        lacks is refused by name, as everywhere in lit_llm, rather than scored as ``[UNK]``."""
        try:
            ids = self.tok.encode(string, add_special_tokens=False).ids
        except Exception:  # noqa: BLE001 - tokenizers' bare Exception: a character a vocabulary without [UNK] lacks
            return encode(self.tok, string)  # raises the ValueError that names the characters
        if self.unk_id is not None and self.unk_id in ids:
            encode(self.tok, string)  # lit_llm's rule: a character vocabulary refuses what it lacks, by name
        return ids

    def _loglikelihood_tokens(self, requests: list[tuple[Any, list[int], list[int]]],
                              disable_tqdm: bool = False) -> list[tuple[float, bool]]:
        """(log-probability of the continuation, whether greedy decoding gives it) for each (key, context ids,
        continuation ids), in batches of ``batch_size`` sorted longest first; requests whose context and
        continuation differ only in where they split share one forward (lm-eval's ``Collator``, as in HFLM).
        An input longer than ``block_size`` + 1 loses its oldest context tokens."""
        def longest_first(req: tuple[Any, list[int], list[int]]) -> tuple[int, tuple[int, ...]]:
            ids = req[1] + req[2]
            return -len(ids), tuple(ids)

        order = Collator(requests, sort_fn=longest_first, group_by="contexts", group_fn=lambda r: r[1] + r[2][:-1])
        results: list[tuple[float, bool]] = []
        bar = tqdm(total=len(requests), disable=disable_tqdm, desc="Running loglikelihood requests")
        for chunk in order.get_batched(n=self.batch_size):
            rows = []
            for _, context, continuation in chunk:
                if not 0 < len(continuation) <= self.max_length:
                    raise ValueError(f"A continuation of {len(continuation)} tokens cannot be scored by a model of"
                                     f" block_size {self.max_length}")
                rows.append((context + continuation)[-(self.max_length + 1):][:-1])
            batch = torch.zeros(len(rows), max(map(len, rows)), dtype=torch.long)  # right-padded: causal
            for i, row in enumerate(rows):
                batch[i, : len(row)] = torch.tensor(row)
            with torch.no_grad():
                logits = self.model(batch.to(self._device))
            for (key, context, continuation), row, row_logits in zip(chunk, rows, logits):
                # the positions that predict the continuation, log-softmaxed in float32
                logprobs = F.log_softmax(row_logits[len(row) - len(continuation): len(row)].float(), dim=-1)[None]
                greedy = logprobs.argmax(dim=-1)
                # the requests this input answers: itself, or all those with the same input (one-token answers to one
                # context, as MMLU's letters)
                for req_key, cont, cont_logprobs in order.get_cache(req_str=key, cxt_toks=context,
                                                                    cont_toks=continuation, logits=logprobs):
                    target = torch.tensor([cont], device=cont_logprobs.device)
                    picked = cont_logprobs[:, -target.size(1):].gather(2, target[..., None])
                    answer = (float(picked.sum()), bool((greedy[:, -target.size(1):] == target).all()))
                    results.append(answer)
                    if req_key is not None:  # a rolling window has no key: its document is cached whole
                        self.cache_hook.add_partial("loglikelihood", req_key, answer)
                    bar.update(1)
        bar.close()
        return order.get_original(results)

    def loglikelihood_rolling(self, requests: list, disable_tqdm: bool = False) -> list[float]:
        """The log-probability of each whole text, conditioned on the end-of-text token only: the text is cut into
        windows of ``block_size`` tokens, each token predicted once, with as much context as fits (lm-eval's
        ``get_rolling_token_windows`` and ``make_disjoint_window``, as HFLM does)."""
        windows: list[tuple[None, list[int], list[int]]] = []
        owner: list[int] = []
        for i, req in enumerate(tqdm(requests, disable=disable_tqdm, desc="Cutting rolling windows")):
            tokens = self.tok_encode(req.args[0])
            for context, target in map(make_disjoint_window, get_rolling_token_windows(
                    token_list=tokens, prefix_token=self.prefix_token_id, max_seq_len=self.max_length,
                    context_len=1)):
                windows.append((None, context, target))
                owner.append(i)
        totals = [0.0] * len(requests)
        for i, (logprob, _) in zip(owner, self._loglikelihood_tokens(windows, disable_tqdm=disable_tqdm)):
            totals[i] += logprob
        for req, total in zip(requests, totals):
            self.cache_hook.add_partial("loglikelihood_rolling", req.args, total)
        return totals

    def generate_until(self, requests: list, disable_tqdm: bool = False) -> list[str]:
        """Each request's continuation of its context until a stop string of its ``until`` (not included), the
        end-of-text token or ``max_gen_toks`` tokens. Greedy requests with the same generation arguments are
        decoded ``batch_size`` at a time (``iter_batch_tokens``: left-padded, each row's logits those it gets
        alone); sampled ones, and those whose ``max_gen_toks`` fills the block, one at a time (``iter_tokens``)."""
        texts: list[Optional[str]] = [None] * len(requests)
        groups: dict[str, list[int]] = {}
        for i, req in enumerate(requests):
            kwargs = self._gen_kwargs(req.args[1])
            if kwargs["do_sample"] or self.max_length - int(kwargs["max_gen_toks"]) <= 0:
                texts[i] = self.generate(req.args[0], req.args[1])
            else:
                groups.setdefault(json.dumps(kwargs, sort_keys=True, default=str), []).append(i)
        for key, members in groups.items():
            kwargs = json.loads(key)
            for start in tqdm(range(0, len(members), self.batch_size), disable=disable_tqdm,
                              desc="Running generate_until requests"):
                chunk = members[start:start + self.batch_size]
                for i, text in zip(chunk, self._greedy_batch([requests[i].args[0] for i in chunk], kwargs)):
                    texts[i] = text
        for req, text in zip(requests, texts):
            self.cache_hook.add_partial("generate_until", req.args, text)
        return texts

    def _gen_kwargs(self, gen_kwargs: dict[str, Any]) -> dict[str, Any]:
        """A task's generation_kwargs as lm-eval normalizes them; an argument lit_llm cannot honour is refused."""
        kwargs = dict(normalize_gen_kwargs(gen_kwargs, self.max_gen_toks))
        unknown = sorted(set(kwargs) - set(GEN_KWARGS))
        if unknown:
            raise ValueError(f"Generation arguments {unknown} are not supported by lit_llm evaluate; a task's"
                             f" generation_kwargs may hold {', '.join(GEN_KWARGS)}")
        return kwargs

    def _context_ids(self, context: str, max_new: int) -> list[int]:
        """The context's last ``block_size - max_new`` tokens, as HFLM keeps them (its last ``block_size`` when
        ``max_new`` fills the block: the window then slides as tokens are added)."""
        room = self.max_length - max_new
        return self.tok_encode(context)[-(room if room > 0 else self.max_length):] or [self.prefix_token_id]

    def _greedy_batch(self, contexts: list[str], kwargs: dict[str, Any]) -> list[str]:
        """Greedy continuations of several contexts, decoded together until each one has ended."""
        max_new = int(kwargs["max_gen_toks"])
        prompts = [self._context_ids(c, max_new) for c in contexts]
        states = [CompletionText(self.tok, ids, max_new, [s for s in kwargs["until"] if s]) for ids in prompts]
        pad = special_id(self.tok, "pad") or 0

        def greedy(logits: torch.Tensor) -> torch.Tensor:
            return logits.argmax(dim=-1, keepdim=True)

        for tokens in iter_batch_tokens(self.model, prompts, max_new, greedy, pad_id=pad):
            for state, token in zip(states, tokens.tolist()):
                if not state.done:
                    state.push(int(token))
            if all(state.done for state in states):
                break
        return [state.text for state in states]

    def generate(self, context: str, gen_kwargs: dict[str, Any]) -> str:
        """The continuation of ``context`` alone under a task's generation_kwargs: greedy unless ``do_sample``
        (then ``temperature``, ``top_k``, ``top_p`` as ``lit_llm generate`` samples), with the KV cache."""
        kwargs = self._gen_kwargs(gen_kwargs)
        max_new = int(kwargs["max_gen_toks"])
        temperature = float(kwargs.get("temperature") or 0.0) if kwargs["do_sample"] else 0.0
        ids = self._context_ids(context, max_new)
        completion = CompletionText(self.tok, ids, max_new, [s for s in kwargs["until"] if s])
        idx = torch.tensor([ids], dtype=torch.long, device=self._device)
        for token in iter_tokens(self.model, idx, max_new, temperature, kwargs.get("top_k"), kwargs.get("top_p"),
                                 self.generator):
            completion.push(int(token))
            if completion.done:
                break
        return completion.text


def resolve_tasks(tasks: list[str], include_path: Optional[str] = None) -> tuple[TaskManager, list[str]]:
    """lm-eval's task index (its own tasks and the YAML task configs under ``include_path``) and the task names
    ``tasks`` asks for: an item may be comma-separated names (``hellaswag,arc_easy``, as lm-eval's CLI takes them)
    or a glob (``mmlu_*``). A name lm-eval does not know is a ValueError that names the closest one it does. Building
    the index reads every YAML file lm-eval ships (seconds), still far less than loading a model and its data."""
    if include_path is not None and not Path(include_path).is_dir():
        raise FileNotFoundError(f"--include_path {include_path} is not a folder; give the folder that holds your task"
                                " YAML files")
    where = ("lm-eval skips a YAML file under --include_path that it cannot parse" if include_path else
             "a task of your own is a YAML file under --include_path FOLDER")
    manager = TaskManager(include_path=include_path)
    names: list[str] = []
    for item in tasks:
        for name in filter(None, (part.strip() for part in item.split(","))):
            matched = manager.match_tasks([name])
            if not matched:
                close = difflib.get_close_matches(name, manager.all_tasks, n=1)
                hint = f"; did you mean {close[0]!r}?" if close else ""
                raise ValueError(f"unknown task {name!r}{hint} (`lm_eval ls tasks` lists lm-eval's tasks; {where})")
            names += [m for m in matched if m not in names]
    if not names:
        raise ValueError("No task given; name at least one, e.g. --tasks hellaswag (`lm_eval ls tasks` lists them)")
    return manager, names


def evaluate(
    checkpoint: str,
    tasks: list[str],
    out: Optional[str] = None,
    include_path: Optional[str] = None,
    batch_size: int = 8,
    limit: Optional[int] = None,
    num_fewshot: Optional[int] = None,
    device: str = "cpu",
    seed: int = 1234,
    bootstrap_iters: int = 100000,
    log_to: Optional[str] = None,
    wandb: bool = True,
) -> dict[str, Any]:
    """Score a checkpoint on lm-evaluation-harness tasks (hellaswag, mmlu ... or your own YAML) and print the table.

    The checkpoint's model runs natively (no transformers export): its numbers are those of lm-eval's ``--model
    hf`` on the exported checkpoint (see docs/evaluation.md). lm-eval downloads a task's data from the Hugging
    Face Hub the first time; offline, a task of your own reads local files (``--include_path``).

    Args:
        checkpoint: the .ckpt file of a gpt2- or llama-family language model (``lit_llm fit`` writes it). A
            sharded checkpoint folder is refused: merge it first with ``lit_llm consolidate``.
        tasks: lm-eval task, group or tag names (``lm_eval ls tasks`` lists them); also ``a,b`` and globs
            (``'mmlu_*'``).
        out: write lm-eval's results (metrics, task configs, versions, seeds) as JSON to this file.
        include_path: a folder of task YAML files (searched recursively) to add to lm-eval's own tasks.
        batch_size: sequences per forward pass of the log-likelihood requests.
        limit: score only the first N documents of each task (a quick check; the numbers are not comparable).
        num_fewshot: examples in each prompt (default: each task's own, else 0).
        device: torch device to run on (cpu, cuda, cuda:1 ...).
        seed: lm-eval's seeds (python, numpy, torch, few-shot sampling) and the sampler of sampling tasks.
        bootstrap_iters: resamples for the standard errors lm-eval bootstraps (LAMBADA's perplexity, F1, BLEU
            ...; a mean's is exact); 0 skips every standard error.
        log_to: a run folder (the training run's ``default_root_dir``, e.g. ``outputs/quickstart``): the metrics
            are logged there as ``lm_eval/TASK/METRIC`` at the checkpoint's training step, by the loggers a run has
            by default: CSV (``RUN/csv/lm_eval/metrics.csv``) and W&B (offline in ``RUN/wandb`` unless
            ``WANDB_MODE=online``).
        wandb: with ``log_to``, log to W&B as well as CSV.
    """
    if batch_size < 1:
        raise ValueError(f"--batch_size must be >= 1, got {batch_size}")
    if limit is not None and limit < 1:
        raise ValueError(f"--limit must be >= 1 (or left out for every document), got {limit}")
    # before anything heavy: a missing file, a sharded folder (consolidate first) or a classifier is one error
    info = ckpt_format.read_info(checkpoint, expect="language_model", purpose="evaluate")
    if not info.config.causal:
        raise ValueError(f"{checkpoint} holds a {info.config.family} encoder, which has no next-token probabilities"
                         " for lm-eval to score; evaluate a gpt2- or llama-family checkpoint")
    if out is not None:
        check_writable(Path(out).absolute().parent, "--out")
    if log_to is not None:
        check_writable(Path(log_to), "--log_to")
    manager, names = resolve_tasks(tasks, include_path)
    try:
        results = simple_evaluate(
            model="lit_llm", model_args={"checkpoint": checkpoint, "seed": seed}, tasks=names,
            num_fewshot=num_fewshot, batch_size=batch_size, device=device, limit=limit,
            bootstrap_iters=bootstrap_iters, log_samples=False, task_manager=manager, random_seed=seed,
            numpy_random_seed=seed, torch_random_seed=seed, fewshot_random_seed=seed)
    except ConnectionError as e:  # datasets' error for a task's data it cannot download (offline, no network)
        raise UsageError(f"lm-eval could not download the data of {', '.join(names)} ({one_line(e)}); run once where"
                         " the Hugging Face Hub is reachable (the data is cached), or evaluate a task of your own on"
                         " local files (--include_path, see docs/evaluation.md)") from e
    print(make_table(results))
    if results.get("groups"):
        print(make_table(results, "groups"))
    if out is not None:
        write_text_atomic(out, json.dumps(results, indent=2, default=handle_non_serializable, ensure_ascii=False) + "\n")
        print(f"Wrote the results to {out}")
    if log_to is not None:
        log_results(results, checkpoint, log_to, wandb)
    return results


def flat_metrics(results: dict[str, Any]) -> dict[str, float]:
    """``lm_eval/TASK/METRIC`` -> value of lm-eval's results (the filter suffix ``,none`` dropped; standard errors
    kept as ``METRIC_stderr``)."""
    return {f"lm_eval/{task}/{metric.replace(',none', '')}": float(value)
            for task, row in results["results"].items() for metric, value in row.items()
            if isinstance(value, (int, float)) and not isinstance(value, bool)}


def log_results(results: dict[str, Any], checkpoint: str, run_dir: str, wandb: bool = True) -> None:
    """Log the metrics into a run folder with Lightning's loggers, at the training step of the checkpoint, so that
    they sit beside the run's own curves (CSV for ``lit_llm plot``, W&B)."""
    import os

    from lightning.pytorch.loggers import CSVLogger

    step = ckpt_format.load(checkpoint, mmap=True)[1].get("global_step")
    step = step if isinstance(step, int) else 0
    loggers = [CSVLogger(save_dir=run_dir, name="csv", version="lm_eval")]
    if wandb:
        from lit_llm.tracking import WandbLogger

        loggers.append(WandbLogger(project="lit_llm", name=f"lm_eval-{Path(checkpoint).stem}", save_dir=run_dir,
                                   offline=os.environ.get("WANDB_MODE") != "online", job_type="eval"))
    metrics = flat_metrics(results)
    for logger in loggers:
        logger.log_hyperparams({"checkpoint": str(Path(checkpoint).resolve()), "tasks": sorted(results["results"])})
        logger.log_metrics(metrics, step=step)
        logger.finalize("success")
    if wandb:
        loggers[-1].experiment.finish()  # the run's files whole now, not at interpreter exit
    print(f"Logged {len(metrics)} metrics at step {step} to {run_dir} ({', '.join(type(lg).__name__ for lg in loggers)})")
