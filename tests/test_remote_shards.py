"""Shards read from a URL (data/shards/remote.py): file:// and an S3 server the tests start on 127.0.0.1 (moto).

The optional packages (fsspec; s3fs and moto[server] for S3) are in the `test` extra; without them these tests
skip, saying which package is missing. Nothing here leaves 127.0.0.1.
"""
from __future__ import annotations

import contextlib
import functools
import hashlib
import http.server
import io
import json
import logging
import os
import shutil
import socket
import subprocess
import sys
import threading

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


# --- Servers and stores that fail: one line naming the URL and why, never a backend's traceback ---------------------

class _Handler(http.server.SimpleHTTPRequestHandler):
    """Python 3.11's http.server: it ignores Range (every GET is the whole file, 200), like some real servers.
    ``server.missing``: names answered 404 to GET (HEAD still finds them, so start-up passes); ``server.cut``:
    names whose body stops halfway, the connection closed."""

    def log_message(self, *args):
        pass

    def do_GET(self):
        name = self.path.rsplit("/", 1)[-1]
        if name in self.server.missing:
            return self.send_error(404)
        if name in self.server.cut:
            data = (self.server.root / name).read_bytes()
            self.send_response(200)
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data[:len(data) // 2])
            self.close_connection = True
            return None
        return super().do_GET()


@pytest.fixture
def http_server(copy):
    """An http:// URL of the data set, served by http.server on a free loopback port."""
    pytest.importorskip("aiohttp", reason="needs aiohttp (with fsspec, for http:// URLs)")
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), functools.partial(_Handler, directory=str(copy)))
    server.root, server.missing, server.cut = copy, set(), set()
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield server, f"http://127.0.0.1:{server.server_port}"
    finally:
        server.shutdown()
        server.server_close()


def test_a_server_that_ignores_range_is_named_and_the_cache_works_with_it(http_server, copy, tmp_path,
                                                                          monkeypatch):
    _, url = http_server
    local = RecordReader(copy, "train")
    with pytest.raises(RecordError, match=r"shard train-00000\.tar key .*: the server ignored the HTTP Range "
                                          r"request .*set data\.cache_dir to download whole shards"):
        remote.open_reader(url, "train")[int(np.flatnonzero(local.shard_ids == 0)[0])]
    # Shards larger than a fetch block (the block made small here, as an ImageNet shard is larger than 8 MiB) are
    # still fetched whole into the cache: one streamed GET, no range request.
    monkeypatch.setattr(remote, "CHUNK", 1024)
    cached = remote.open_reader(url, "train", str(tmp_path / "cache"))
    assert [cached[i] for i in range(len(cached))] == [local[i] for i in range(len(local))]


def test_a_shard_the_server_cannot_send_is_named_and_leaves_no_partial_file(http_server, copy, tmp_path):
    server, url = http_server
    local = RecordReader(copy, "train")
    i = int(np.flatnonzero(local.shard_ids == 1)[0])
    cache = tmp_path / "cache"
    readers = remote.open_reader(url, "train"), remote.open_reader(url, "train", str(cache))
    server.missing.add("train-00001.tar")  # found at start-up (HEAD), then 404
    with pytest.raises(RecordError, match=rf"^{url} shard train-00001\.tar key .*: cannot be read: not found "
                                          r"\(HTTP 404\)$"):
        readers[0][i]
    with pytest.raises(RecordError, match=rf"^shard {url}/train-00001\.tar: fetching it into the cache .* failed "
                                          r"\(not found \(HTTP 404\)\)$"):
        readers[1][i]
    server.missing.clear()
    server.cut.add("train-00001.tar")  # the connection drops halfway through the body
    with pytest.raises(RecordError, match=rf"^shard {url}/train-00001\.tar: fetching it into the cache .* failed"):
        readers[1][i]
    assert not list(cache.rglob("*.part")) and not list(cache.rglob("train-00001.tar"))
    server.cut.clear()
    assert readers[1][i] == local[i]  # and fetched once the server sends it


class EndpointConnectionError(Exception):
    """botocore's class of that name (not imported: the backends are optional), as s3fs raises it."""


class ClientResponseError(Exception):
    """aiohttp's class of that name: an HTTP status and its reason."""

    def __init__(self, status: int, message: str):
        super().__init__(f"{status}, message={message!r}")
        self.status, self.message = status, message


@pytest.mark.parametrize("error, why", [
    (EndpointConnectionError('Could not connect to the endpoint URL: "http://127.0.0.1:1/bucket"\nmore'),
     r"cannot connect \(EndpointConnectionError: Could not connect to the endpoint URL: \"http://127\.0\.0\.1:1/"
     r"bucket\"\)$"),
    (ClientResponseError(503, "Service Unavailable"), r"HTTP 503 Service Unavailable$"),
    (PermissionError("Access Denied"), r"PermissionError: Access Denied$")])
def test_a_backend_error_becomes_one_line_naming_the_url(copy, tmp_path, monkeypatch, error, why):
    url = f"file://{copy}"
    fs = remote._filesystem(url)[0]
    reader, cached = remote.open_reader(url, "val"), remote.open_reader(url, "val", str(tmp_path / "cache"))

    def fail(*args, **kwargs):
        raise error

    monkeypatch.setattr(fs, "cat_file", fail)
    monkeypatch.setattr(fs, "open", fail)
    with pytest.raises(RecordError, match=rf"^{url}/manifest\.json: {why}"):
        remote.open_reader(url, "val")
    with pytest.raises(RecordError, match=rf"^{url} shard val-00000\.tar key .*: cannot be read: {why}"):
        reader[0]
    with pytest.raises(RecordError, match=rf"^shard {url}/val-00000\.tar: fetching it into the cache .* failed"):
        cached[0]
    assert not list((tmp_path / "cache").rglob("*.part"))


def test_ctrl_c_during_a_fetch_is_not_swallowed_and_leaves_no_partial_file(copy, tmp_path, monkeypatch):
    url = f"file://{copy}"
    fs = remote._filesystem(url)[0]
    reader, cached = remote.open_reader(url, "val"), remote.open_reader(url, "val", str(tmp_path / "cache"))
    real = fs.open

    class Stopped(io.RawIOBase):
        def __init__(self, *args, **kwargs):
            self.src, self.calls = real(*args, **kwargs), 0

        def read(self, n=-1):
            self.calls += 1
            if self.calls > 1:
                raise KeyboardInterrupt
            return self.src.read(16)

    monkeypatch.setattr(fs, "open", lambda *a, **kw: Stopped(*a, **kw))
    with pytest.raises(KeyboardInterrupt):
        cached[0]
    assert not list((tmp_path / "cache").rglob("*.part")) and not list((tmp_path / "cache").rglob("*.tar"))
    monkeypatch.setattr(fs, "cat_file", lambda *a, **kw: (_ for _ in ()).throw(KeyboardInterrupt()))
    with pytest.raises(KeyboardInterrupt):
        reader[0]


def test_s3_without_credentials_says_so(s3, monkeypatch, tmp_path):
    import s3fs

    for name in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN", "AWS_PROFILE",
                 "AWS_CONTAINER_CREDENTIALS_RELATIVE_URI", "AWS_CONTAINER_CREDENTIALS_FULL_URI"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", str(tmp_path / "none"))
    monkeypatch.setenv("AWS_CONFIG_FILE", str(tmp_path / "none"))
    monkeypatch.setenv("AWS_EC2_METADATA_DISABLED", "true")  # no instance-metadata lookup (it leaves 127.0.0.1)
    s3fs.S3FileSystem.clear_instance_cache()  # one made with the fixture's credentials would be used again
    try:
        with pytest.raises(RecordError, match=rf"^{s3}/manifest\.json: no credentials \(NoCredentialsError: "):
            remote.open_reader(s3, "val")
    finally:
        s3fs.S3FileSystem.clear_instance_cache()
