"""Shards read from a URL (data/shards/remote.py): file:// and an S3 server the tests start on 127.0.0.1 (moto).

The optional packages (fsspec; s3fs and moto[server] for S3) are in the `test` extra; without them these tests
skip, saying which package is missing. Nothing here leaves 127.0.0.1.
"""
from __future__ import annotations

import contextlib
import hashlib
import io
import json
import logging
import os
import shutil
import socket
import subprocess
import sys

import numpy as np
import pytest

from conftest import REPO
from resnet_repro.data.shards import records, remote
from resnet_repro.data.shards.reader import RecordReader
from resnet_repro.data.shards.records import RecordError

RECIPE = REPO / "configs" / "fashion_mnist" / "resnet20.yaml"


def test_the_local_path_imports_neither_fsspec_nor_s3fs(texture_data):
    script = ("import sys; from resnet_repro.training import loop; from resnet_repro.commands import evaluate; "
              "import resnet_repro.evaluate; "
              "from resnet_repro.data.shards import remote; r = remote.open_reader(sys.argv[1], 'train'); r[0]; "
              "assert type(r).__name__ == 'RecordReader', type(r); "
              "print(sorted(m for m in sys.modules if m.split('.')[0] in ('fsspec', 's3fs', 'botocore')))")
    done = subprocess.run([sys.executable, "-c", script, str(texture_data)], capture_output=True, text=True,
                          timeout=300)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "[]"


def test_verify_of_a_url_says_to_verify_the_local_folder(cli):
    code, _, err = cli("verify", "s3://bucket/shards")
    assert code == 2 and "verify checks a local folder" in err and len(err.strip().splitlines()) == 1


def test_a_url_without_fsspec_says_what_to_install(monkeypatch):
    monkeypatch.setitem(sys.modules, "fsspec", None)
    monkeypatch.setitem(sys.modules, "fsspec.core", None)
    with pytest.raises(RecordError, match=r"s3://bucket/shards: .*needs fsspec.*pip install 'resnet-repro\[s3\]'"):
        remote.open_reader("s3://bucket/shards", "train")


@pytest.fixture
def copy(texture_data, tmp_path):
    pytest.importorskip("fsspec", reason="needs fsspec (in the `s3` and `test` extras) to read shards from URLs")
    shutil.copytree(texture_data, tmp_path / "shards")
    return tmp_path / "shards"


def test_file_url_reads_every_sample_by_range_and_checks_as_locally(copy, monkeypatch):
    local, url = RecordReader(copy, "val"), remote.open_reader(f"file://{copy}", "val")
    assert isinstance(url, remote.RemoteRecordReader) and len(url) == len(local)
    ranges = []
    fs = url._fs_here()
    real = fs.cat_file
    monkeypatch.setattr(fs, "cat_file", lambda path, start=None, end=None, **kw: ranges.append((start, end))
                        or real(path, start=start, end=end, **kw))
    for i in range(len(local)):
        assert url[i] == local[i]
    assert [e - s for s, e in ranges] == local.sizes.tolist()  # one sample per request, never a whole shard
    # Damage the copy: an index rewritten (same length), then a shard cut short; each named at start-up.
    entry = records.load_manifest(copy)["splits"]["val"]["shards"][1]
    idx = copy / entry["index"]
    good = idx.read_bytes()
    idx.write_bytes(good[:-1] + bytes([good[-1] ^ 1]))
    with pytest.raises(RecordError, match=f"index file://{copy}/{entry['index']}: SHA-256 differs"):
        remote.open_reader(f"file://{copy}", "val")
    idx.write_bytes(good)
    tar = copy / entry["name"]
    tar.write_bytes(tar.read_bytes()[:-512])
    with pytest.raises(RecordError, match=f"shard file://{copy}/{entry['name']} is .* bytes, manifest says"):
        remote.open_reader(f"file://{copy}", "val")


def test_cache_dir_fetches_verified_shards_and_refetches_a_damaged_one(copy, tmp_path):
    local = RecordReader(copy, "train")
    cache = tmp_path / "cache"
    reader = remote.open_reader(f"file://{copy}", "train", str(cache))
    assert [reader[i] for i in range(len(reader))] == [local[i] for i in range(len(local))]
    entry = reader.shards[0]
    cached = next(cache.rglob(entry["name"]))
    assert hashlib.sha256(cached.read_bytes()).hexdigest() == entry["sha256"]
    # Damage the cached copy in place (same size); a new reader must fetch it again, not serve the bad bytes.
    i = int(np.flatnonzero(local.shard_ids == 0)[0])
    data = bytearray(cached.read_bytes())
    data[int(local.offsets[i])] ^= 0xFF
    cached.write_bytes(bytes(data))
    again = remote.open_reader(f"file://{copy}", "train", str(cache))
    assert again[i] == local[i]
    assert hashlib.sha256(cached.read_bytes()).hexdigest() == entry["sha256"]
    # A shard at the URL that no longer matches the manifest is refused, not cached.
    cached.unlink()
    tar = copy / entry["name"]
    data = bytearray(tar.read_bytes())
    data[int(local.offsets[i])] ^= 0xFF
    tar.write_bytes(bytes(data))
    with pytest.raises(RecordError, match=f"shard file://{copy}/{entry['name']}: SHA-256 differs"):
        remote.open_reader(f"file://{copy}", "train", str(cache))[i]
    assert not cached.exists() and not list(cache.rglob("*.part"))


# --- An S3 server on 127.0.0.1 ------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def s3(texture_data):
    """s3://shards/textures: the texture data set uploaded to a moto server on a free loopback port."""
    pytest.importorskip("s3fs", reason="needs s3fs (in the `s3` and `test` extras) to read s3:// URLs")
    server = pytest.importorskip("moto.server",
                                 reason="needs moto[server] (in the `test` extra) to run the loopback S3 server")
    logging.getLogger("werkzeug").setLevel(logging.ERROR)
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    moto = server.ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    moto.start()
    env = {"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing", "AWS_DEFAULT_REGION": "us-east-1",
           "AWS_ENDPOINT_URL": f"http://127.0.0.1:{port}"}  # the usual boto environment; forked workers inherit it
    saved = {k: os.environ.get(k) for k in env}
    os.environ.update(env)
    try:
        import fsspec

        fs = fsspec.filesystem("s3", skip_instance_cache=True)
        fs.mkdir("shards")
        fs.put(f"{texture_data}/", "shards/textures", recursive=True)
        yield "s3://shards/textures"
    finally:
        moto.stop()
        for k, v in saved.items():
            os.environ.pop(k) if v is None else os.environ.__setitem__(k, v)


def _train(cli, data, out, *extra):
    args = ["train", "--config", RECIPE, "--out", out]
    for item in (f"data.path={data}", "data.batch_size=32", "data.eval_batch_size=32", "data.mean=[0.5]",
                 "data.std=[0.25]", "train.epochs=1", "train.precision=fp32", "train.precise_bn_batches=2",
                 "train.eval_every=1", "optim.lr=0.2", "optim.lr_batch=128", *extra):
        args += ["--set", item]
    code, _, err = cli(*args)
    assert code == 0, err
    return json.loads((out / "results.json").read_text())


def _evaluate(cli, run, data) -> dict:
    code, out, err = cli("evaluate", "--checkpoint", run / "final.pt", "--data", data, "--workers", "0", "--json")
    assert code == 0, err
    return json.loads(out.strip().splitlines()[-1])["results"][0]


def test_train_and_evaluate_from_s3_match_the_local_copy(s3, texture_data, tmp_path, cli):
    from safetensors.torch import load_file

    runs = {"local": (texture_data, "data.workers=0"), "s3": (s3, "data.workers=2"),
            # two forked loader workers each (own connections after the fork); with the cache they share it
            "s3_cached": (s3, "data.workers=2", f"data.cache_dir={tmp_path / 'cache'}")}
    results, weights, scored = {}, {}, {}
    for name, (data, *extra) in runs.items():
        with contextlib.redirect_stdout(io.StringIO()):
            results[name] = _train(cli, data, tmp_path / name, *extra)
        weights[name] = load_file(str(tmp_path / name / "model.safetensors"))
        scored[name] = _evaluate(cli, tmp_path / name, data)
    for name in ("s3", "s3_cached"):
        assert results[name]["top1_err"] == results["local"]["top1_err"]
        assert scored[name]["top1_err"] == scored["local"]["top1_err"] and scored[name]["count"] == 64
        assert scored[name]["loss"] == scored["local"]["loss"]
        assert weights[name].keys() == weights["local"].keys()
        for k, v in weights["local"].items():
            assert weights[name][k].equal(v), (name, k)
    cached = sorted(p.name for p in (tmp_path / "cache").rglob("*.tar"))
    assert cached == sorted(p.name for p in texture_data.glob("*.tar"))  # train and val shards, fetched whole
