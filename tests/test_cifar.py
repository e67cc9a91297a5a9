"""`prepare cifar10|cifar100` on small archives the tests write in the official python-pickle layout."""
from __future__ import annotations

import dataclasses
import functools
import hashlib
import http.server
import io
import json
import pickle
import tarfile
import threading

import numpy as np
import pytest

from resnet_repro.data.decode.cpu import decode
from resnet_repro.data.shards.reader import RecordReader
from resnet_repro.data.sources import cifar
from resnet_repro.data.sources.download import SourceError
from resnet_repro.data.sources.holdout import holdout

NAMES10 = ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"]


def made_data(n_train=60, n_test=20, classes=10, seed=0):
    rng = np.random.default_rng(seed)
    train = (rng.integers(0, 256, (n_train, 32, 32, 3), dtype=np.uint8), rng.integers(0, classes, n_train))
    test = (rng.integers(0, 256, (n_test, 32, 32, 3), dtype=np.uint8), rng.integers(0, classes, n_test))
    return train, test


@pytest.fixture
def archive10(tmp_path):
    train, test = made_data()
    path = cifar.write_archive(tmp_path / "cifar-10-python.tar.gz", cifar.SPECS["cifar10"], train, test, NAMES10)
    return path, train, test


def test_layout_matches_the_official_archive(archive10):
    """The made archive has the official member names and row layout (R plane, G plane, B plane)."""
    path, train, _ = archive10
    with tarfile.open(path) as tar:
        names = sorted(tar.getnames())
        batch = pickle.load(tar.extractfile("cifar-10-batches-py/data_batch_1"), encoding="bytes")
    assert names == sorted([f"cifar-10-batches-py/data_batch_{i}" for i in range(1, 6)]
                           + ["cifar-10-batches-py/test_batch", "cifar-10-batches-py/batches.meta"])
    first = batch[b"data"][0]
    np.testing.assert_array_equal(first[:1024].reshape(32, 32), train[0][0, :, :, 0])  # red plane first
    np.testing.assert_array_equal(first[2048:].reshape(32, 32), train[0][0, :, :, 2])


def test_prepare_splits_pixels_and_manifest(tmp_path, archive10):
    path, train, test = archive10
    out = cifar.prepare_cifar("cifar10", tmp_path / "c10", src=path, seed=7, val_size=6)
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["dataset"] == "cifar10" and manifest["class_names"] == NAMES10
    assert manifest["image"] == {"height": 32, "width": 32, "channels": 3}
    assert manifest["source_is_official"] is False  # a made archive is not the real one, and says so
    assert manifest["holdout"]["seed"] == 7 and manifest["evaluation_split"] == "test"
    tr, va, te = (RecordReader(out, s) for s in ("train", "val", "test"))
    assert (len(tr), len(va), len(te)) == (54, 6, 20)
    # The val images are the shared hold-out's (holdout.py: stratified by class, seeded), recorded in the
    # manifest; keys keep the archive index.
    val_idx = sorted(int(k.split("_")[1]) for k in va.keys)
    expected, _ = holdout(train[1], 10, 7, size=6)
    assert val_idx == expected.tolist() == manifest["holdout"]["indices"]
    assert np.bincount(va.labels, minlength=10).tolist() == manifest["holdout"]["counts_per_class"]
    train_idx = {int(k.split("_")[1]) for k in tr.keys}
    assert train_idx.isdisjoint(val_idx) and len(train_idx | set(val_idx)) == 60
    # Lossless: every decoded image (RGB) equals the archive's pixels, with its label.
    for reader, (images, labels) in ((tr, train), (va, train), (te, test)):
        for i in range(len(reader)):
            key, data, label = reader[i]
            j = int(key.split("_")[1])
            np.testing.assert_array_equal(decode(data, 3), images[j])
            assert label == labels[j]


def test_same_seed_same_shards(tmp_path, archive10):
    path = archive10[0]
    a = cifar.prepare_cifar("cifar10", tmp_path / "a", src=path, val_size=6)
    b = cifar.prepare_cifar("cifar10", tmp_path / "b", src=path, val_size=6)
    ma, mb = (json.loads((x / "manifest.json").read_text()) for x in (a, b))
    assert [s["sha256"] for s in ma["splits"]["train"]["shards"]] == [s["sha256"] for s in mb["splits"]["train"]["shards"]]


def test_cifar100_fine_labels(tmp_path):
    train, test = made_data(n_train=30, n_test=10, classes=100, seed=1)
    names = [f"class{i}" for i in range(100)]
    path = cifar.write_archive(tmp_path / "cifar-100-python.tar.gz", cifar.SPECS["cifar100"], train, test, names)
    out = cifar.prepare_cifar("cifar100", tmp_path / "c100", src=tmp_path, val_size=5)  # --src as a folder
    manifest = json.loads((out / "manifest.json").read_text())
    assert len(manifest["classes"]) == 100 and manifest["class_names"][3] == "class3"
    te = RecordReader(out, "test")
    labels = {k: l for k, l in zip(te.keys, te.labels)}
    assert [labels[f"test_{i:05d}"] for i in range(10)] == test[1].tolist()
    assert path.is_file()


class _Quiet(http.server.SimpleHTTPRequestHandler):
    def log_message(self, *args):
        pass


@pytest.fixture
def served(tmp_path):
    """An HTTP server on 127.0.0.1 serving tmp_path/www; yields (base URL, folder)."""
    www = tmp_path / "www"
    www.mkdir()
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), functools.partial(_Quiet, directory=str(www)))
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}/", www
    server.shutdown()
    server.server_close()


def test_download_checks_sha256(tmp_path, served, monkeypatch):
    base, www = served
    train, test = made_data()
    served_path = cifar.write_archive(www / "cifar-10-python.tar.gz", cifar.SPECS["cifar10"], train, test, NAMES10)
    digest = hashlib.sha256(served_path.read_bytes()).hexdigest()
    monkeypatch.setenv("RESNET_REPRO_CACHE", str(tmp_path / "cache"))
    # The real archive's checksum: the served file does not match it, so nothing is kept.
    with pytest.raises(SourceError, match="SHA-256"):
        cifar.prepare_cifar("cifar10", tmp_path / "bad", base_url=base, val_size=6)
    assert not any((tmp_path / "cache").iterdir()) and not (tmp_path / "bad").exists()
    # With the served file's checksum pinned, the download is kept in the cache and prepared.
    spec = dataclasses.replace(cifar.SPECS["cifar10"], sha256=digest)
    out = cifar.prepare_cifar("cifar10", tmp_path / "ok", base_url=base, val_size=6, spec=spec)
    assert (tmp_path / "cache" / "cifar-10-python.tar.gz").is_file()
    assert len(RecordReader(out, "train")) == 54


def test_errors_name_the_file(tmp_path, archive10):
    path = archive10[0]
    truncated = tmp_path / "trunc.tar.gz"
    truncated.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    with pytest.raises(SourceError, match="trunc.tar.gz"):
        cifar.prepare_cifar("cifar10", tmp_path / "o1", src=truncated)
    with pytest.raises(SourceError, match="file not found"):
        cifar.prepare_cifar("cifar10", tmp_path / "o2", src=tmp_path / "nope.tar.gz")
    assert not (tmp_path / "o1").exists() and not (tmp_path / "o1.partial").exists()


def test_pickle_cannot_run_code(tmp_path):
    """A batch whose pickle calls anything but numpy's array constructors is refused before it runs."""
    class Evil:
        def __reduce__(self):
            return (print, ("pwned",))

    spec = cifar.SPECS["cifar10"]
    path = tmp_path / "evil.tar.gz"
    with tarfile.open(path, "w:gz") as tar:
        data = pickle.dumps({b"data": Evil()}, protocol=2)
        info = tarfile.TarInfo(f"{spec.folder}/data_batch_1")
        info.size = len(data)
        tar.addfile(info, io.BytesIO(data))
    with pytest.raises(SourceError, match="print"):
        cifar.prepare_cifar("cifar10", tmp_path / "o", src=path)


def test_cli_prepare_cifar10(tmp_path, archive10, cli):
    code, out, err = cli("prepare", "cifar10", "--src", archive10[0], "--out", tmp_path / "c", "--val-size", "10")
    assert code == 0, err
    assert len(RecordReader(tmp_path / "c", "val")) == 10
    code, _, err = cli("prepare", "cifar10", "--src", tmp_path / "missing.tar.gz", "--out", tmp_path / "d")
    assert code == 2 and "missing.tar.gz" in err
