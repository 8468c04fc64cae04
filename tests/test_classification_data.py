"""Classification data: the embedded dataset is deterministic and balanced; the CIFAR-100 and
class-folder readers read their real on-disk formats (fixtures written here in those formats)
and name what they expected, and where, when a path is wrong."""

from __future__ import annotations

import os
import pickle
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch

from pipeline.config import ConfigError, DataConfig, load_config
from pipeline.data import build_dataset, dataset_fingerprint, dataset_info, dataset_task
from pipeline.data.cifar100 import read_class_names as cifar_class_names
from pipeline.data.cifar100 import read_split
from pipeline.data.synthetic_classification import CLASS_NAMES, render_classification_sample
from pipeline.orchestration.preflight import preflight


# ------------------------------------------------------------------------------ embedded
def test_same_key_renders_the_same_bytes_and_other_keys_differ():
    image, label = render_classification_sample(3, "train", 7, 32)
    again, label_again = render_classification_sample(3, "train", 7, 32)
    assert np.array_equal(image, again) and label == label_again
    assert image.shape == (32, 32, 3) and image.dtype == np.uint8
    assert not np.array_equal(image, render_classification_sample(4, "train", 7, 32)[0])
    assert not np.array_equal(image, render_classification_sample(3, "val", 7, 32)[0])


def test_labels_are_balanced_and_every_class_appears():
    labels = [render_classification_sample(0, "val", i, 32)[1] for i in range(2 * len(CLASS_NAMES))]
    assert sorted(labels) == sorted(list(range(len(CLASS_NAMES))) * 2)


def test_dataset_through_the_config_gives_normalised_images_and_scalar_labels():
    cfg = DataConfig(dataset="synthetic_classification", image_size=32, train_size=8, val_size=4)
    info = dataset_info(cfg)
    assert info.class_names == CLASS_NAMES and info.ignore_index == -100
    val = build_dataset(cfg, "val")
    image, label = val[1]
    assert image.shape == (3, 32, 32) and image.dtype == torch.float32
    assert label.dtype == torch.long and label.ndim == 0 and int(label) == 1
    assert torch.equal(build_dataset(cfg, "val")[1][0], image)  # val is deterministic (no augmentation)
    assert build_dataset(cfg, "train")[0][0].shape == (3, 32, 32)
    assert dataset_task("synthetic_classification") == "classification" and dataset_task("synthetic") == "segmentation"
    assert dataset_fingerprint(cfg) != dataset_fingerprint(cfg.model_copy(update={"seed": 1}))


def test_a_classification_dataset_needs_the_classification_task():
    with pytest.raises(ConfigError, match="classification dataset but task is 'segmentation'; set task: classification"):
        preflight(load_config(None, ["data.dataset=synthetic_classification"]))
    with pytest.raises(ConfigError, match=r"student\.model\.aspp_channels does not apply to task 'classification'"):
        load_config(None, ["task=classification", "data.dataset=synthetic_classification",
                           "student.model.aspp_channels=64"])
    with pytest.raises(ConfigError, match=r"teacher\.model\.stem does not apply to task 'segmentation'"):
        load_config(None, ["teacher.model.stem=cifar"])


# ------------------------------------------------------------------------------ CIFAR-100
def write_cifar100(root: Path, train: int = 6, test: int = 4) -> Path:
    """The python version's layout: cifar-100-python/{train,test,meta}, bytes-keyed pickles."""
    folder = root / "cifar-100-python"
    folder.mkdir(parents=True)
    rng = np.random.default_rng(0)
    for name, count in (("train", train), ("test", test)):
        content = {b"filenames": [f"img{i}.png".encode() for i in range(count)], b"batch_label": name.encode(),
                   b"fine_labels": [int(v) for v in rng.integers(0, 100, count)],
                   b"coarse_labels": [0] * count, b"data": rng.integers(0, 256, (count, 3072), dtype=np.uint8)}
        (folder / name).write_bytes(pickle.dumps(content, protocol=2))
    meta = {b"fine_label_names": [f"class_{i:02d}".encode() for i in range(100)],
            b"coarse_label_names": [f"super_{i}".encode() for i in range(20)]}
    (folder / "meta").write_bytes(pickle.dumps(meta, protocol=2))
    return folder


def test_cifar100_reads_rows_as_rgb_planes_and_test_as_val(tmp_path):
    folder = write_cifar100(tmp_path)
    raw = pickle.loads((folder / "test").read_bytes())
    images, labels = read_split(tmp_path, "val")
    assert images.shape == (4, 32, 32, 3) and labels.tolist() == raw[b"fine_labels"]
    row = raw[b"data"][2]
    # Pixel (y=1, x=5): red at 1*32+5, green 1024 later, blue 2048 later.
    assert images[2, 1, 5].tolist() == [row[37], row[1024 + 37], row[2048 + 37]]
    assert cifar_class_names(folder)[3] == "class_03"  # root may also be the cifar-100-python folder


def test_cifar100_dataset_through_the_config(tmp_path):
    write_cifar100(tmp_path)
    cfg = DataConfig(dataset="cifar100", root=tmp_path, image_size=32)
    assert dataset_info(cfg).num_classes == 100
    train = build_dataset(cfg, "train")
    assert len(train) == 6 and train[0][0].shape == (3, 32, 32)
    assert len(build_dataset(cfg, "val")) == 4


def test_cifar100_missing_or_malformed_files_name_what_was_expected_where(tmp_path):
    with pytest.raises(FileNotFoundError, match=r"expected .*cifar-100-python/\{train,test,meta\}"):
        read_split(tmp_path, "train")
    folder = write_cifar100(tmp_path)
    (folder / "meta").unlink()
    with pytest.raises(FileNotFoundError, match=r"lacks meta"):
        read_split(tmp_path, "train")
    (folder / "train").write_bytes(pickle.dumps({b"data": np.zeros((2, 3072), np.uint8)}))
    (folder / "meta").write_bytes(b"not a pickle")
    with pytest.raises(ValueError, match=r"train has no b'fine_labels' entry"):
        read_split(tmp_path, "train")
    with pytest.raises(ValueError, match=r"meta is not a CIFAR-100 python pickle"):
        cifar_class_names(tmp_path)


class _Payload:
    def __reduce__(self):
        return (os.system, ("touch hacked",))


def test_a_hostile_cifar100_pickle_is_refused_and_runs_nothing(tmp_path, monkeypatch):
    folder = write_cifar100(tmp_path)
    (folder / "meta").write_bytes(pickle.dumps({b"fine_label_names": _Payload()}, protocol=2))
    monkeypatch.chdir(tmp_path)
    with pytest.raises(ValueError, match=r"refusing to load posix\.system"):
        cifar_class_names(tmp_path)
    assert not (tmp_path / "hacked").exists()


# ------------------------------------------------------------------------------ class folders
def write_image_folder(root: Path, layout: dict[str, dict[str, int]]) -> None:
    rng = np.random.default_rng(0)
    for split, classes in layout.items():
        for name, count in classes.items():
            (root / split / name).mkdir(parents=True)
            for i in range(count):
                image = rng.integers(0, 256, (40 + i, 50, 3), dtype=np.uint8)  # sizes differ, as photos do
                cv2.imwrite(str(root / split / name / f"n{i:04d}.JPEG"), image)


def test_image_folder_reads_sorted_classes_and_crops_to_the_configured_size(tmp_path):
    write_image_folder(tmp_path, {"train": {"n02": 2, "n01": 3}, "val": {"n01": 1, "n02": 1}})
    cfg = DataConfig(dataset="image_folder", root=tmp_path, image_size=32)
    assert dataset_info(cfg).class_names == ("n01", "n02")
    train, val = build_dataset(cfg, "train"), build_dataset(cfg, "val")
    assert [int(train[i][1]) for i in range(len(train))] == [0, 0, 0, 1, 1]
    assert [int(val[i][1]) for i in range(len(val))] == [0, 1]
    assert train[0][0].shape == val[1][0].shape == (3, 32, 32)
    assert torch.equal(val[0][0], build_dataset(cfg, "val")[0][0])  # eval crop is deterministic


def test_image_folder_errors_name_the_expected_layout(tmp_path):
    cfg = DataConfig(dataset="image_folder", root=tmp_path, image_size=32)
    with pytest.raises(FileNotFoundError, match=r"train \(expected .*\{train,val\}/<class>/\*\.JPEG\)"):
        dataset_info(cfg)
    write_image_folder(tmp_path, {"train": {"n01": 1}})
    with pytest.raises(FileNotFoundError, match=r"val \(expected"):
        build_dataset(cfg, "val")
    (tmp_path / "val").mkdir()
    cv2.imwrite(str(tmp_path / "val" / "ILSVRC2012_val_00000001.JPEG"), np.zeros((8, 8, 3), np.uint8))
    with pytest.raises(ValueError, match=r"sorted into class folders first"):
        build_dataset(cfg, "val")
    (tmp_path / "val" / "n99").mkdir()
    with pytest.raises(ValueError, match=r"class folders that train/ does not have: n99"):
        build_dataset(cfg, "val")
    with pytest.raises(FileNotFoundError, match=r"data\.root is not set"):
        dataset_info(DataConfig(dataset="image_folder", image_size=32))
