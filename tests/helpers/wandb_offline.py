"""Read back what an offline W&B run wrote, for tests.

wandb 0.31 ships no reader for offline ``run-*.wandb`` files, so this follows the file's documented
framing (the LevelDB log format: a 7-byte ``:W&B`` header, then records in 32 KiB blocks, each with a
7-byte header of CRC32, length and a FULL/FIRST/MIDDLE/LAST type) and decodes each record with the
protobuf classes wandb itself ships (``wandb.proto.wandb_internal_pb2.Record``).
"""

import json
import struct
from pathlib import Path

from wandb.proto import wandb_internal_pb2 as pb

BLOCK, HEADER = 32 * 1024, 7
FULL, FIRST, MIDDLE, LAST = 1, 2, 3, 4


def records(path: Path):
    data = Path(path).read_bytes()
    assert data[:4] == b":W&B", f"{path} is not a W&B datastore file"
    pos, pending = HEADER, b""
    while pos + HEADER <= len(data):
        left_in_block = BLOCK - pos % BLOCK
        if left_in_block < HEADER:  # block trailer padding
            pos += left_in_block
            continue
        _crc, length, kind = struct.unpack("<IHB", data[pos : pos + HEADER])
        chunk = data[pos + HEADER : pos + HEADER + length]
        pos += HEADER + length
        if kind == 0 and length == 0:
            continue
        pending = chunk if kind in (FULL, FIRST) else pending + chunk
        if kind in (FULL, LAST):
            rec = pb.Record()
            rec.ParseFromString(pending)
            yield rec


def history(path: Path) -> list[dict]:
    """Every history row of the run, as {key: value}."""
    rows = []
    for rec in records(path):
        if rec.WhichOneof("record_type") == "history":
            rows.append({(i.key or "/".join(i.nested_key)): json.loads(i.value_json) for i in rec.history.item})
    return rows


def config(path: Path) -> dict:
    out = {}
    for rec in records(path):
        if rec.WhichOneof("record_type") == "config":
            for item in rec.config.update:
                out[item.key or "/".join(item.nested_key)] = json.loads(item.value_json)
    return out
