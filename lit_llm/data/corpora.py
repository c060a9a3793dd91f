"""Named corpora and where to find them.

A named corpus is looked up, in order, in ``data_dir`` (argument), ``$LIT_LLM_DATA_DIR``, the
``shared/data`` folder beside this checkout, and ``~/.cache/lit_llm/data``. If it is in none of them it is
downloaded into the last one from its public URL and its MD5 checksum is verified.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

from lit_llm.io import atomic_path

DATA_DIR_ENV = "LIT_LLM_DATA_DIR"
_CHECKOUT_SHARED = Path(__file__).resolve().parents[3] / "shared" / "data"
_CACHE_DATA = Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "lit_llm" / "data"


@dataclass(frozen=True)
class NamedCorpus:
    relpath: str  # path below a data directory
    url: str
    md5: str


CORPORA: dict[str, NamedCorpus] = {
    "tinyshakespeare": NamedCorpus(
        relpath="tinyshakespeare/input.txt",
        url="https://raw.githubusercontent.com/karpathy/char-rnn/master/data/tinyshakespeare/input.txt",
        md5="6fb458f1232090904fb40fe944165e91",
    ),
}


def data_dirs(data_dir: Optional[str] = None) -> list[Path]:
    """Directories searched for named corpora, in order."""
    dirs = [Path(data_dir)] if data_dir else []
    if os.environ.get(DATA_DIR_ENV):
        dirs.append(Path(os.environ[DATA_DIR_ENV]))
    dirs += [_CHECKOUT_SHARED, _CACHE_DATA]
    return dirs


def md5sum(path: Path) -> str:
    h = hashlib.md5()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def resolve_corpus(corpus: str, data_dir: Optional[str] = None, download: bool = True) -> Path:
    """Return the local text file for ``corpus``: a named corpus (see ``CORPORA``) or a path."""
    if corpus in CORPORA:
        spec = CORPORA[corpus]
        searched = data_dirs(data_dir)
        for d in searched:
            if (d / spec.relpath).is_file():
                return d / spec.relpath
        if download:
            return _download(corpus, spec, _CACHE_DATA / spec.relpath, searched)
        raise FileNotFoundError(_not_found(corpus, spec, searched))
    path = Path(corpus).expanduser()
    if not path.is_file():
        raise FileNotFoundError(
            f"Corpus {corpus!r} is neither a named corpus ({', '.join(CORPORA)}) nor an existing file."
            " Pass --data.corpus with a path to a UTF-8 text file or a named corpus."
        )
    return path


def _not_found(name: str, spec: NamedCorpus, searched: list[Path]) -> str:
    return (
        f"Named corpus {name!r} ({spec.relpath}) was not found in: {', '.join(map(str, searched))}."
        f" Set {DATA_DIR_ENV} or --data.data_dir to a folder that holds {spec.relpath},"
        f" or allow the download from {spec.url}."
    )


DOWNLOAD_TIMEOUT_S = 60.0


def _download(name: str, spec: NamedCorpus, dest: Path, searched: list[Path]) -> Path:
    with atomic_path(dest) as tmp:  # a failed or killed download never leaves a file that looks valid
        try:
            # a timeout on the connection and on each read: a stalled server fails the download instead of hanging
            with urllib.request.urlopen(spec.url, timeout=DOWNLOAD_TIMEOUT_S) as response, open(tmp, "wb") as f:
                shutil.copyfileobj(response, f, 1 << 20)
        except OSError as e:  # URLError and socket timeouts are OSErrors
            raise FileNotFoundError(_not_found(name, spec, searched) + f" The download failed: {e}") from e
        digest = md5sum(tmp)
        if digest != spec.md5:
            raise RuntimeError(f"Download of {spec.url} has MD5 {digest}, expected {spec.md5}; try again later.")
    return dest
