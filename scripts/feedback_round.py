"""One measured round of the feedback loop: sentiment as generation, deployed to a new domain.

1. The pretrained language model of configs/experiment/pretrain.yaml (Tiny Shakespeare + SST-2 train text) is
   instruction-tuned (configs/experiment/instruct.yaml, LoRA) to answer "positive" or "negative" to a movie
   review (SST-2 train as prompt/response pairs).
2. ``lit_llm serve`` serves it. Simulated users send it *product* reviews (CR) from a feedback pool over real
   HTTP (``/v1/chat/completions``), read each answer, and post a correction through ``/v1/feedback`` for each
   wrong one.
3. DPO on the server's feedback store (configs/experiment/preference.yaml) gives the next model; also from the
   first 50 and 200 corrections only, for a curve.

CR is split into 5 stratified folds; seed k tests on fold k and draws its feedback pool from the other four, so
no CR sentence used as feedback is tested on. Evaluated on CR's test fold and SST-2 test, per seed: the
instruction-tuned LM before and after the round, and the classifier head on the same backbone trained on SST-2
alone (configs/experiment/classifier.yaml + data/sst2.yaml + init/pretrained.yaml). The LM's accuracy is that of its
answer: of the two answers, the one the model gives more probability to (lm-evaluation-harness's multiple-choice
``acc``; ``gen_acc``, the greedy answer being exactly the right word, is reported beside it).

    python scripts/feedback_round.py                 # the whole round, 5 seeds (about 50 min on 2 CPU cores)
    python scripts/feedback_round.py --seeds 1 --quick    # a smoke run in a few minutes

On a GPU with a larger model: pretrain (or ``lit_llm import-hf`` a Hub model) and pass ``--init CKPT``,
``--accelerator gpu`` and ``--scale 4`` (4x the tuning steps). Prints a table and ends with one JSON line
(also written to runs/experiment/feedback_round/results.json).
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

import torch

from lit_llm import chat
from lit_llm.commands.crossval import _run
from lit_llm.commands.sweep import interval, paired

ROOT = Path(__file__).resolve().parents[1]
EXP = ROOT / "configs" / "experiment"
OUT = Path("runs/experiment/feedback_round")
WORDS = ("negative", "positive")
FOLDS = 5
CURVE = (50, 200)
DPO_BATCH = 8  # pairs per step; DPO runs one pass over the pairs it has


def read_labelled(path: str) -> tuple[list[str], list[int]]:
    from lit_llm.data.labelled import read_labelled as read

    return read(path, label_names=list(WORDS), num_classes=2)


class Cutter:
    """Reviews cut at the end to fit the model's context with the chat template and the longer answer, as the
    classifier cuts its inputs at its max_length: the same text reaches the tuning, the users and the evaluation."""

    def __init__(self, checkpoint: Path) -> None:
        from lit_llm import checkpoint as ckpt_format
        from lit_llm.data.instructions import encode_conversation

        info = ckpt_format.read_info(checkpoint)
        self.tok = info.build_tokenizer()
        empty = [{"role": "user", "content": ""}, {"role": "assistant", "content": max(WORDS, key=len)}]
        overhead = len(encode_conversation(self.tok, empty, chat.eos_token(self.tok))[0])
        self.room = info.config.block_size - overhead - 2  # 2: tokens that may merge differently at the joins
        self.cut: set[str] = set()  # the reviews that were cut

    def __call__(self, text: str) -> str:
        from lit_llm.data.tokenizer import encode

        ids = encode(self.tok, text)
        if len(ids) <= self.room:
            return text
        self.cut.add(text)
        return self.tok.decode(ids[: self.room]).strip()


def write_sft_data(path: Path, cut: Cutter) -> None:
    texts, labels = read_labelled("sentiment/sst2/stsa.binary.train")
    path.write_text("".join(json.dumps({"prompt": cut(t), "response": WORDS[y]}) + "\n" for t, y in zip(texts, labels)))


def cr_split(fold: int, cut: Cutter) -> tuple[tuple[list[str], list[int]], tuple[list[str], list[int]]]:
    """(feedback pool, test part) of CR for ``fold``: stratified folds, the test part is fold ``fold``."""
    from lit_llm.data.labelled import kfold_indices

    texts, labels = read_labelled("sentiment/cr/custrev.all")
    texts = [cut(t) for t in texts]
    folds = kfold_indices(len(texts), FOLDS, seed=0, labels=labels)
    test = set(folds[fold].tolist())
    pool = [i for i in range(len(texts)) if i not in test]
    take = lambda idx: ([texts[i] for i in idx], [labels[i] for i in idx])  # noqa: E731
    return take(pool), take(sorted(test))


# ---------------------------------------------------------------------------------------------- serving
def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def post(url: str, body: dict, timeout: float = 60) -> dict:
    req = urllib.request.Request(url, data=json.dumps(body).encode(), headers={"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(req, timeout=timeout) as r:
            return json.loads(r.read())
    except urllib.error.HTTPError as e:
        raise RuntimeError(f"{url} answered {e.code}: {e.read().decode(errors='replace')[:500]}") from None


def simulated_users(checkpoint: Path, store: Path, pool: tuple[list[str], list[int]], seed: int) -> dict:
    """Serve ``checkpoint``; send each pool review as a chat message (in a seeded order); post a correction for
    each wrong answer. Returns counts."""
    port = free_port()
    server = subprocess.Popen([sys.executable, "-m", "lit_llm", "serve", "--checkpoint", str(checkpoint), "--port",
                               str(port), "--feedback_store", str(store), "--max_feedback_per_minute", "100000",
                               "--max_tokens", "8", "--log_level", "warning"], start_new_session=True)
    base = f"http://127.0.0.1:{port}"
    try:
        for _ in range(240):
            try:
                urllib.request.urlopen(f"{base}/v1/models", timeout=2).read()
                break
            except OSError:
                if server.poll() is not None:
                    raise RuntimeError(f"lit_llm serve exited with {server.returncode}")
                time.sleep(0.5)
        texts, labels = pool
        order = torch.randperm(len(texts), generator=torch.Generator().manual_seed(seed)).tolist()
        right = wrong = 0
        for i in order:
            answer = post(f"{base}/v1/chat/completions", {
                "messages": [{"role": "user", "content": texts[i]}], "temperature": 0, "max_tokens": 4,
            })["choices"][0]["message"]["content"]
            if chat.answer_content(answer).strip() == WORDS[labels[i]]:
                right += 1
                continue
            wrong += 1
            post(f"{base}/v1/feedback", {"kind": "completion", "request": texts[i], "response": answer,
                                         "corrected_text": WORDS[labels[i]]})
        return {"served": right + wrong, "right": right, "corrections": wrong}
    finally:
        os.killpg(server.pid, signal.SIGTERM)
        server.wait(timeout=120)


# ---------------------------------------------------------------------------------------------- evaluation
@torch.no_grad()
def lm_accuracy(checkpoint: Path, data: tuple[list[str], list[int]]) -> dict[str, float]:
    """``acc``: the answer with the higher log-probability is the right one; ``gen_acc``: the greedy answer
    (up to [EOS]) is exactly the right word."""
    from lit_llm.data.instructions import encode_conversation, inputs_and_labels, pad_rows
    from lit_llm.data.tokenizer import encode
    from lit_llm.generate import iter_batch_tokens, load_checkpoint
    from lit_llm.model.loss import IGNORE_INDEX
    from lit_llm.tasks.preference import answer_logps

    model, tok = load_checkpoint(checkpoint)
    eos = chat.eos_token(tok)
    eos_id = tok.token_to_id(chat.EOS_TOKEN)
    texts, labels = data
    right = gen_right = 0
    for start in range(0, len(texts), 64):
        batch = texts[start : start + 64]
        rows = [inputs_and_labels(*encode_conversation(tok, [{"role": "user", "content": t},
                                                             {"role": "assistant", "content": w}], eos))
                for w in WORDS for t in batch]
        x = pad_rows([r[0] for r in rows], 0)
        y = pad_rows([r[1] for r in rows], IGNORE_INDEX)
        logps, _ = answer_logps(model, x, y)
        choice = logps.view(2, -1).argmax(0).tolist()
        right += sum(c == lab for c, lab in zip(choice, labels[start : start + 64]))
        prompts = [encode(tok, chat.prompt([{"role": "user", "content": t}], eos)) for t in batch]
        steps = list(iter_batch_tokens(model, prompts, 3, sample=lambda logits: logits.argmax(-1, keepdim=True)))
        out = torch.stack([s.view(-1) for s in steps], dim=1).tolist()
        for ids, lab in zip(out, labels[start : start + 64]):
            ids = ids[: ids.index(eos_id)] if eos_id in ids else ids
            gen_right += tok.decode(ids).strip() == WORDS[lab]
    return {"acc": right / len(texts), "gen_acc": gen_right / len(texts)}


@torch.no_grad()
def classifier_accuracy(checkpoint: Path, data: tuple[list[str], list[int]]) -> dict[str, float]:
    from lit_llm.data.labelled import frame_examples, pad_examples
    from lit_llm.tasks import SequenceClassifier

    model = SequenceClassifier.restore(checkpoint).eval()
    texts, labels = data
    rows = frame_examples(model.tokenizer, texts, True, 64)
    preds = torch.cat([model(*pad_examples(model.tokenizer, rows[i : i + 256])).argmax(-1)
                       for i in range(0, len(rows), 256)])
    return {"acc": float((preds == torch.tensor(labels)).float().mean())}


# ---------------------------------------------------------------------------------------------- the round
def cfg(*names: str) -> list[str]:
    return [a for n in names for a in ("--config", str(EXP / n))]


def fit(args: list[str]) -> None:
    _run(["fit", *args, "--trainer.logger", "false", "--plots.enabled", "false"])


def one_seed(seed: int, init: Path, cut: Cutter, args: argparse.Namespace) -> dict:
    out = OUT / f"seed{seed}"
    pool, cr_test = cr_split(seed % FOLDS, cut)
    texts, labels = read_labelled("sentiment/sst2/stsa.binary.test")
    sst2_test = ([cut(t) for t in texts], labels)
    steps = lambda n: str(max(2, int(n * args.scale)))  # noqa: E731
    t0 = time.perf_counter()
    times = {}
    sft = out / "instruct" / "checkpoints" / "last.ckpt"
    if not sft.is_file():
        fit(cfg("instruct.yaml") + ["--seed_everything", str(seed), "--model.init_from", str(init),
                                    "--data.train", str(OUT / "sst2_train.jsonl"), "--data.seed", str(seed),
                                    "--trainer.max_steps", steps(820), "--trainer.val_check_interval", steps(820),
                                    "--trainer.default_root_dir", str(out / "instruct"),
                                    "--trainer.accelerator", args.accelerator])
    times["instruct"] = time.perf_counter() - t0
    clf = out / "classifier" / "checkpoints" / "best.ckpt"
    if not clf.is_file():
        fit(cfg("classifier.yaml", "data/sst2.yaml", "init/pretrained.yaml") + [
            "--seed_everything", str(seed), "--model.init_from", str(init), "--trainer.max_epochs", "2" if args.quick else "4",
            "--trainer.default_root_dir", str(out / "classifier"), "--trainer.accelerator", args.accelerator])
    times["classifier"] = time.perf_counter() - t0 - sum(times.values())
    store = out / "feedback.jsonl"
    users_json = out / "users.json"
    if not users_json.is_file():
        store.unlink(missing_ok=True)
        served = pool if not args.quick else (pool[0][:300], pool[1][:300])
        users_json.write_text(json.dumps(simulated_users(sft, store, served, seed)))
    users = json.loads(users_json.read_text())
    times["users"] = time.perf_counter() - t0 - sum(times.values())
    lines = store.read_text().splitlines(keepends=True)
    dpo = {}
    for n in (*CURVE, "all"):
        if n != "all" and n >= len(lines):
            continue
        subset = out / f"feedback_{n}.jsonl"
        subset.write_text("".join(lines if n == "all" else lines[:n]))
        ckpt = out / f"dpo_{n}" / "checkpoints" / "last.ckpt"
        pairs = len(lines) if n == "all" else n
        epoch = str(max(2, -(-pairs // DPO_BATCH)))  # one pass over the pairs
        if not ckpt.is_file():
            fit(cfg("preference.yaml") + ["--seed_everything", str(seed), "--model.init_from", str(sft),
                                          "--data.train", str(subset), "--data.seed", str(seed),
                                          "--data.batch_size", str(DPO_BATCH), "--trainer.max_steps", epoch,
                                          "--trainer.val_check_interval", epoch,
                                          "--model.optimizer.warmup_steps", str(min(10, int(epoch) // 4)),
                                          "--trainer.default_root_dir", str(out / f"dpo_{n}"),
                                          "--trainer.accelerator", args.accelerator])
        dpo[str(n)] = ckpt
    times["dpo"] = time.perf_counter() - t0 - sum(times.values())
    result = {"seed": seed, "fold": seed % FOLDS, "users": users,
              "instruct": {"cr": lm_accuracy(sft, cr_test), "sst2": lm_accuracy(sft, sst2_test)},
              "classifier": {"cr": classifier_accuracy(clf, cr_test), "sst2": classifier_accuracy(clf, sst2_test)}}
    for n, ckpt in dpo.items():
        result[f"dpo_{n}"] = {"cr": lm_accuracy(ckpt, cr_test), "sst2": lm_accuracy(ckpt, sst2_test)}
    times["eval"] = time.perf_counter() - t0 - sum(times.values())
    result["seconds"] = {k: round(v) for k, v in times.items()}
    (out / "result.json").write_text(json.dumps(result, indent=1))
    print(f"seed {seed}: " + json.dumps(result), flush=True)
    return result


def summarize(results: list[dict]) -> dict:
    models = ["instruct", "dpo_all", "classifier"] + [f"dpo_{n}" for n in CURVE]
    table = {}
    for m in models:
        for data in ("cr", "sst2"):
            values = [r[m][data]["acc"] for r in results if m in r]
            if values:
                table[f"{m}/{data}"] = interval(values)
    summary = {"accuracy": table, "corrections": [r["users"]["corrections"] for r in results]}
    if len(results) >= 2:
        cr_gain = paired([r["dpo_all"]["cr"]["acc"] for r in results], [r["instruct"]["cr"]["acc"] for r in results])
        sst2_cost = paired([r["dpo_all"]["sst2"]["acc"] for r in results], [r["instruct"]["sst2"]["acc"] for r in results])
        vs_head = paired([r["instruct"]["sst2"]["acc"] for r in results], [r["classifier"]["sst2"]["acc"] for r in results])
        summary["comparisons"] = {"cr_gain": cr_gain, "sst2_change": sst2_cost, "instruct_vs_head_sst2": vs_head}
        summary["goals"] = {
            "cr_gain_interval_excludes_zero": bool(cr_gain["ci95"][0] > 0),
            "sst2_drop_at_most_1_point": bool(sst2_cost["mean_diff"] >= -0.01),
            "instruct_within_1_point_of_head_on_sst2": bool(abs(vs_head["mean_diff"]) <= 0.01),
        }
    return summary


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, default=5)
    parser.add_argument("--init", default=None, help="pretrained LM checkpoint (default: pretrain.yaml's, trained if missing)")
    parser.add_argument("--quick", action="store_true", help="a smoke run: fewer steps and users")
    parser.add_argument("--scale", type=float, default=None, help="multiply the tuning steps (default 1; --quick 0.1)")
    parser.add_argument("--accelerator", default="cpu")
    args = parser.parse_args()
    args.scale = args.scale or (0.1 if args.quick else 1.0)
    global OUT
    if args.quick:  # its own folders: a smoke run's checkpoints are never reused by a real one
        OUT = OUT.with_name("feedback_round_quick")
    torch.set_num_threads(os.cpu_count() or 1)
    OUT.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    pretrain_dir = OUT / "pretrain" if args.quick else Path("runs/experiment/pretrain")
    init = Path(args.init) if args.init else pretrain_dir / "checkpoints" / "last.ckpt"
    if not init.is_file():
        if args.init:
            raise SystemExit(f"error: --init {init} does not exist")
        _run(["fit"] + cfg("pretrain.yaml") + ["--trainer.logger", "false", "--trainer.default_root_dir", str(pretrain_dir)]
             + (["--trainer.max_steps", "150", "--trainer.val_check_interval", "150"] if args.quick else []))
    pretrain_s = time.perf_counter() - t0
    cut = Cutter(init)
    if not (OUT / "sst2_train.jsonl").is_file():
        write_sft_data(OUT / "sst2_train.jsonl", cut)
    results = [one_seed(seed, init, cut, args) for seed in range(args.seeds)]
    # seed 0's test fold chose DPO's learning rate (configs/experiment/preference.yaml): the other seeds alone too
    held_out = summarize(results[1:]) if len(results) >= 3 else None
    summary = {"seeds": args.seeds, "quick": args.quick, "reviews_cut_to_fit": len(cut.cut), "room_tokens": cut.room, "minutes": round((time.perf_counter() - t0) / 60, 1),
               "pretrain_minutes": round(pretrain_s / 60, 1), "torch": torch.__version__, **summarize(results),
               "seeds_1_on": held_out, "per_seed": results}
    print("\n| model | CR test acc (fold = seed) [95% CI] | SST-2 test acc [95% CI] |\n|---|---|---|")
    for m in ("classifier", "instruct", *(f"dpo_{n}" for n in CURVE), "dpo_all"):
        cells = []
        for data in ("cr", "sst2"):
            s = summary["accuracy"].get(f"{m}/{data}")
            cells.append("" if s is None else f"{100 * s['mean']:.1f} [{100 * s['ci95'][0]:.1f}, {100 * s['ci95'][1]:.1f}]")
        print(f"| {m} | " + " | ".join(cells) + " |")
    (OUT / "results.json").write_text(json.dumps(summary, indent=1))
    print(json.dumps(summary))


if __name__ == "__main__":
    main()
