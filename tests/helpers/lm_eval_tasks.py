"""Two lm-evaluation-harness tasks over local files, for tests/test_evaluate.py and benchmarks/eval_parity.py: a
4-way cloze (multiple choice) and the rolling perplexity of whole speeches, both from the last tenth of Tiny
Shakespeare (the validation part of its split)."""

import json

from tests.helpers.paths import SHAKESPEARE

MC_TASK, PPL_TASK = "shakespeare_cloze", "shakespeare_ppl"


def speeches(n: int, min_chars: int = 200) -> list[str]:
    """``n`` speeches (blank-line separated) of at least ``min_chars`` from the last tenth of Tiny Shakespeare."""
    text = SHAKESPEARE.read_text(encoding="utf-8")
    tail = text[int(len(text) * 0.9):]
    speeches = [s.strip() for s in tail.split("\n\n")[1:] if len(s.strip()) >= min_chars]
    return speeches[:n]


def write_tasks(folder, cache) -> None:
    """The two task YAMLs and their JSONL data: a 4-way cloze (a speech line's first half; its own second half
    against three other lines' second halves) and the perplexity of whole speeches."""
    lines = [line for s in speeches(40, 0) for line in s.splitlines()[1:] if len(line.split()) >= 6][:48]
    ends = [line.split(" ", len(line.split()) // 2) for line in lines]
    with open(folder / "cloze.jsonl", "w", encoding="utf-8") as f:
        for i in range(0, len(ends), 4):
            group = ends[i:i + 4]
            answer = i // 4 % 4
            head = " ".join(group[answer][:-1])
            choices = [g[-1] for g in group]
            f.write(json.dumps({"context": head, "choices": choices, "answer": answer}) + "\n")
    with open(folder / "speeches.jsonl", "w", encoding="utf-8") as f:
        for speech in speeches(4):
            f.write(json.dumps({"text": speech}) + "\n")
    common = f"dataset_path: json\ntest_split: test\ndataset_kwargs:\n  cache_dir: {cache}\n  data_files:\n    test: "
    (folder / "cloze.yaml").write_text(
        f"task: {MC_TASK}\n{common}{folder / 'cloze.jsonl'}\noutput_type: multiple_choice\n"
        "doc_to_text: context\ndoc_to_choice: choices\ndoc_to_target: answer\n"
        "metric_list:\n  - metric: acc\n  - metric: acc_norm\n")
    (folder / "ppl.yaml").write_text(
        f"task: {PPL_TASK}\n{common}{folder / 'speeches.jsonl'}\noutput_type: loglikelihood_rolling\n"
        "doc_to_text: ''\ndoc_to_target: text\n"
        "metric_list:\n  - metric: word_perplexity\n  - metric: byte_perplexity\n  - metric: bits_per_byte\n")
