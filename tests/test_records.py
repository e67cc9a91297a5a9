"""Record shards: exact round trip, WebDataset/tar compatibility, byte-for-byte determinism, clear errors."""
from __future__ import annotations

import hashlib
import json
import shutil
import subprocess
import tarfile
from pathlib import Path

import numpy as np
import pytest

from resnet_repro.data.shards import records
from resnet_repro.data.shards.reader import RecordReader
from resnet_repro.data.shards.records import RecordError, Sample


def make_samples(n: int = 37, seed: int = 0) -> list[Sample]:
    """Samples of random bytes; lengths include 0 and the tar block edges (511, 512, 513)."""
    rng = np.random.default_rng(seed)
    lengths = [0, 1, 511, 512, 513, 1024] + rng.integers(1, 3000, n - 6).tolist()
    return [Sample(f"s{i:04d}", rng.integers(0, 256, ln, dtype=np.uint8).tobytes(), "png" if i % 3 else "jpg",
                   int(rng.integers(0, 5))) for i, ln in enumerate(lengths)]


def write_dataset(root: Path, samples: list[Sample], num_shards: int = 4, seed: int = 7, split: str = "train") -> dict:
    root.mkdir(parents=True, exist_ok=True)
    entry = records.write_split(root, split, samples, num_shards, seed)
    records.write_manifest(root, {"format": records.FORMAT, "classes": [str(c) for c in range(5)],
                                  "image": {"height": 1, "width": 1, "channels": 1}, "splits": {split: entry}})
    return entry


def test_round_trip_every_sample_exactly_once(tmp_path):
    samples = make_samples()
    entry = write_dataset(tmp_path, samples)
    assert len(entry["shards"]) == 4
    reader = RecordReader(tmp_path, "train")
    assert len(reader) == len(samples)
    got = [reader[i] for i in range(len(reader))]
    assert sorted(k for k, _, _ in got) == sorted(s.key for s in samples)  # each key once
    by_key = {s.key: s for s in samples}
    for key, data, label in got:
        assert data == by_key[key].data and label == by_key[key].label
    assert reader.labels.tolist() == [label for _, _, label in got]
    # Shuffled across shards at write time: not in input order, and every shard holds part of the data.
    assert [k for k, _, _ in got] != [s.key for s in samples]
    assert len(set(reader.shard_ids.tolist())) == 4
    reader.close()


def test_tar_tf_and_tarfile_read_the_same_members(tmp_path):
    samples = make_samples()
    entry = write_dataset(tmp_path, samples)
    by_key = {s.key: s for s in samples}
    for shard in entry["shards"]:
        path = tmp_path / shard["name"]
        with tarfile.open(path) as tar:
            members = tar.getmembers()
            names = [m.name for m in members]
            contents = {m.name: tar.extractfile(m).read() for m in members}
        keys = [n.split(".")[0] for n in names[::2]]
        # WebDataset layout: <key>.<ext> then <key>.cls, consecutive, for each sample.
        assert names == [n for k in keys for n in (f"{k}.{by_key[k].ext}", f"{k}.cls")]
        assert len(keys) == shard["count"]
        for k in keys:
            assert contents[f"{k}.{by_key[k].ext}"] == by_key[k].data
            assert contents[f"{k}.cls"] == str(by_key[k].label).encode()
        if shutil.which("tar"):
            listed = subprocess.run(["tar", "tf", str(path)], capture_output=True, text=True, check=True).stdout
            assert listed.split() == names


def test_webdataset_reads_the_shards(tmp_path):
    wds = pytest.importorskip("webdataset")
    samples = make_samples(12)
    entry = write_dataset(tmp_path, samples, num_shards=2)
    urls = [str(tmp_path / s["name"]) for s in entry["shards"]]
    seen = {}
    for sample in wds.WebDataset(urls, shardshuffle=False):
        ext = next(k for k in sample if k in ("png", "jpg"))
        seen[sample["__key__"]] = (sample[ext], int(sample["cls"]))
    assert seen == {s.key: (s.data, s.label) for s in samples}


def test_same_inputs_and_seed_give_identical_shards(tmp_path):
    samples = make_samples()
    a = write_dataset(tmp_path / "a", samples, seed=3)
    b = write_dataset(tmp_path / "b", samples, seed=3)
    c = write_dataset(tmp_path / "c", samples, seed=4)
    assert [s["sha256"] for s in a["shards"]] == [s["sha256"] for s in b["shards"]]
    assert [s["index_sha256"] for s in a["shards"]] == [s["index_sha256"] for s in b["shards"]]
    for s in a["shards"]:  # the manifest's checksums are those of the files on disk
        assert hashlib.sha256((tmp_path / "a" / s["name"]).read_bytes()).hexdigest() == s["sha256"]
        assert (tmp_path / "a" / s["name"]).read_bytes() == (tmp_path / "b" / s["name"]).read_bytes()
    assert [s["sha256"] for s in a["shards"]] != [s["sha256"] for s in c["shards"]]  # the seed does matter


def test_manifest_counts(tmp_path):
    samples = make_samples()
    write_dataset(tmp_path, samples, num_shards=3, seed=5)
    manifest = records.load_manifest(tmp_path)
    split = manifest["splits"]["train"]
    assert split["count"] == len(samples) == sum(s["count"] for s in split["shards"])
    assert split["counts_per_class"] == np.bincount([s.label for s in samples]).tolist()
    assert split["shuffle_seed"] == 5
    for s in split["shards"]:
        assert s["bytes"] == (tmp_path / s["name"]).stat().st_size
    # No temp files left behind once everything is written.
    assert not list(tmp_path.glob("*.tmp"))


def test_more_shards_than_samples_writes_no_empty_shards(tmp_path):
    entry = write_dataset(tmp_path, make_samples(7), num_shards=16)
    assert len(entry["shards"]) == 7 and all(s["count"] == 1 for s in entry["shards"])
    assert len(RecordReader(tmp_path, "train")) == 7


def test_truncated_shard_is_an_error_at_open(tmp_path):
    entry = write_dataset(tmp_path, make_samples())
    victim = tmp_path / entry["shards"][2]["name"]
    victim.write_bytes(victim.read_bytes()[:-700])
    with pytest.raises(RecordError, match=victim.name) as e:
        RecordReader(tmp_path, "train")
    assert "truncated" in str(e.value)


def test_missing_shard_or_index_is_an_error_at_open(tmp_path):
    entry = write_dataset(tmp_path, make_samples())
    shard = tmp_path / entry["shards"][1]["name"]
    shard.rename(shard.with_suffix(".bak"))
    with pytest.raises(RecordError, match=f"{shard.name}.*missing"):
        RecordReader(tmp_path, "train")
    shard.with_suffix(".bak").rename(shard)
    index = tmp_path / entry["shards"][3]["index"]
    index.unlink()
    with pytest.raises(RecordError, match=index.name):
        RecordReader(tmp_path, "train")


def test_manifest_problems_name_the_manifest(tmp_path):
    with pytest.raises(RecordError, match="manifest"):
        RecordReader(tmp_path, "train")
    write_dataset(tmp_path, make_samples(8))
    with pytest.raises(RecordError, match="'val'"):
        RecordReader(tmp_path, "val")
    manifest = tmp_path / records.MANIFEST
    manifest.write_text(json.dumps({"format": "something-else/9"}))
    with pytest.raises(RecordError, match="format"):
        RecordReader(tmp_path, "train")
    manifest.write_text("{not json")
    with pytest.raises(RecordError, match=str(manifest)):
        RecordReader(tmp_path, "train")


def test_keys_with_dots_or_slashes_are_refused(tmp_path):
    for bad in ("a.b", "a/b"):
        with pytest.raises(RecordError, match="key"):
            records.write_shard(tmp_path / "x-00000.tar", [Sample(bad, b"12", "png", 0)])
