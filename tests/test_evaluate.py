"""``lit_llm evaluate``: lm-evaluation-harness on a lit_llm checkpoint through the native adapter
(lit_llm/evaluate.py), checked against lm-eval's own ``hf`` model on the checkpoint's Hugging Face export (and, for
a GPT-2 imported from transformers, on its source directory): the same metrics, log-likelihoods and greedy
generations; and the errors a bad command line gets, each one line.

Everything is local: two task YAMLs written here (a multiple-choice cloze and a rolling perplexity task, both over
Tiny Shakespeare's last tenth) and random-weight checkpoints whose BPE tokenizers have an end-of-text token.
``pytest -s -k parity tests/test_evaluate.py`` prints the largest native-vs-hf differences.
"""

import json
import sys

import pytest
import torch

pytest.importorskip("lm_eval")
pytest.importorskip("transformers")

from tests.helpers.checkpoints import gpt2_style_tokenizer, write_lm_checkpoint  # noqa: E402
from tests.helpers.cli import call, error_line  # noqa: E402
from tests.helpers.lm_eval_tasks import MC_TASK, PPL_TASK  # noqa: E402
from tests.helpers.lm_eval_tasks import speeches as _speeches
from tests.helpers.lm_eval_tasks import write_tasks as _write_tasks
from tests.helpers.paths import SHAKESPEARE  # noqa: E402

TOL = 1e-4
CASES = ["debug", "debug-llama", "imported-gpt2"]  # lit_llm's GPT-2 and Llama; a GPT-2 from transformers


@pytest.fixture(autouse=True)
def _offline(monkeypatch):
    """No network: lm-eval and datasets read only the local files the tasks name."""
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")


def _imported_gpt2(folder):
    """A transformers GPT-2 directory with GPT-2's conventions (``<|endoftext|>`` begins and ends texts, no [EOS]),
    and the lit_llm checkpoint ``import-hf`` makes of it."""
    import transformers

    from lit_llm.export import import_hf

    tok = gpt2_style_tokenizer()
    end = tok.token_to_id("<|endoftext|>")
    torch.manual_seed(0)
    config = transformers.GPT2Config(vocab_size=tok.get_vocab_size(), n_positions=64, n_embd=32, n_layer=2, n_head=2,
                                     bos_token_id=end, eos_token_id=end)
    transformers.GPT2LMHeadModel(config).save_pretrained(folder / "hf")
    transformers.PreTrainedTokenizerFast(tokenizer_object=tok, eos_token="<|endoftext|>", bos_token="<|endoftext|>",
                                         pad_token="<|pad|>", model_max_length=64).save_pretrained(folder / "hf")
    return import_hf(str(folder / "hf"), str(folder / "imported.ckpt")), folder / "hf"


@pytest.fixture(scope="module")
def models(tmp_path_factory) -> dict:
    """case -> (checkpoint, a transformers directory of the same model): lit_llm's GPT-2 and Llama (BPE, [EOS])
    with their exports, and a GPT-2 imported from transformers with its source directory. HFLM runs with its
    defaults on each (its BOS prefix is the export's BOS, which is the [EOS] a lit_llm text follows in training)."""
    from lit_llm.export import export

    tmp = tmp_path_factory.mktemp("evaluate")
    cases = {}
    for family in ("debug", "debug-llama"):
        ckpt = write_lm_checkpoint(tmp / f"{family}.ckpt", family=family)
        cases[family] = ckpt, export(str(ckpt), str(tmp / f"{family}-hf"))
    cases["imported-gpt2"] = _imported_gpt2(tmp)
    return cases


@pytest.fixture(scope="module")
def tasks(tmp_path_factory):
    """The folder of the two task YAMLs (--include_path)."""
    folder = tmp_path_factory.mktemp("tasks")
    _write_tasks(folder, tmp_path_factory.mktemp("datasets"))
    return folder


def _hflm(hf_dir):
    """lm-eval's ``hf`` model on a transformers directory, with its defaults."""
    from lm_eval.models.huggingface import HFLM

    return HFLM(pretrained=str(hf_dir), device="cpu", batch_size=4)


def _metrics(results: dict) -> dict[str, float]:
    return {f"{task}/{name}": value for task, row in results["results"].items() for name, value in row.items()
            if isinstance(value, float)}


# ---------------------------------------------------------------------------------------------- errors, fast
def test_a_missing_checkpoint_or_a_sharded_folder_is_one_error_line(tmp_path, capsys):
    line = error_line(*call(["evaluate", "--checkpoint", str(tmp_path / "none.ckpt"), "--tasks", "hellaswag"],
                            capsys)[::2])
    assert "none.ckpt does not exist" in line
    sharded = tmp_path / "sharded.ckpt"
    sharded.mkdir()
    (sharded / ".metadata").write_bytes(b"")
    line = error_line(*call(["evaluate", "--checkpoint", str(sharded), "--tasks", "hellaswag"], capsys)[::2])
    assert "lit_llm consolidate" in line


def test_an_unknown_task_names_the_closest_before_the_model_loads(tmp_path, capsys, monkeypatch):
    import lit_llm.evaluate

    def never(*args, **kwargs):
        raise AssertionError("the model was loaded before the task names were checked")

    monkeypatch.setattr(lit_llm.evaluate, "load_checkpoint", never)
    ckpt = write_lm_checkpoint(tmp_path / "lm.ckpt")
    line = error_line(*call(["evaluate", "--checkpoint", str(ckpt), "--tasks", "arc_easy,hellaswg"], capsys)[::2])
    assert line == ("error: unknown task 'hellaswg'; did you mean 'hellaswag'? (`lm_eval ls tasks` lists lm-eval's"
                    " tasks; a task of your own is a YAML file under --include_path FOLDER)")


@pytest.mark.slow
def test_a_task_whose_data_cannot_be_downloaded_is_one_error_line(tmp_path, capsys, monkeypatch):
    """Offline, a task whose data is on the Hub (a data set no cache holds) is one error line, not a traceback.
    HF's offline mode (as HF_HUB_OFFLINE=1 sets it) answers at once where an unreachable Hub takes ~30 s of retries."""
    import datasets
    import huggingface_hub

    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    monkeypatch.setattr(datasets.config, "HF_HUB_OFFLINE", True)
    ckpt = write_lm_checkpoint(tmp_path / "lm.ckpt")
    (tmp_path / "tasks").mkdir()
    (tmp_path / "tasks" / "hub.yaml").write_text("task: hub_task\ndataset_path: lit-llm-tests/no-such-dataset\ntest_split: test\n"
                                       "output_type: loglikelihood_rolling\ndoc_to_text: ''\ndoc_to_target: text\n")
    line = error_line(*call(["evaluate", "--checkpoint", str(ckpt), "--tasks", "hub_task", "--include_path",
                             str(tmp_path / "tasks")], capsys)[::2])
    assert line.startswith("error: lm-eval could not download the data of hub_task (") and "--include_path" in line


def test_without_lm_eval_the_error_names_the_extra(tmp_path, capsys, monkeypatch):
    for name in [m for m in sys.modules if m == "lm_eval" or m.startswith("lm_eval.")]:
        monkeypatch.setitem(sys.modules, name, None)  # import raises ModuleNotFoundError, as when not installed
    monkeypatch.setitem(sys.modules, "lm_eval", None)
    monkeypatch.delitem(sys.modules, "lit_llm.evaluate", raising=False)
    line = error_line(*call(["evaluate", "--checkpoint", "x.ckpt", "--tasks", "hellaswag"], capsys)[::2])
    assert line.startswith("error: evaluate: ") and line.endswith("pip install 'lit_llm[eval]'")


def test_a_character_vocabulary_refuses_what_it_cannot_score(tmp_path):
    """The quickstart's kind of tokenizer (characters and [UNK], no [EOS]): multiple choice works; a perplexity
    task (no end-of-text token to start from) and a character outside the vocabulary are errors naming why."""
    from lm_eval.api.instance import Instance

    from lit_llm import checkpoint as ckpt_format
    from lit_llm.data.tokenizer import TokenizerSpec, train_tokenizer
    from lit_llm.evaluate import LitLLMEval
    from lit_llm.model import ModelConfig, build_model

    tok = train_tokenizer(TokenizerSpec(kind="char"), [SHAKESPEARE.read_text(encoding="utf-8")[:20_000]])
    cfg = ModelConfig.from_name("debug", vocab_size=tok.get_vocab_size(), block_size=64)
    info = ckpt_format.CheckpointInfo(task="language_model", model_config=cfg.to_dict(), tokenizer=tok.to_str())
    ckpt = ckpt_format.save(tmp_path / "char.ckpt", {f"model.{k}": v for k, v in build_model(cfg).state_dict().items()},
                            info)
    lit = LitLLMEval(str(ckpt))
    ((logprob, _),) = lit.loglikelihood([Instance("loglikelihood", {}, ("ROMEO:", " But soft"), 0)])
    assert logprob < 0
    with pytest.raises(ValueError, match="has no end-of-text token"):
        lit.loglikelihood_rolling([Instance("loglikelihood_rolling", {}, ("To be, or not to be",), 0)])
    with pytest.raises(ValueError, match="characters the tokenizer does not know: \\['€'\\]"):
        lit.loglikelihood([Instance("loglikelihood", {}, ("ROMEO:", " a € for thy thoughts"), 0)])


# ---------------------------------------------------------------------------------------------- parity, slow
@pytest.fixture
def wandb_torn_down():
    """W&B's in-process run leaves WANDB_SERVICE (its service's socket) in os.environ, which every later subprocess
    would inherit and try to reach (the SLURM tests' jobs crashed on it): shut the service down after the test."""
    yield
    import wandb

    wandb.teardown()


@pytest.mark.slow
def test_parity_the_command_gives_the_metrics_of_hf_on_the_export(models, tasks, tmp_path, capsys, wandb_torn_down):
    """``lit_llm evaluate`` on both local tasks (its table, its JSON) gives the metrics of ``--model hf`` on the
    export to 1e-4."""
    from lm_eval import simple_evaluate
    from lm_eval.tasks import TaskManager

    ckpt, hf_dir = models["debug"]
    out = tmp_path / "results" / "eval.json"
    code, stdout, err = call(["evaluate", "--checkpoint", str(ckpt), "--tasks", MC_TASK, PPL_TASK, "--include_path",
                              str(tasks), "--out", str(out), "--batch_size", "4", "--bootstrap_iters", "0",
                              "--log_to", str(tmp_path / "run")], capsys)
    assert code == 0, err
    assert f"|{MC_TASK}" in stdout and "bits_per_byte" in stdout and "acc_norm" in stdout  # lm-eval's table
    native = json.loads(out.read_text())
    assert native["config"]["model"] == "lit_llm" and native["config"]["model_args"]["checkpoint"] == str(ckpt)
    theirs = simple_evaluate(model=_hflm(hf_dir), tasks=[MC_TASK, PPL_TASK], log_samples=False,
                             bootstrap_iters=0, task_manager=TaskManager(include_path=str(tasks), include_defaults=False))
    ours_m, theirs_m = _metrics(native), _metrics(theirs)
    assert set(ours_m) == set(theirs_m) and {f"{PPL_TASK}/bits_per_byte,none", f"{MC_TASK}/acc_norm,none"} <= set(ours_m)
    diff = max(abs(ours_m[k] - theirs_m[k]) / max(1.0, abs(theirs_m[k])) for k in ours_m)
    print(f"\nnative vs hf, {len(ours_m)} metrics: largest difference (relative above 1) {diff:.2e}")
    assert diff < TOL
    # --log_to: the run's CSV log and its (offline) W&B run hold the metrics at the checkpoint's step
    import csv

    from tests.helpers.wandb_offline import history

    rows = list(csv.DictReader(open(tmp_path / "run" / "csv" / "lm_eval" / "metrics.csv")))
    step = torch.load(ckpt, weights_only=True).get("global_step", 0)
    assert len(rows) == 1 and int(rows[0]["step"]) == step
    assert float(rows[0][f"lm_eval/{PPL_TASK}/bits_per_byte"]) == pytest.approx(ours_m[f"{PPL_TASK}/bits_per_byte,none"])
    (run_file,) = (tmp_path / "run" / "wandb").glob("offline-run-*/run-*.wandb")
    logged = [row for row in history(run_file) if f"lm_eval/{MC_TASK}/acc" in row]
    assert logged and logged[0][f"lm_eval/{MC_TASK}/acc"] == pytest.approx(ours_m[f"{MC_TASK}/acc,none"])


@pytest.mark.slow
@pytest.mark.parametrize("case", CASES)
def test_parity_requests_give_the_loglikelihoods_and_greedy_text_of_hf(models, case):
    """lm-eval's three request types one by one: log-likelihoods (an empty context, a context longer than the
    block), rolling log-likelihoods of whole speeches and greedy generation with and without a stop string equal
    those of the ``hf`` model on the export (log-likelihoods to 1e-4, texts exactly)."""
    from lm_eval.api.instance import Instance

    from lit_llm.evaluate import LitLLMEval

    ckpt, hf_dir = models[case]
    lit, hf = LitLLMEval(str(ckpt), batch_size=3), _hflm(hf_dir)
    speeches = _speeches(3)
    pairs = [("", "To be, or not to be"), ("ROMEO:", " But soft, what light"),
             ("First Citizen:\nBefore we", " proceed any further, hear me speak."), (speeches[0], " And so farewell.")]
    requests = [Instance("loglikelihood", {}, pair, i) for i, pair in enumerate(pairs)]
    ours, theirs = lit.loglikelihood(requests), hf.loglikelihood(requests)
    assert [greedy for _, greedy in ours] == [greedy for _, greedy in theirs]
    ll_diff = max(abs(a - b) for (a, _), (b, _) in zip(ours, theirs))
    rolling = [Instance("loglikelihood_rolling", {}, (text,), i) for i, text in enumerate(speeches)]
    ours, theirs = lit.loglikelihood_rolling(rolling), hf.loglikelihood_rolling(rolling)
    rolling_diff = max(abs(a - b) for a, b in zip(ours, theirs))
    print(f"\nnative vs hf, {case}: largest loglikelihood difference {ll_diff:.2e}, rolling {rolling_diff:.2e}")
    assert ll_diff < TOL and rolling_diff < TOL

    prompts = ["ROMEO:\nBut soft, what light", "First Citizen:"]
    free = lit.generate_until([Instance("generate_until", {}, (p, {"until": [], "max_gen_toks": 24}), 0)
                               for p in prompts])
    # decoded together (left-padded, batch_size 3) as each is decoded alone
    assert free == [lit.generate(p, {"until": [], "max_gen_toks": 24}) for p in prompts]
    stops = [text[len(text) // 2: len(text) // 2 + 2] for text in free]  # strings the greedy text does hold
    # max_gen_toks 24: lm-eval's default, 256, is past the block of 64 tokens, which HFLM refuses
    gen = [(prompts[0], {"until": [], "do_sample": False}), (prompts[1], {"until": ["\n"]})]
    gen += [(p, {"until": [stop]}) for p, stop in zip(prompts, stops)]
    requests = [Instance("generate_until", {}, (p, {**k, "max_gen_toks": 24}), i) for i, (p, k) in enumerate(gen)]
    ours, theirs = lit.generate_until(requests), hf.generate_until(requests)
    assert ours == theirs
    assert ours[0] == free[0] and ours[2:] == [text[: text.index(stop)] for text, stop in zip(free, stops)]
    # a generation longer than the block: the context window slides (HFLM refuses it)
    (long,) = lit.generate_until([Instance("generate_until", {}, (prompts[0], {"until": [], "max_gen_toks": 80}), 0)])
    assert long.startswith(free[0])


@pytest.mark.slow
def test_a_sampling_task_is_seeded_and_unknown_generation_arguments_are_refused(models):
    from lit_llm.evaluate import LitLLMEval

    ckpt = str(models["debug-llama"][0])
    sample = {"do_sample": True, "temperature": 1.0, "top_k": 50, "top_p": 0.9, "max_gen_toks": 16, "until": []}
    first, again, other = (LitLLMEval(ckpt, seed=s).generate("ROMEO:", sample) for s in (1, 1, 2))
    assert first == again != other
    with pytest.raises(ValueError, match=r"Generation arguments \['repetition_penalty'\] are not supported"):
        LitLLMEval(ckpt).generate("ROMEO:", {"until": ["\n"], "repetition_penalty": 1.2})
