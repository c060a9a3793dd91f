
import numpy as np
import pytest
import torch

from lit_llm.data import PretrainDataModule
from lit_llm.data.corpora import resolve_corpus
from lit_llm.data.pretrain import RandomBlocks, ResumableBlockSampler
from lit_llm.data.tokenizer import decode, encode, train_char_tokenizer
from lit_llm.data.tokens import read_manifest
from tests.helpers.paths import SHAKESPEARE


def test_named_corpus_is_found_offline_in_shared_data():
    path = resolve_corpus("tinyshakespeare", download=False)
    assert path.resolve() == SHAKESPEARE.resolve()


def test_named_corpus_respects_data_dir_env(tmp_path, monkeypatch):
    (tmp_path / "tinyshakespeare").mkdir()
    (tmp_path / "tinyshakespeare" / "input.txt").write_text("hello")
    monkeypatch.setenv("LIT_LLM_DATA_DIR", str(tmp_path))
    assert resolve_corpus("tinyshakespeare", download=False) == tmp_path / "tinyshakespeare" / "input.txt"


def test_missing_corpus_path_names_the_path_and_the_fix(tmp_path):
    with pytest.raises(FileNotFoundError, match=r"nope\.txt.*--data.corpus"):
        PretrainDataModule(corpus=str(tmp_path / "nope.txt"))


def test_non_utf8_and_empty_corpus_are_refused(tmp_path):
    bad = tmp_path / "latin1.txt"
    bad.write_bytes("caf\xe9 au lait\n".encode("latin-1"))
    with pytest.raises(ValueError, match="not valid UTF-8.*iconv"):
        PretrainDataModule(corpus=str(bad), block_size=4).prepare_data()
    empty = tmp_path / "empty.txt"
    empty.write_text("  \n")
    with pytest.raises(ValueError, match="empty"):
        PretrainDataModule(corpus=str(empty), block_size=4).prepare_data()
    assert not any((tmp_path / "cache").glob("*/manifest.json"))  # nothing that looks valid was left


def test_block_size_larger_than_split_is_refused(small_corpus):
    dm = PretrainDataModule(corpus=str(small_corpus), block_size=5000)  # val split holds 2,000 tokens
    with pytest.raises(ValueError, match=r"val split.*fewer than block_size \+ 1.*--data.block_size"):
        dm.setup("fit")


def test_char_tokenizer_round_trips_and_refuses_unknown_characters():
    text = "First Citizen:\nBefore we proceed, hear me speak.\n\n"
    tok = train_char_tokenizer(text)
    ids = encode(tok, text)
    assert len(ids) == len(text) and decode(tok, ids) == text
    assert tok.get_vocab_size() == len(set(text))
    with pytest.raises(ValueError, match=r"does not know: \['Z'\]"):
        encode(tok, "Zeta")


def test_token_files_are_memmapped_with_a_manifest_and_reused(small_corpus, tmp_path):
    dm = PretrainDataModule(corpus=str(small_corpus), block_size=32)
    dm.prepare_data()
    manifest = read_manifest(dm.token_dir)
    assert manifest["dtype"] == "uint16"
    assert manifest["num_tokens"]["train"] == 18_000 and manifest["num_tokens"]["val"] == 2_000
    dm.setup("fit")
    assert isinstance(dm.splits["train"], np.memmap)
    text = small_corpus.read_text()
    assert decode(dm.tokenizer, dm.splits["val"][:50].tolist()) == text[18_000:18_050]
    mtime = (dm.token_dir / "train.bin").stat().st_mtime_ns
    again = PretrainDataModule(corpus=str(small_corpus), block_size=32)
    assert again.token_dir == dm.token_dir
    again.prepare_data()
    assert (dm.token_dir / "train.bin").stat().st_mtime_ns == mtime  # reused, not rewritten
    other = PretrainDataModule(corpus=str(small_corpus), block_size=32, val_fraction=0.2)
    assert other.token_dir != dm.token_dir  # a changed split is a different cache entry
    assert not [p for p in dm.token_dir.parent.iterdir() if ".tmp" in p.name]


def test_random_blocks_are_deterministic_and_independent_of_process_count():
    tokens = np.arange(1000, dtype=np.uint16)
    ds = RandomBlocks(tokens, block_size=8, seed=7)
    one = list(ResumableBlockSampler(ds))
    assert one == list(ResumableBlockSampler(RandomBlocks(tokens, 8, 7)))
    rank0 = list(ResumableBlockSampler(ds, num_replicas=2, rank=0))
    rank1 = list(ResumableBlockSampler(ds, num_replicas=2, rank=1))
    batch = 4  # step s on one process with batch 8 == step s on two processes with batch 4 each
    for s in range(len(rank0) // batch):
        assert sorted(rank0[s * batch : (s + 1) * batch] + rank1[s * batch : (s + 1) * batch]) == one[s * 8 : (s + 1) * 8]
    block = ds[5]
    assert block.shape == (9,) and block.dtype == torch.int64
    assert torch.equal(block, torch.arange(block[0], block[0] + 9))  # contiguous tokens
    assert not torch.equal(RandomBlocks(tokens, 8, 8)[5], block)  # another seed, other blocks


def test_sampler_skip_resumes_mid_epoch_then_starts_the_next_epoch_at_zero():
    ds = RandomBlocks(np.arange(100, dtype=np.uint16), block_size=10, seed=0)  # 10 samples per epoch
    full = list(ResumableBlockSampler(ds))
    sampler = ResumableBlockSampler(ds, skip=4)
    assert list(sampler) == full[4:]
    sampler.set_epoch(1)
    assert list(sampler) == [10 + i for i in range(10)]


# a review converted from Windows-1252 holds U+0085 where it had "…"; U+2028 and form feeds also occur in scraped text
ODD = "a twist\u0085 then\u2028 more \x0c and\x0b the end"


def test_line_readers_split_records_at_newlines_only(tmp_path):
    from lit_llm.data.labelled import read_labelled
    from lit_llm.data.sources import Source, iter_documents, split_lines
    from lit_llm.data.tokenizer import TokenizerSpec, encode, train_tokenizer

    labelled = tmp_path / "reviews.txt"
    labelled.write_text(f"1 {ODD}\r\n0 plain\n", encoding="utf-8")
    texts, labels = read_labelled(str(labelled))
    assert texts == [ODD, "plain"] and labels == [1, 0]  # one record each, labels intact

    lines = tmp_path / "lines.txt"
    lines.write_text(f"{ODD}\nsecond\r\n", encoding="utf-8")
    docs = list(iter_documents([Source(path=str(lines), sample_by="line")]))
    assert docs == [ODD, "second"]

    assert split_lines(f"{ODD}\r\nx\n") == [ODD, "x"] and "".join(split_lines(ODD + "\nx", keepends=True)) == ODD + "\nx"
    tok = train_tokenizer(TokenizerSpec(), [ODD + "\nsecond"])  # character level
    assert encode(tok, ODD + "\n") == tok.encode(ODD + "\n", add_special_tokens=False).ids


def test_a_stalled_download_times_out_and_a_good_one_is_checked(tmp_path, monkeypatch):
    """The corpus download against local HTTP servers: one that never answers, and one that serves the file."""
    import hashlib
    import http.server
    import socket
    import threading

    import lit_llm.data.corpora as corpora

    stall = socket.socket()
    stall.bind(("127.0.0.1", 0))
    stall.listen(1)  # accepts the connection, never answers
    monkeypatch.setattr(corpora, "DOWNLOAD_TIMEOUT_S", 0.5)
    spec = corpora.NamedCorpus("x/input.txt", f"http://127.0.0.1:{stall.getsockname()[1]}/input.txt", "0" * 32)
    dest = tmp_path / "x" / "input.txt"
    with pytest.raises(FileNotFoundError, match="The download failed: .*timed out"):
        corpora._download("x", spec, dest, [])
    assert list((tmp_path / "x").iterdir()) == []  # nothing half-written left
    stall.close()

    body = b"to be, or not to be\n"
    (tmp_path / "www").mkdir()
    (tmp_path / "www" / "input.txt").write_bytes(body)

    def handler(*a, **k):
        return http.server.SimpleHTTPRequestHandler(*a, directory=str(tmp_path / "www"), **k)

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        url = f"http://127.0.0.1:{server.server_address[1]}/input.txt"
        with pytest.raises(RuntimeError, match="has MD5 .* expected"):
            corpora._download("x", corpora.NamedCorpus("x/input.txt", url, "0" * 32), dest, [])
        good = corpora.NamedCorpus("x/input.txt", url, hashlib.md5(body).hexdigest())
        assert corpora._download("x", good, dest, []).read_bytes() == body
    finally:
        server.shutdown()


@pytest.mark.parametrize("kind", ["char", "bpe", "wordpiece", "unigram"])
def test_prepare_encodes_with_encode_batch_fast_and_gets_the_ids_of_encode_batch(kind):
    """prepare's tokenize step calls encode_batch_fast (no character offsets, about 15% faster here): for every
    tokenizer kind it gives the ids encode_batch gives, non-ASCII text and empty lines included."""
    from lit_llm.data.tokenizer import TokenizerSpec, train_tokenizer

    texts = SHAKESPEARE.read_text(encoding="utf-8")[:60_000].split("\n\n") + ["café naïve — 東京", "", "\n"]
    tok = train_tokenizer(TokenizerSpec(kind=kind, vocab_size=300), texts)
    fast = tok.encode_batch_fast(texts, add_special_tokens=False)
    assert [e.ids for e in fast] == [e.ids for e in tok.encode_batch(texts, add_special_tokens=False)]
