"""Fashion-MNIST import: IDX parsing, `prepare` from --src and from a download, and bad input.

The "official" files here are a few random images the test writes; downloads come from a local HTTP server on
127.0.0.1 serving them, with the Debian location pointed at an empty folder and the cache under tmp_path.
"""
from __future__ import annotations

import functools
import gzip
import hashlib
import http.server
import threading
from pathlib import Path

import numpy as np
import pytest

from conftest import idx_bytes, write_fashion_mnist_src, write_gz
from resnet_repro.data.decode.cpu import decode
from resnet_repro.data.shards import records
from resnet_repro.data.shards.reader import RecordReader
from resnet_repro.data.shards.staging import PrepareError
from resnet_repro.data.sources import download, fashion_mnist
from resnet_repro.data.sources.download import SourceError
from resnet_repro.data.sources.fashion_mnist import prepare_fashion_mnist

IMAGES, LABELS = "train-images-idx3-ubyte.gz", "train-labels-idx1-ubyte.gz"
T_IMAGES, T_LABELS = "t10k-images-idx3-ubyte.gz", "t10k-labels-idx1-ubyte.gz"


def assert_nothing_complete(out: Path) -> None:
    """No output that looks like a prepared data set: neither <out> nor a manifest anywhere near it."""
    assert not out.exists()
    assert not list(out.parent.glob(f"{out.name}*/{records.MANIFEST}"))


def read_split(out: Path, split: str) -> tuple[np.ndarray, np.ndarray, list[str]]:
    reader = RecordReader(out, split)
    order = np.argsort(reader.keys)  # keys are <prefix>_<index in the IDX file>
    images = np.stack([decode(reader[int(i)][1], 1)[:, :, 0] for i in order])
    return images, reader.labels[order], [str(k) for k in reader.keys[order]]


# --- IDX parsing -------------------------------------------------------------------------------------------

def test_parse_idx_round_trip_and_errors(tmp_path):
    arr = np.arange(2 * 3 * 4, dtype=np.uint8).reshape(2, 3, 4)
    p = tmp_path / "x.idx"
    np.testing.assert_array_equal(fashion_mnist.parse_idx(idx_bytes(arr), p, 3), arr)
    with pytest.raises(SourceError, match="x.idx.*wrong magic"):
        fashion_mnist.parse_idx(idx_bytes(arr), p, 1)
    with pytest.raises(SourceError, match="x.idx.*wrong magic"):
        fashion_mnist.parse_idx(b"", p, 3)
    with pytest.raises(SourceError, match="x.idx"):
        fashion_mnist.parse_idx(idx_bytes(arr)[:-1], p, 3)  # payload one byte short
    with pytest.raises(SourceError, match="x.idx.*header"):
        fashion_mnist.parse_idx(idx_bytes(arr)[:9], p, 3)


# --- prepare from --src --------------------------------------------------------------------------------------

def test_prepare_from_src_stores_every_image_losslessly(tmp_path):
    made = write_fashion_mnist_src(tmp_path / "src", n_train=12, n_test=5)
    out = prepare_fashion_mnist(tmp_path / "fm", src=tmp_path / "src", train_shards=3, val_shards=2)
    manifest = records.load_manifest(out)
    counts = {k: v["count"] for k, v in manifest["splits"].items()}
    assert counts == {"train": 11, "val": 1, "test": 5}  # a twelfth of the training images held out as val
    assert len(manifest["splits"]["train"]["shards"]) == 3 and len(manifest["splits"]["test"]["shards"]) == 2
    assert manifest["image"] == {"height": 28, "width": 28, "channels": 1}
    assert manifest["encoding"]["lossless"] and manifest["encoding"]["ext"] == "png"
    assert manifest["source_is_official"] is False  # our random images are not the real data set
    assert manifest["evaluation_split"] == "test" and manifest["selection_split"] == "val"
    train_counts = np.bincount(made[LABELS][0], minlength=10)
    assert (np.array(manifest["splits"]["train"]["counts_per_class"] + [0] * 10)[:10]
            + np.array(manifest["holdout"]["counts_per_class"])).tolist() == train_counts.tolist()
    # train + val together are the official training file, bit-exact (PNG); test is the t10k file.
    tr, va = read_split(out, "train"), read_split(out, "val")
    keys = tr[2] + va[2]
    order = np.argsort(keys)
    np.testing.assert_array_equal(np.concatenate([tr[0], va[0]])[order], made[IMAGES][0])
    np.testing.assert_array_equal(np.concatenate([tr[1], va[1]])[order], made[LABELS][0])
    assert sorted(keys) == [f"train_{i:05d}" for i in range(12)]
    assert [int(k.split("_")[1]) for k in va[2]] == manifest["holdout"]["indices"]
    images, labels, keys = read_split(out, "test")
    np.testing.assert_array_equal(images, made[T_IMAGES][0])
    np.testing.assert_array_equal(labels, made[T_LABELS][0])
    assert keys == [f"test_{i:05d}" for i in range(5)]
    assert not (tmp_path / "fm.partial").exists()


def test_prepare_cli_and_rerun_keeps_a_finished_folder(tmp_path, cli):
    write_fashion_mnist_src(tmp_path / "src")
    out = tmp_path / "fm"
    code, stdout, _ = cli("prepare", "fashion-mnist", "--out", out, "--src", tmp_path / "src", "--seed", "3")
    assert code == 0 and str(out) in stdout
    manifest = records.load_manifest(out)
    assert manifest["splits"]["train"]["shuffle_seed"] == 3
    before = (out / records.MANIFEST).stat().st_mtime_ns
    code, _, err = cli("prepare", "fashion-mnist", "--out", out, "--src", tmp_path / "src", "--seed", "3")
    assert code == 0 and "already prepared" in err
    code, _, err = cli("prepare", "fashion-mnist", "--out", out, "--src", tmp_path / "src")  # another shuffle
    assert code == 2 and "already holds another data set" in err and "shuffle seeds" in err
    assert (out / records.MANIFEST).stat().st_mtime_ns == before
    code, _, _ = cli("prepare", "fashion-mnist", "--out", out, "--src", tmp_path / "src", "--force")
    assert code == 0 and len(RecordReader(out, "train")) == 11


# --- bad input: one clear error naming the file, nothing that looks complete, a clean re-run -----------------

def _missing(src: Path) -> Path:
    (src / T_LABELS).unlink()
    return src / T_LABELS


def _truncated(src: Path) -> Path:
    data = (src / IMAGES).read_bytes()
    (src / IMAGES).write_bytes(data[: len(data) // 2])
    return src / IMAGES


def _wrong_magic(src: Path) -> Path:
    arr = np.zeros((12, 28, 28), np.uint8)
    write_gz(src / IMAGES, idx_bytes(arr, magic_dims=1))  # a labels-file magic on an images file
    return src / IMAGES


def _not_gzip(src: Path) -> Path:
    (src / LABELS).write_bytes(b"this is not gzip data at all")
    return src / LABELS


def _count_mismatch(src: Path) -> Path:
    write_gz(src / T_LABELS, idx_bytes(np.zeros(4, np.uint8)))  # 5 test images, 4 labels
    return src / T_IMAGES


def _payload_short(src: Path) -> Path:
    raw = gzip.decompress((src / T_IMAGES).read_bytes())
    write_gz(src / T_IMAGES, raw[:-28])  # header says 5 images, payload holds 4 and a bit
    return src / T_IMAGES


@pytest.mark.parametrize("damage", [_missing, _truncated, _wrong_magic, _not_gzip, _count_mismatch, _payload_short])
def test_bad_input_is_one_clear_error_and_a_rerun_after_fixing_succeeds(tmp_path, cli, damage):
    src, out = tmp_path / "src", tmp_path / "fm"
    write_fashion_mnist_src(src)
    bad = damage(src)
    with pytest.raises(SourceError, match=str(bad)):
        prepare_fashion_mnist(out, src=src)
    assert_nothing_complete(out)
    code, _, err = cli("prepare", "fashion-mnist", "--out", out, "--src", src)
    assert code == 2 and str(bad) in err and err.count("\n") == 1  # one line, no traceback
    assert_nothing_complete(out)
    write_fashion_mnist_src(src)  # fix the input
    prepare_fashion_mnist(out, src=src)
    assert len(RecordReader(out, "train")) == 11 and len(RecordReader(out, "test")) == 5


def test_label_out_of_range_is_an_error(tmp_path):
    src, out = tmp_path / "src", tmp_path / "fm"
    write_fashion_mnist_src(src)
    write_gz(src / LABELS, idx_bytes(np.full(12, 10, np.uint8)))
    with pytest.raises(PrepareError, match="label 10"):
        prepare_fashion_mnist(out, src=src)
    assert_nothing_complete(out)


def test_interrupted_prepare_leaves_nothing_complete_and_a_rerun_finishes(tmp_path, monkeypatch):
    src, out = tmp_path / "src", tmp_path / "fm"
    write_fashion_mnist_src(src)

    def crash(*a, **k):
        raise KeyboardInterrupt  # as if the process were stopped before the manifest was written

    monkeypatch.setattr(records, "write_manifest", crash)
    with pytest.raises(KeyboardInterrupt):
        prepare_fashion_mnist(out, src=src)
    assert_nothing_complete(out)
    assert (tmp_path / "fm.partial").is_dir()  # staging is left, clearly marked as partial
    monkeypatch.undo()
    prepare_fashion_mnist(out, src=src)
    assert len(RecordReader(out, "test")) == 5 and not (tmp_path / "fm.partial").exists()


# --- download from a local HTTP server -------------------------------------------------------------------------

class _Handler(http.server.SimpleHTTPRequestHandler):
    requests: list[str] = []

    def do_GET(self):
        type(self).requests.append(self.path)
        super().do_GET()

    def log_message(self, *args):  # keep pytest output clean
        pass


@pytest.fixture
def server(tmp_path, monkeypatch):
    """An HTTP server on 127.0.0.1 serving tmp_path/www; yields (base_url, www folder, request log)."""
    for var in ("no_proxy", "NO_PROXY"):  # a machine-wide http_proxy must not catch requests to ourselves
        monkeypatch.setenv(var, "127.0.0.1,localhost")
    www = tmp_path / "www"
    www.mkdir()
    handler = type("Handler", (_Handler,), {"requests": []})
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), functools.partial(handler, directory=str(www)))
    httpd.timeout = 5
    thread = threading.Thread(target=httpd.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{httpd.server_address[1]}/", www, handler.requests
    finally:
        httpd.shutdown()
        httpd.server_close()
        thread.join(timeout=5)


@pytest.fixture
def no_system_copy(tmp_path, monkeypatch):
    """No Debian package and an empty cache under tmp_path, so the download path is taken."""
    monkeypatch.setattr(fashion_mnist, "DEBIAN_FASHION_MNIST", tmp_path / "no-debian-package")
    monkeypatch.setenv("RESNET_REPRO_CACHE", str(tmp_path / "cache"))
    return tmp_path / "cache" / "fashion-mnist"


def test_download_verifies_and_caches(server, no_system_copy, tmp_path):
    base_url, www, requests = server
    made = write_fashion_mnist_src(www)
    files = {name: sha for name, (_, sha) in made.items()}
    found = fashion_mnist.locate_fashion_mnist(None, base_url=base_url, files=files)
    assert found == {name: no_system_copy / name for name in files}
    for name in files:
        assert found[name].read_bytes() == (www / name).read_bytes()
    assert sorted(requests) == sorted(f"/{n}" for n in files)
    assert sorted(p.name for p in no_system_copy.iterdir()) == sorted(files)  # no temp files left
    # A second call uses the verified cache; a damaged cached file is fetched again.
    fashion_mnist.locate_fashion_mnist(None, base_url=base_url, files=files)
    assert len(requests) == 4
    (no_system_copy / LABELS).write_bytes(b"garbage")
    fashion_mnist.locate_fashion_mnist(None, base_url=base_url, files=files)
    assert requests[4:] == [f"/{LABELS}"]
    assert (no_system_copy / LABELS).read_bytes() == (www / LABELS).read_bytes()


def test_download_checksum_mismatch_is_an_error_and_leaves_no_file(server, no_system_copy):
    base_url, www, _ = server
    made = write_fashion_mnist_src(www)
    files = {name: sha for name, (_, sha) in made.items()}
    files[IMAGES] = hashlib.sha256(b"something else").hexdigest()
    with pytest.raises(SourceError, match=f"{IMAGES}.*SHA-256"):
        fashion_mnist.locate_fashion_mnist(None, base_url=base_url, files=files)
    assert not (no_system_copy / IMAGES).exists()
    assert not [p for p in no_system_copy.iterdir() if p.name.startswith(IMAGES)]  # no .part either


def test_download_of_a_missing_file_names_the_url(server, tmp_path):
    base_url, _, _ = server
    dest = tmp_path / "cache" / "nothing.gz"
    with pytest.raises(SourceError, match="nothing.gz.*download failed"):
        download.download(base_url + "nothing.gz", dest, "0" * 64, timeout=5)
    assert not list(dest.parent.iterdir())


def test_prepare_downloads_when_there_is_no_src_and_no_system_copy(server, no_system_copy, tmp_path, monkeypatch):
    base_url, www, requests = server
    made = write_fashion_mnist_src(www, n_train=8, n_test=4)
    for name, (_, sha) in made.items():
        monkeypatch.setitem(fashion_mnist.FASHION_MNIST_FILES, name, sha)  # our files play the official ones
    out = prepare_fashion_mnist(tmp_path / "fm", base_url=base_url, val_size=0)  # every training image in train
    manifest = records.load_manifest(out)
    assert manifest["source_is_official"] is True
    assert manifest["source"][IMAGES] == str(no_system_copy / IMAGES)
    assert set(manifest["splits"]) == {"train", "test"}  # --val-size 0: no val split
    images, labels, _ = read_split(out, "train")
    np.testing.assert_array_equal(images, made[IMAGES][0])
    np.testing.assert_array_equal(labels, made[LABELS][0])
    assert len(requests) == 4


def test_system_copy_is_used_before_any_download(tmp_path, monkeypatch):
    system = tmp_path / "usr-share-datasets-fashion-mnist"
    made = write_fashion_mnist_src(system)
    monkeypatch.setattr(fashion_mnist, "DEBIAN_FASHION_MNIST", system)
    monkeypatch.setenv("RESNET_REPRO_CACHE", str(tmp_path / "cache"))
    # An unreachable base URL: any download attempt would fail the test.
    found = fashion_mnist.locate_fashion_mnist(None, base_url="http://127.0.0.1:9/",
                                         files={n: sha for n, (_, sha) in made.items()})
    assert found == {name: system / name for name in made}
    assert not (tmp_path / "cache").exists()
