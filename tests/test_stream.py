"""Token shards that stream (data.stream, litdata): ranks read disjoint chunks that cover the train split once,
each copying only its own chunks; a damaged chunk is one error naming it; chunks in an object store (an S3
endpoint of moto's) stream as a folder's do. The resumed run is in
tests/test_training.py::test_a_run_on_streaming_shards_resumes_at_the_next_unseen_batch."""

import json

import numpy as np
import pytest

pytest.importorskip("litdata", reason="data.stream needs the data extra: pip install -e '.[data]'")

import lit_llm.data.stream as stream  # noqa: E402
from lit_llm.data import PretrainDataModule  # noqa: E402
from lit_llm.data.tokens import open_split  # noqa: E402
from tests.helpers.paths import SHAKESPEARE  # noqa: E402

BLOCK = 32


@pytest.fixture(scope="module")
def streamed(tmp_path_factory):
    """Tiny Shakespeare's first 20,000 characters, its train split as chunks of 8 blocks; (data module, folder)."""
    corpus = tmp_path_factory.mktemp("corpus") / "small.txt"
    corpus.write_text(SHAKESPEARE.read_text(encoding="utf-8")[:20_000], encoding="utf-8")
    blocks, stream.CHUNK_BLOCKS = stream.CHUNK_BLOCKS, 8
    try:
        dm = PretrainDataModule(corpus=str(corpus), block_size=BLOCK, batch_size=4, stream=True,
                                cache_dir=str(tmp_path_factory.mktemp("tokens")))
        dm.prepare_data()
    finally:
        stream.CHUNK_BLOCKS = blocks
    return dm, dm.stream_source


def test_two_ranks_read_disjoint_chunks_that_cover_the_split_once(streamed, tmp_path, monkeypatch):
    """Each of 2 ranks (on 2 nodes, as litdata's distributed env says) iterates one epoch through its own node
    cache, reading a shared folder: the blocks of both are the split's whole blocks, each at most once, and each
    node copied only the chunks its rank read."""
    from litdata.utilities.env import _DistributedEnv

    dm, folder = streamed
    tokens = open_split(dm.token_dir, "train")
    whole = len(tokens) // (BLOCK + 1)
    expected = sorted(tokens[i * (BLOCK + 1):(i + 1) * (BLOCK + 1)].tobytes() for i in range(whole))
    seen, cached = [], []
    for rank in (0, 1):
        monkeypatch.setattr(_DistributedEnv, "detect", classmethod(lambda cls, r=rank: cls(2, r, 2)))
        loader = stream.stream_loader(folder, BLOCK, 1, seed=3, num_workers=0, cache_dir=str(tmp_path / f"node{rank}"))
        blocks = [b[0].numpy().astype(tokens.dtype).tobytes() for b in loader]
        seen.append(blocks)
        cached.append({p.name for p in (tmp_path / f"node{rank}").rglob("chunk-*.bin")})
    chunks = {c["filename"] for c in json.loads((stream.Path(folder) / "index.json").read_text())["chunks"]}
    assert len(chunks) >= 8 and cached[0] | cached[1] == chunks
    # each node copied its half of the chunks, and the one chunk whose blocks the two ranks split between them
    assert all(len(c) <= len(chunks) // 2 + 1 for c in cached) and len(cached[0] & cached[1]) <= 1
    assert not set(seen[0]) & set(seen[1])
    # litdata evens out the ranks (drop_last): at most a few blocks per rank are left out of an epoch
    both = sorted(seen[0] + seen[1])
    assert set(both) <= set(expected) and len(both) == len(set(both)) >= len(expected) - 2 * 8


def test_a_truncated_altered_or_missing_chunk_is_one_error_naming_it(streamed, tmp_path):
    import shutil

    _, folder = streamed
    copy = tmp_path / "copy"
    shutil.copytree(folder, copy)
    first = sorted(copy.glob("chunk-*.bin"))[0]
    whole = first.read_bytes()
    first.write_bytes(whole[:-5] + bytes([whole[-5] ^ 1]) + whole[-4:])  # one bit flipped, same size
    with pytest.raises(ValueError, match=f"The stream chunk {first} does not match its sha256 in .*lit_llm.json"):
        stream.stream_loader(str(copy), BLOCK, 4, seed=1, num_workers=0)
    first.write_bytes(whole)
    stream.stream_loader(str(copy), BLOCK, 4, seed=1, num_workers=0)  # restored: it loads
    first.write_bytes(whole[:-4])
    with pytest.raises(ValueError, match=f"The stream chunk {first} has .* bytes where index.json says .*delete"):
        stream.stream_loader(str(copy), BLOCK, 4, seed=1, num_workers=0)
    first.unlink()
    with pytest.raises(ValueError, match=f"The stream chunk {first} is missing"):
        stream.stream_loader(str(copy), BLOCK, 4, seed=1, num_workers=0)
    (copy / "index.json").unlink()
    with pytest.raises(ValueError, match="holds no finished stream"):
        stream.stream_loader(str(copy), BLOCK, 4, seed=1, num_workers=0)


def test_the_chunks_hold_the_train_splits_whole_blocks_in_order(streamed):
    dm, folder = streamed
    tokens = open_split(dm.token_dir, "train")
    index = json.loads((stream.Path(folder) / "index.json").read_text())
    assert index["config"]["chunk_size"] == 8 * (BLOCK + 1)
    def items(chunk):  # litdata's chunk: the item count, the items' byte offsets, then the items
        raw = np.fromfile(stream.Path(folder) / chunk["filename"], dtype=np.int32)
        offsets = raw[1:raw[0] + 2] // 4
        return raw[offsets[0]:offsets[-1]]

    data = np.concatenate([items(c) for c in sorted(index["chunks"],
                                                     key=lambda c: int(c["filename"].split("-")[-1][:-4]))])
    whole = len(tokens) // (BLOCK + 1) * (BLOCK + 1)
    assert np.array_equal(data, tokens[:whole].astype(np.int32))


def test_a_stream_dir_of_other_blocks_is_refused_not_reused(streamed):
    """A finished stream is reused only for the tokens and block size it was cut from (its lit_llm.json)."""
    dm, folder = streamed
    origin = json.loads((stream.Path(folder) / stream.ORIGIN).read_text())
    assert origin["block_size"] == BLOCK and origin["token_folder"] == dm.token_dir.name
    assert stream.write_stream(dm.token_dir, BLOCK, folder, chunk_blocks=8) == folder  # the same: reused
    with pytest.raises(ValueError, match=f"data.stream_dir {folder} holds chunks of other tokens or blocks"):
        stream.write_stream(dm.token_dir, BLOCK + 1, folder, chunk_blocks=8)


@pytest.mark.parametrize("locked", [False, True], ids=["litdata", "lit_llm"])
def test_the_download_thread_deleting_a_chunk_while_the_reader_closes_it_is_no_error(streamed, tmp_path, locked):
    """litdata's download thread deletes a chunk (``delete``) while the training thread unmaps it (``close``), the
    interleaving held open at the one step where it breaks: litdata's own loader fails with ``KeyError`` (the CI
    failure of the two-rank test above, once), ``lit_llm.data.stream_tokens.TokensLoader`` runs each call whole."""
    import pickle
    import shutil
    import threading

    import litdata

    from lit_llm.data import stream_tokens

    _, folder = streamed
    chunk = json.loads((stream.Path(folder) / "index.json").read_text())["chunks"][0]
    path = str(tmp_path / chunk["filename"])
    shutil.copy(stream.Path(folder) / chunk["filename"], path)
    closing, deleted = threading.Event(), threading.Event()

    class Maps(dict):  # close() looks up the chunk's map, closes it, then deletes the key: hold it between
        def __getitem__(self, key):
            if threading.current_thread() is threading.main_thread() and not closing.is_set():
                closing.set()
                deleted.wait(timeout=1)  # the download thread runs here, unless a lock holds it back
            return super().__getitem__(key)

    loader = (stream_tokens if locked else litdata).TokensLoader(block_size=BLOCK + 1)
    loader._chunks, loader._mmaps = [chunk], Maps()
    loader._load_chunk(0, path)  # the training thread read chunk 0 and moves past it
    downloader = threading.Thread(target=lambda: (closing.wait(5), loader.delete(0, path), deleted.set()))
    downloader.start()
    try:
        if locked:
            loader.close(0)
        else:
            with pytest.raises(KeyError):
                loader.close(0)
    finally:
        downloader.join(5)
    assert deleted.is_set() and not stream.Path(path).exists() and 0 not in loader._mmaps
    if locked:  # and it pickles into a worker process with a lock of its own
        copy = pickle.loads(pickle.dumps(loader))
        assert copy._lock is not loader._lock and copy._lock.acquire(blocking=False)


@pytest.fixture
def object_store(monkeypatch):
    """An S3 endpoint on this machine: moto's threaded server, a real HTTP server speaking the S3 protocol, with a
    bucket ``corpus``. boto3 and obstore (litdata's two S3 clients) find it through AWS_ENDPOINT_URL. litdata
    gives obstore fixed client options that refuse plain http, which only a local endpoint uses, so the test adds
    allow_http to them."""
    moto_server = pytest.importorskip("moto.server", reason="the object store test needs moto: pip install -e '.[dev]'")
    import boto3
    import litdata.streaming.downloader as downloader

    server = moto_server.ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    for name, value in {"AWS_ENDPOINT_URL": f"http://{host}:{port}", "AWS_ACCESS_KEY_ID": "test",
                        "AWS_SECRET_ACCESS_KEY": "test", "AWS_DEFAULT_REGION": "us-east-1"}.items():
        monkeypatch.setenv(name, value)
    monkeypatch.setattr(downloader, "_OBSTORE_CLIENT_OPTIONS", {**downloader._OBSTORE_CLIENT_OPTIONS, "allow_http": True})
    try:
        s3 = boto3.client("s3")
        s3.create_bucket(Bucket="corpus")
        yield s3
    finally:
        server.stop()


@pytest.mark.slow  # litdata.optimize starts a worker process
def test_chunks_written_to_an_object_store_stream_back_as_the_folders_do(streamed, object_store, tmp_path,
                                                                          monkeypatch):
    """data.stream_dir: s3://...: the train split's chunks are written to the bucket (litdata.optimize), with the
    lit_llm.json that says what they were cut from; a rank streams them through its node cache in the very order
    the local folder gives for the same seed; a second write finds them finished and leaves them; chunks of other
    blocks at that URL are refused."""
    dm, folder = streamed
    url = "s3://corpus/shakespeare"
    assert stream.write_stream(dm.token_dir, BLOCK, url, chunk_blocks=8) == url
    keys = {o["Key"] for o in object_store.list_objects_v2(Bucket="corpus")["Contents"]}
    chunks = {c["filename"] for c in json.loads((stream.Path(folder) / "index.json").read_text())["chunks"]}
    assert keys == {f"shakespeare/{name}" for name in chunks | {"index.json", stream.ORIGIN}}
    remote = [b[0].numpy().tobytes() for b in stream.stream_loader(url, BLOCK, 1, seed=3, num_workers=0,
                                                                    cache_dir=str(tmp_path / "node0"))]
    local = [b[0].numpy().tobytes() for b in stream.stream_loader(folder, BLOCK, 1, seed=3, num_workers=0)]
    assert remote == local and len(local) > 100
    assert {p.name for p in (tmp_path / "node0").rglob("chunk-*.bin")} == chunks  # copied down, one rank: all
    import litdata

    def optimize(*args, **kwargs):
        raise AssertionError("a finished stream at the URL was written again")

    monkeypatch.setattr(litdata, "optimize", optimize)
    assert stream.write_stream(dm.token_dir, BLOCK, url, chunk_blocks=8) == url  # finished: not written again
    with pytest.raises(ValueError, match=f"data.stream_dir {url} holds chunks of other tokens or blocks"):
        stream.write_stream(dm.token_dir, BLOCK + 1, url, chunk_blocks=8)
