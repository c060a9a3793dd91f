"""What does the sentiment experiment's pretraining give each data set, before any fine-tuning?

For SST-2 (train -> test) and CR (stratified folds of 10, ``--folds`` of them), with the backbone of
``configs/experiment``'s classifier built two ways, from random weights (run (a)'s start) and from the
pretrained language model (run (b)'s start, ``--checkpoint``):

1. **Linear probe.** The frozen backbone's pooled feature of each sentence (the last token, ``[EOS]``, as the
   classifier pools it) feeds a logistic regression (L-BFGS, L2 ``--l2``, features standardized on the
   training split), trained on the training split and scored on the test split. How much sentiment the
   features already separate, before fine-tuning moves them. ``--pooling mean`` probes the mean over the
   tokens instead.
   For reference, the same regression on a bag of the tokenizer's tokens (which tokens a sentence holds) and
   on a bag of the training split's words: linear models of the text alone, without the network.
2. **Language-model fit.** The pretrained model's next-token loss and bits per byte on each data set's
   sentences (all of SST-2's test split, all of CR): how far each text is from what the model was trained on.

Prints a table and one JSON line. ``python benchmarks/transfer_probe.py`` (about a minute on 2 cores).
"""

from __future__ import annotations

import argparse
import json
import math
from pathlib import Path

import torch
import torch.nn.functional as F
import yaml

from lit_llm.data.labelled import ClassificationDataModule, frame_examples, pad_examples
from lit_llm.tasks import SequenceClassifier

EXP = Path(__file__).resolve().parents[1] / "configs" / "experiment"


def data_args(name: str) -> dict:
    return yaml.safe_load((EXP / f"{name}.yaml").read_text())["data"]["init_args"]


def backbones(checkpoint: str, seed: int, pooling: str) -> dict[str, SequenceClassifier]:
    scratch = yaml.safe_load((EXP / "init/scratch.yaml").read_text())["model"]["init_args"]
    torch.manual_seed(seed)
    models = {"random": SequenceClassifier(preset=scratch["preset"], model_args=scratch["model_args"], tokenizer=checkpoint,
                                           pooling=pooling),
              "pretrained": SequenceClassifier(init_from=checkpoint, pooling=pooling)}
    for m in models.values():
        m.head = torch.nn.Identity()  # forward returns the pooled feature
        m.eval()
    return models


@torch.no_grad()
def features(model: SequenceClassifier, texts: list[str], max_length: int) -> torch.Tensor:
    rows = frame_examples(model.tokenizer, texts, model.config.causal, max_length)
    return torch.cat([model(*pad_examples(model.tokenizer, rows[i : i + 256])) for i in range(0, len(rows), 256)])


def bag_of_tokens(model: SequenceClassifier, texts: list[str]) -> torch.Tensor:
    """(N, vocab) 0/1: which of the tokenizer's tokens each text holds."""
    out = torch.zeros(len(texts), model.tokenizer.get_vocab_size())
    for row, enc in enumerate(model.tokenizer.encode_batch(texts, add_special_tokens=False)):
        out[row, enc.ids] = 1.0
    return out


def bag_of_words(train: list[str], texts: list[str]) -> torch.Tensor:
    """(N, words of ``train``) 0/1: which of the training split's words (split on spaces, as the files are
    tokenized) each text holds."""
    vocab = {w: i for i, w in enumerate(sorted({w for t in train for w in t.split()}))}
    out = torch.zeros(len(texts), len(vocab))
    for row, text in enumerate(texts):
        out[row, [vocab[w] for w in set(text.split()) if w in vocab]] = 1.0
    return out


def probe(train_x: torch.Tensor, train_y: list[int], test_x: torch.Tensor, test_y: list[int], l2: float,
          standardize: bool = True) -> float:
    """Test accuracy of an L2-regularized logistic regression (on standardized features, for the networks')."""
    x, xt = train_x, test_x
    if standardize:
        mean, std = train_x.mean(0), train_x.std(0).clamp(min=1e-6)
        x, xt = (train_x - mean) / std, (test_x - mean) / std
    y = torch.tensor(train_y)
    linear = torch.nn.Linear(x.size(1), int(y.max()) + 1)
    opt = torch.optim.LBFGS(linear.parameters(), max_iter=500, line_search_fn="strong_wolfe")

    def closure():
        opt.zero_grad()
        loss = F.cross_entropy(linear(x), y) + l2 * linear.weight.square().sum()
        loss.backward()
        return loss

    opt.step(closure)
    with torch.no_grad():
        return float((linear(xt).argmax(-1) == torch.tensor(test_y)).float().mean())


@torch.no_grad()
def lm_fit(checkpoint: str, texts: list[str]) -> dict:
    from lit_llm.generate import load_checkpoint

    model, tok = load_checkpoint(checkpoint)
    model.eval()
    eos = tok.token_to_id("[EOS]")
    total, count, n_bytes = 0.0, 0, 0
    for enc, text in zip(tok.encode_batch(texts, add_special_tokens=False), texts):
        ids = [eos] + enc.ids[: model.config.block_size - 1]  # each sentence after a boundary, as in the corpus
        x = torch.tensor([ids])
        logits = model(x[:, :-1])
        total += float(F.cross_entropy(logits[0], x[0, 1:], reduction="sum"))
        count += len(ids) - 1
        n_bytes += len(tok.decode(ids[1:]).encode())
    return {"loss": total / count, "bits_per_byte": total / math.log(2) / n_bytes}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--checkpoint", default="runs/experiment/pretrain/checkpoints/last.ckpt",
                   help="the pretrained language model (python scripts/sentiment_experiment.py --stages pretrain)")
    p.add_argument("--folds", type=int, default=5, help="CR folds to probe (of 10)")
    p.add_argument("--l2", type=float, default=1e-3)
    p.add_argument("--seed", type=int, default=0, help="seed of the random backbone")
    p.add_argument("--pooling", default="last", choices=["last", "mean"],
                   help="the feature: the last token's (as the classifier pools) or the mean over the tokens")
    args = p.parse_args()
    if not Path(args.checkpoint).is_file():
        raise SystemExit(f"error: no pretrained checkpoint at {args.checkpoint}; run python scripts/sentiment_experiment.py"
                         " --stages pretrain, or pass --checkpoint")
    models = backbones(args.checkpoint, args.seed, args.pooling)
    out: dict = {"probe_acc": {}, "lm": {}}

    sst2 = data_args("sst2")
    splits = ClassificationDataModule(**sst2).load_examples()
    out["probe_acc"]["sst2"] = {}
    for name, model in models.items():
        tr, te = (features(model, splits[s][0], sst2["max_length"]) for s in ("train", "test"))
        out["probe_acc"]["sst2"][name] = probe(tr, splits["train"][1], te, splits["test"][1], args.l2)
    tr, te = (bag_of_tokens(models["random"], splits[s][0]) for s in ("train", "test"))
    out["probe_acc"]["sst2"]["bag_of_tokens"] = probe(tr, splits["train"][1], te, splits["test"][1], args.l2, False)
    tr, te = (bag_of_words(splits["train"][0], splits[s][0]) for s in ("train", "test"))
    out["probe_acc"]["sst2"]["bag_of_words"] = probe(tr, splits["train"][1], te, splits["test"][1], args.l2, False)
    out["lm"]["sst2_test"] = lm_fit(args.checkpoint, splits["test"][0])

    cr = data_args("cr")
    out["probe_acc"]["cr"] = {name: [] for name in [*models, "bag_of_tokens", "bag_of_words"]}
    for fold in range(args.folds):
        folds = ClassificationDataModule(**{**cr, "fold": fold}).load_examples()
        train = (folds["train"][0] + folds["val"][0], folds["train"][1] + folds["val"][1])
        for name, model in models.items():
            tr, te = features(model, train[0], cr["max_length"]), features(model, folds["test"][0], cr["max_length"])
            out["probe_acc"]["cr"][name].append(probe(tr, train[1], te, folds["test"][1], args.l2))
        tr, te = bag_of_tokens(models["random"], train[0]), bag_of_tokens(models["random"], folds["test"][0])
        out["probe_acc"]["cr"]["bag_of_tokens"].append(probe(tr, train[1], te, folds["test"][1], args.l2, False))
        tr, te = bag_of_words(train[0], train[0]), bag_of_words(train[0], folds["test"][0])
        out["probe_acc"]["cr"]["bag_of_words"].append(probe(tr, train[1], te, folds["test"][1], args.l2, False))
        if fold == 0:
            out["lm"]["cr"] = lm_fit(args.checkpoint, train[0] + folds["test"][0])
    out["probe_acc"]["cr"] = {k: {"mean": sum(v) / len(v), "folds": v} for k, v in out["probe_acc"]["cr"].items()}

    print(f"{'data':>6s} {'random features':>16s} {'pretrained features':>20s} {'bag of tokens':>14s}"
          f" {'bag of words':>13s} {'LM loss':>8s} {'bits/byte':>10s}")
    for data, lm in (("sst2", "sst2_test"), ("cr", "cr")):
        acc = out["probe_acc"][data]
        r, pre, bag, words = (acc[k] if data == "sst2" else acc[k]["mean"]
                              for k in ("random", "pretrained", "bag_of_tokens", "bag_of_words"))
        print(f"{data:>6s} {100 * r:>16.1f} {100 * pre:>20.1f} {100 * bag:>14.1f} {100 * words:>13.1f}"
              f" {out['lm'][lm]['loss']:>8.2f} {out['lm'][lm]['bits_per_byte']:>10.2f}")
    print(json.dumps({**out, "checkpoint": args.checkpoint, "l2": args.l2, "cr_folds": args.folds, "seed": args.seed,
                      "pooling": args.pooling}))


if __name__ == "__main__":
    main()
