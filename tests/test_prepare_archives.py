"""`prepare imagenet --train-tar/--val-tar/--devkit`: official archives read in place (sources/imagenet_archives.py).

Each test makes a tiny ImageNet tree (test_prepare_imagenet.make_imagenet: devkit layout, with a CMYK JPEG and a
PNG named .JPEG among the images), packs it as the official archives are packed (an outer train tar of per-class
inner tars in unsorted order, a flat val tar, the devkit .tar.gz with ILSVRC2012_devkit_t12/data/...), and
compares what prepare makes from the archives with what it makes from the extracted folders.
"""
from __future__ import annotations

import hashlib
import io
import json
import tarfile
from pathlib import Path

import pytest

from conftest import assert_one_clear_line, kill_after_shards
from resnet_repro.data.shards import records
from resnet_repro.data.shards.prepare import prepare_images
from resnet_repro.data.sources import imagenet, imagenet_archives
from resnet_repro.data.sources.download import SourceError
from resnet_repro.data.sources.imagenet_archives import discover_archives
from test_prepare_imagenet import SHARDS, WNIDS, cmyk_jpeg, make_imagenet, png_bytes, write_devkit

pytest.importorskip("scipy.io", reason="the devkit's meta.mat is written and read with scipy")


def _tar_bytes(files: list[tuple[str, bytes]]) -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.GNU_FORMAT) as tar:
        for name, data in files:
            info = tarfile.TarInfo(name)
            info.size, info.mtime = len(data), 1_300_000_000
            tar.addfile(info, io.BytesIO(data))
    return buf.getvalue()


def make_archives(root: Path) -> dict[str, Path]:
    """The extracted tree under root/src and the three official archives made from it under root/archives."""
    src = root / "src"
    make_imagenet(src, "devkit", {"n01440764_cmyk": cmyk_jpeg(7), "n02102040_png": png_bytes(8)})
    (src / "val" / "ILSVRC2012_val_00000003.JPEG").write_bytes(png_bytes(9))  # a PNG named .JPEG in val too
    out = root / "archives"
    out.mkdir()
    # Per-class tars in the outer one, neither in sorted order (class order must come from the names).
    inner = [(f"{w}.tar", _tar_bytes([(p.name, p.read_bytes()) for p in sorted((src / "train" / w).iterdir())][::-1]))
             for w in WNIDS]
    paths = {"train": out / "ILSVRC2012_img_train.tar", "val": out / "ILSVRC2012_img_val.tar",
             "devkit": out / "ILSVRC2012_devkit_t12.tar.gz"}
    paths["train"].write_bytes(_tar_bytes(inner))
    paths["val"].write_bytes(_tar_bytes([(p.name, p.read_bytes()) for p in sorted((src / "val").iterdir())]))
    data = src / "ILSVRC2012_devkit_t12" / "data"
    with tarfile.open(paths["devkit"], "w:gz") as tar:
        tar.add(data.parent, arcname="ILSVRC2012_devkit_t12")  # the real structure: <devkit>/data/meta.mat, ...
        readme = b"devkit readme"
        info = tarfile.TarInfo("ILSVRC2012_devkit_t12/readme.txt")
        info.size = len(readme)
        tar.addfile(info, io.BytesIO(readme))
    return paths


def shard_files(folder: Path) -> dict[str, str]:
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(folder.iterdir())
            if p.suffix in (".tar", ".idx")}


def from_archives(paths: dict[str, Path], out: Path, workers: int = 1, **kw) -> Path:
    source = discover_archives(paths["train"], paths["val"], paths["devkit"], workers=workers)
    return prepare_images(source, out, SHARDS, workers=1, progress=False, **kw)


def test_archives_give_the_shards_of_the_extracted_folders(tmp_path, monkeypatch):
    paths = make_archives(tmp_path)
    folders = prepare_images(imagenet.discover_imagenet(tmp_path / "src"), tmp_path / "from_folders", SHARDS,
                             seed=5, workers=1, progress=False)
    monkeypatch.setattr(imagenet_archives, "INNER_PER_PROCESS", 1)  # index the inner tars in 2 worker processes
    archives = from_archives(paths, tmp_path / "from_archives", workers=2, seed=5)
    assert shard_files(archives) == shard_files(folders)
    assert len(shard_files(archives)) == 2 * (SHARDS["train"] + SHARDS["val"])
    a, f = records.load_manifest(archives), records.load_manifest(folders)
    for k in ("classes", "class_names", "splits"):
        assert a[k] == f[k]
    assert a["oddities"]["counts"] == f["oddities"]["counts"] == {"cmyk_jpeg": 1, "png_not_jpeg": 2}
    assert {o["file"] for o in a["oddities"]["files"]} == {
        "ILSVRC2012_img_train.tar:n01440764.tar/n01440764_cmyk.JPEG",
        "ILSVRC2012_img_train.tar:n02102040.tar/n02102040_png.JPEG", "ILSVRC2012_img_val.tar:ILSVRC2012_val_00000003.JPEG"}


def test_archives_prepare_killed_midway_resumes_to_identical_shards(tmp_path, monkeypatch):
    paths = make_archives(tmp_path)
    clean = shard_files(from_archives(paths, tmp_path / "clean"))
    real_close = kill_after_shards(monkeypatch, 2)
    with pytest.raises(KeyboardInterrupt):
        from_archives(paths, tmp_path / "out")
    monkeypatch.setattr(records.ShardWriter, "close", real_close)
    staging = tmp_path / "out.partial"
    assert not (tmp_path / "out").exists() and len(list(staging.glob("*.tar"))) == 2
    redone = []
    monkeypatch.setattr(records.ShardWriter, "close", lambda self: redone.append(self.path.name) or real_close(self))
    assert shard_files(from_archives(paths, tmp_path / "out")) == clean
    assert len(redone) == SHARDS["train"] + SHARDS["val"] - 2  # the two finished shards were reused
    assert not staging.exists()


def _inner_range(train_tar: Path, wnid: str) -> tuple[int, int]:
    with tarfile.open(train_tar) as tar:
        m = tar.getmember(f"{wnid}.tar")
        return m.offset_data, m.size


def test_damaged_inner_tar_is_named_in_one_line_and_nothing_is_written(tmp_path, cli):
    paths = make_archives(tmp_path)
    start, size = _inner_range(paths["train"], WNIDS[1])
    data = bytearray(paths["train"].read_bytes())
    with tarfile.open(fileobj=io.BytesIO(bytes(data[start:start + size]))) as inner:
        second = inner.getmembers()[1].offset  # the header of its second image
    data[start + second:start + second + 100] = b"\x07" * 100  # a scrambled header: tarfile would just stop there
    paths["train"].write_bytes(bytes(data))
    code, _, err = cli("prepare", "imagenet", "--train-tar", paths["train"], "--val-tar", paths["val"], "--devkit",
                       paths["devkit"], "--out", tmp_path / "out", "--workers", 1)
    assert code == 2
    assert len(err.strip().splitlines()) == 1
    assert f"inner tar {WNIDS[1]}.tar" in err and "damaged or truncated" in err
    assert not (tmp_path / "out").exists() and not (tmp_path / "out.partial").exists()


@pytest.mark.parametrize("cut", ["in_an_inner_tar", "at_a_member_boundary"])
def test_truncated_outer_tar_is_named_in_one_line(tmp_path, cli, cut):
    paths = make_archives(tmp_path)
    start, size = _inner_range(paths["train"], WNIDS[1])
    keep = start + size // 2 if cut == "in_an_inner_tar" else start + size  # the last inner tar lost whole
    paths["train"].write_bytes(paths["train"].read_bytes()[:keep])
    code, _, err = cli("prepare", "imagenet", "--train-tar", paths["train"], "--val-tar", paths["val"], "--devkit",
                       paths["devkit"], "--out", tmp_path / "out", "--workers", 1)
    assert code == 2 and len(err.strip().splitlines()) == 1, err
    named = f"{paths['train']}: "
    assert named in err and "truncated" in err.split(named, 1)[1]
    assert not (tmp_path / "out").exists() and not (tmp_path / "out.partial").exists()


def test_cli_prepares_from_the_archives_and_checks_its_arguments(tmp_path, cli):
    paths = make_archives(tmp_path)
    out = tmp_path / "shards"
    code, _, err = cli("prepare", "imagenet", "--train-tar", paths["train"], "--val-tar", paths["val"], "--devkit",
                       paths["devkit"], "--out", out, "--train-shards", 3, "--val-shards", 1, "--workers", 1)
    assert code == 0, err
    assert cli("verify", out, "--workers", 1)[0] == 0
    manifest = records.load_manifest(out)
    assert manifest["classes"] == sorted(WNIDS)
    assert manifest["source"]["layout"]["archives"]["devkit"] == str(paths["devkit"].resolve())
    code, _, err = cli("prepare", "imagenet", "--train-tar", paths["train"], "--out", tmp_path / "o2")
    assert code == 2 and "--train-tar, --val-tar and --devkit go together" in err


def test_devkit_without_ground_truth_is_named(tmp_path):
    paths = make_archives(tmp_path)
    with tarfile.open(paths["devkit"], "w:gz") as tar:
        tar.add(tmp_path / "src" / "ILSVRC2012_devkit_t12" / "data" / "meta.mat",
                arcname="ILSVRC2012_devkit_t12/data/meta.mat")
    with pytest.raises(SourceError, match="no data/ILSVRC2012_validation_ground_truth.txt inside"):
        discover_archives(paths["train"], paths["val"], paths["devkit"])


def _repack_devkit(root: Path, paths: dict[str, Path]) -> Path:
    """The devkit .tar.gz made again from root/src's devkit folder (after a test changed it); its data folder."""
    data = root / "src" / "ILSVRC2012_devkit_t12" / "data"
    with tarfile.open(paths["devkit"], "w:gz") as tar:
        tar.add(data.parent, arcname="ILSVRC2012_devkit_t12")
    return data


def _prepare_archives(cli, paths: dict[str, Path], out: Path):
    return cli("prepare", "imagenet", "--train-tar", paths["train"], "--val-tar", paths["val"], "--devkit",
               paths["devkit"], "--out", out, "--workers", 1)


@pytest.mark.parametrize("field", ["num_children", "ILSVRC2012_ID", "WNID"])
def test_devkit_meta_mat_lacking_a_synsets_field_is_one_line(tmp_path, cli, field):
    paths = make_archives(tmp_path)
    data = tmp_path / "src" / "ILSVRC2012_devkit_t12" / "data"
    write_devkit(data, {}, {w: "name" for w in WNIDS}, drop=field)
    (data / "ILSVRC2012_validation_ground_truth.txt").write_text("1\n2\n3\n1\n2\n3\n")
    _repack_devkit(tmp_path, paths)
    code, _, err = _prepare_archives(cli, paths, tmp_path / "out")
    assert_one_clear_line(code, err, f"{paths['devkit']}:ILSVRC2012_devkit_t12/data/meta.mat",
                          f"synsets lacks field {field}")
    assert not (tmp_path / "out").exists() and not (tmp_path / "out.partial").exists()


def test_devkit_ground_truth_that_is_not_utf8_is_named_with_its_line(tmp_path, cli):
    paths = make_archives(tmp_path)
    truth = tmp_path / "src" / "ILSVRC2012_devkit_t12" / "data" / "ILSVRC2012_validation_ground_truth.txt"
    truth.write_bytes(truth.read_bytes().replace(b"\n", b"\xff\n", 3).replace(b"\xff\n", b"\n", 1))  # line 2
    _repack_devkit(tmp_path, paths)
    code, _, err = _prepare_archives(cli, paths, tmp_path / "out")
    assert_one_clear_line(code, err, f"{paths['devkit']}:ILSVRC2012_devkit_t12/data/{truth.name}:2: ", "UTF-8")
    assert not (tmp_path / "out").exists() and not (tmp_path / "out.partial").exists()


def test_text_file_as_devkit_is_one_line(tmp_path, cli):
    paths = make_archives(tmp_path)
    paths["devkit"] = tmp_path / "devkit.txt"
    paths["devkit"].write_text("not an archive\n" * 50)
    code, _, err = _prepare_archives(cli, paths, tmp_path / "out")
    assert_one_clear_line(code, err, paths["devkit"], "download ILSVRC2012_devkit_t12.tar.gz again")
    assert not (tmp_path / "out").exists() and not (tmp_path / "out.partial").exists()


def test_bench_prepare_archives_times_both_methods_on_the_same_archives(cli, monkeypatch):
    """`bench prepare --archives`: both methods run each round from the same archives to the same shards (the
    bench checks their SHA-256 and would fail otherwise); the extracted copy is as large as the images."""
    from resnet_repro.bench import prepare_archives

    runs = []
    real = prepare_archives.extract
    monkeypatch.setattr(prepare_archives, "extract", lambda *a: runs.append(a) or real(*a))
    code, out, err = cli("bench", "prepare", "--archives", "--images", 30, "--workers", 1, "--repeats", 2, "--json")
    assert code == 0, err
    r = json.loads(out)
    assert len(runs) == 2 and r["images"] == 30 and r["workers"] == 1
    assert len(r["extract_then_prepare_s_rounds"]) == len(r["from_archives_s_rounds"]) == 2
    assert 0.8 * r["archive_bytes"] < r["extracted_bytes"] < r["archive_bytes"]  # the images without tar headers
    assert r["shard_bytes"] > r["extracted_bytes"]  # every image, plus tar headers and indexes
