"""Where text comes from: local files and globs (txt, jsonl, csv, parquet) or Hugging Face datasets by name.

Every source is read through ``datasets.load_dataset`` in streaming mode, so a corpus larger than memory
is read document by document. Several sources are mixed with ``datasets.interleave_datasets``, drawing
each next document from source i with probability weight_i / sum(weights). ``mixing`` is its stopping
strategy: ``all_exhausted_without_replacement`` (default) uses every document once, so weights set how the
sources are interleaved; ``all_exhausted`` oversamples until every source is used up, so weights set the
sources' shares (small sources repeat); ``first_exhausted`` stops with the first source (undersampling).
"""

from __future__ import annotations

import glob as globlib
import hashlib
import json
import os
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Iterator, Optional

from lit_llm.data.corpora import CORPORA, data_dirs, resolve_corpus

FORMATS = {".txt": "text", ".text": "text", ".md": "text", ".jsonl": "json", ".json": "json", ".csv": "csv",
           ".parquet": "parquet"}


@dataclass
class Source:
    """One corpus.

    Args:
        path: a file, a glob (``data/*.jsonl``) or a named corpus (``tinyshakespeare``).
        hf_name: a Hugging Face dataset name (instead of ``path``), e.g. ``wikimedia/wikipedia``.
        hf_config: its configuration, e.g. ``20231101.en``.
        split: which split to read.
        text_field: column or JSON field holding the text (txt files: one text per document).
        format: ``text``, ``json``, ``csv``, ``parquet`` or ``feedback`` (a ``lit_llm serve`` feedback store:
            corrected completions and those rated good, see ``lit_llm.feedback.feedback_texts``); by default
            taken from the file extension.
        sample_by: for text files, what one document is: ``document`` (the whole file), ``paragraph`` or ``line``.
        weight: relative share of documents drawn from this source when several are mixed.
        max_documents: read at most this many documents (None: all).
    """

    path: Optional[str] = None
    hf_name: Optional[str] = None
    hf_config: Optional[str] = None
    split: str = "train"
    text_field: str = "text"
    format: Optional[str] = None
    sample_by: str = "document"
    weight: float = 1.0
    max_documents: Optional[int] = None

    def __post_init__(self) -> None:
        if (self.path is None) == (self.hf_name is None):
            raise ValueError(f"A source needs exactly one of path or hf_name, got path={self.path!r} hf_name={self.hf_name!r}")
        if self.weight <= 0:
            raise ValueError(f"Source weight must be positive, got {self.weight} for {self.path or self.hf_name}")
        if self.sample_by not in ("document", "paragraph", "line"):
            raise ValueError(f"sample_by must be document, paragraph or line, got {self.sample_by!r}")


def resolve_files(source: Source, data_dir: Optional[str] = None) -> list[Path]:
    """The local files of a path source, checked to exist, in sorted order. A relative path that matches
    nothing here is also looked up in the data directories (``--data.data_dir``, ``$LIT_LLM_DATA_DIR``,
    ``../shared/data`` ...), like named corpora."""
    if source.path in CORPORA:
        return [resolve_corpus(source.path, data_dir)]
    pattern = os.path.expanduser(source.path)
    roots = [Path(".")] + ([] if os.path.isabs(pattern) else data_dirs(data_dir))
    for root in roots:
        files = sorted(f for f in (Path(p) for p in globlib.glob(str(root / pattern), recursive=True)) if f.is_file())
        if files:
            return files
    raise FileNotFoundError(
        f"Source path {source.path!r} matches no file (searched {', '.join(str(r) for r in roots)})."
        f" Check the path or glob, or name a corpus: {', '.join(CORPORA)}"
    )


def source_format(source: Source, files: list[Path]) -> str:
    if source.format:
        return source.format
    kinds = {FORMATS.get(f.suffix.lower()) for f in files}
    if None in kinds or len(kinds) != 1:
        raise ValueError(
            f"Cannot tell the format of {source.path!r} from its extensions {sorted({f.suffix for f in files})};"
            f" set format to one of text, json, csv, parquet, feedback"
        )
    return kinds.pop()


def fingerprint(source: Source, data_dir: Optional[str] = None) -> dict:
    """What identifies the source's content: file names, sizes and mtimes (hub: name, config, split)."""
    d = asdict(source)
    if source.path is not None:
        d["files"] = [[str(f.resolve()), f.stat().st_size, f.stat().st_mtime_ns] for f in resolve_files(source, data_dir)]
    return d


def fingerprint_hash(fp: object) -> str:
    return hashlib.sha256(json.dumps(fp, sort_keys=True, default=str).encode()).hexdigest()[:16]


def load_source(source: Source, data_dir: Optional[str] = None, encoding_errors: str = "strict"):
    """A streaming ``datasets.IterableDataset`` with one column, ``text``. ``encoding_errors="replace"``
    substitutes U+FFFD for invalid UTF-8 in text files."""
    import datasets

    if source.hf_name is not None:
        ds = datasets.load_dataset(source.hf_name, source.hf_config, split=source.split, streaming=True)
    else:
        files = resolve_files(source, data_dir)
        fmt = source_format(source, files)
        if fmt == "feedback":  # users' corrections and approved answers from the serving endpoint
            return _limit(datasets.IterableDataset.from_generator(
                _feedback_rows, gen_kwargs={"paths": [str(f) for f in files]},
                features=datasets.Features({"text": datasets.Value("string")}),
            ), source)
        if fmt == "text" and source.sample_by == "line":  # datasets' text builder splits with str.splitlines
            return _limit(datasets.IterableDataset.from_generator(
                _text_lines, gen_kwargs={"paths": [str(f) for f in files], "encoding_errors": encoding_errors},
                features=datasets.Features({"text": datasets.Value("string")}),
            ), source)
        kw: dict = {}
        if fmt == "text":
            kw = {"sample_by": source.sample_by, "encoding": "utf-8", "encoding_errors": encoding_errors}
        if fmt in ("text", "json"):
            kw["chunksize"] = 1 << 20  # 1 MB reads: the 10 MB default costs ~90 MB of buffers and is slower
        ds = datasets.load_dataset(fmt, data_files=[str(f) for f in files], split="train", streaming=True, **kw)
    if source.text_field not in (ds.column_names or [source.text_field]):
        raise KeyError(
            f"Source {source.path or source.hf_name!r} has no field {source.text_field!r}; its fields are"
            f" {ds.column_names}. Set text_field."
        )
    if source.text_field != "text":
        ds = ds.rename_column(source.text_field, "text")
    ds = ds.select_columns(["text"]).cast(datasets.Features({"text": datasets.Value("string")}))  # one schema to mix
    return _limit(ds, source)


def _limit(ds, source: Source):
    return ds.take(source.max_documents) if source.max_documents is not None else ds


def split_lines(text: str, keepends: bool = False) -> list[str]:
    """The lines of ``text``, split at "\\n" only (a "\\r\\n" ending counts as one). Unlike ``str.splitlines``,
    U+0085, U+2028, U+2029, form feeds and vertical tabs stay inside their line: a review converted from
    Windows-1252 holds U+0085 where it had an ellipsis, and must not become two records."""
    parts = text.split("\n")
    if keepends:  # "".join(...) == text
        return [p + "\n" for p in parts[:-1]] + ([parts[-1]] if parts[-1] else [])
    lines = [p[:-1] if p.endswith("\r") else p for p in parts]
    return lines[:-1] if lines and lines[-1] == "" else lines


def _text_lines(paths: list[str], encoding_errors: str) -> Iterator[dict]:
    """One row per line of each text file, read lazily; lines end at "\\n" only (see ``split_lines``)."""
    for path in paths:
        with open(path, encoding="utf-8", errors=encoding_errors, newline="\n") as f:
            for line in f:
                yield {"text": line.removesuffix("\n").removesuffix("\r")}


def _feedback_rows(paths: list[str]) -> Iterator[dict]:
    from lit_llm.feedback import feedback_texts

    for path in paths:
        for text in feedback_texts(path):
            yield {"text": text}


MIXING = ("all_exhausted_without_replacement", "all_exhausted", "first_exhausted")


def iter_documents(sources: list[Source], data_dir: Optional[str] = None, seed: int = 1337,
                   encoding_errors: str = "strict", mixing: str = MIXING[0]) -> Iterator[str]:
    """Documents of all sources, mixed by weight, in a deterministic order for a given seed."""
    import datasets

    streams = [load_source(s, data_dir, encoding_errors) for s in sources]
    if len(streams) == 1:
        mixed = streams[0]
    else:
        total = sum(s.weight for s in sources)
        mixed = datasets.interleave_datasets(
            streams, probabilities=[s.weight / total for s in sources], seed=seed, stopping_strategy=mixing
        )
    for row in mixed:
        text = row["text"]
        if text is None:
            continue
        yield text
