"""Readers of real segmentation datasets, each checked on a tiny fixture written here in that
dataset's own on-disk format (palette PNGs with PIL, MATLAB files with scipy.io.savemat, ...)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from scipy.io import savemat
from torch.utils.data import DataLoader

from pipeline.config import DataConfig, load_config
from pipeline.data import build_dataset, dataset_fingerprint, dataset_info, segmentation_collate
from pipeline.data.files import DatasetLayoutError

NO_AUG = {"hflip": False, "scale": (1.0, 1.0), "color_jitter": 0.0}


def data_config(**kwargs) -> DataConfig:
    return DataConfig(**kwargs)


def write_image(path: Path, height: int, width: int, seed: int = 0) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    pixels = np.random.default_rng(seed).integers(0, 256, (height, width, 3), dtype=np.uint8)
    Image.fromarray(pixels).save(path)


def write_palette_png(path: Path, ids: np.ndarray) -> None:
    """A VOC-style mask: mode "P", pixel value = class id, a colour palette attached."""
    path.parent.mkdir(parents=True, exist_ok=True)
    mask = Image.fromarray(ids.astype(np.uint8), mode="P")
    palette = np.random.default_rng(1).integers(0, 256, 768, dtype=np.uint8)
    mask.putpalette(palette.tolist())
    mask.save(path)


def mask_with(height: int, width: int, labels: list[int]) -> np.ndarray:
    """Horizontal bands, one per label, so every label is present."""
    rows = np.array_split(np.arange(height), len(labels))
    ids = np.zeros((height, width), dtype=np.uint8)
    for label, band in zip(labels, rows):
        ids[band] = label
    return ids


# --------------------------------------------------------------------------------- VOC
def write_voc(root: Path, with_aug: bool = True) -> dict[str, np.ndarray]:
    base = root / "VOCdevkit" / "VOC2012"
    masks = {}
    ids = {"train": ["2007_000032", "2007_000039"], "val": ["2007_000033"], "aug_only": ["2008_000002"]}
    for index, sample_id in enumerate(ids["train"] + ids["val"] + ids["aug_only"]):
        height, width = 40 + 4 * index, 52 - 2 * index
        write_image(base / "JPEGImages" / f"{sample_id}.jpg", height, width, seed=index)
        masks[sample_id] = mask_with(height, width, [0, 15, 255, 7 + index])
        if sample_id not in ids["aug_only"]:
            write_palette_png(base / "SegmentationClass" / f"{sample_id}.png", masks[sample_id])
        if with_aug:  # SegmentationClassAug: plain grayscale id PNGs
            (base / "SegmentationClassAug").mkdir(parents=True, exist_ok=True)
            Image.fromarray(masks[sample_id], mode="L").save(base / "SegmentationClassAug" / f"{sample_id}.png")
    lists = base / "ImageSets" / "Segmentation"
    lists.mkdir(parents=True)
    (lists / "train.txt").write_text("\n".join(ids["train"]) + "\n")
    (lists / "val.txt").write_text("\n".join(ids["val"]) + "\n")
    if with_aug:  # the DeepLab-style two-path lines
        aug = ids["train"] + ids["aug_only"]
        (lists / "train_aug.txt").write_text(
            "".join(f"/JPEGImages/{i}.jpg /SegmentationClassAug/{i}.png\n" for i in aug))
    return masks


def test_voc_reads_palette_masks_as_class_ids_and_train_aug_from_the_sbd_list(tmp_path):
    masks = write_voc(tmp_path)
    cfg = data_config(dataset="voc", root=tmp_path, augment=NO_AUG)
    info = dataset_info(cfg)
    assert info.num_classes == 21 and info.class_names[15] == "person" and info.ignore_index == 255

    train = build_dataset(cfg, "train")  # default split: train_aug (10,582 in the real set)
    assert len(train) == 3 and train.ids()[-1] == "2008_000002"
    val = build_dataset(cfg, "val")
    image, mask = val[0]
    assert image.dtype == torch.float32 and image.shape == (3, 48, 48)
    assert torch.equal(mask, torch.from_numpy(masks["2007_000033"]).long())  # palette index, not colour
    assert set(mask.unique().tolist()) == {0, 7 + 2, 15, 255}


def test_voc_train_split_uses_segmentation_class(tmp_path):
    write_voc(tmp_path)
    train = build_dataset(data_config(dataset="voc", root=tmp_path, train_split="train", augment=NO_AUG), "train")
    assert train.ids() == ["2007_000032", "2007_000039"]
    assert train.samples[0].mask.parent.name == "SegmentationClass"


def test_voc_without_the_sbd_list_says_what_is_missing_and_how_to_fix(tmp_path):
    write_voc(tmp_path, with_aug=False)
    with pytest.raises(DatasetLayoutError, match=r"expected VOCdevkit/VOC2012/ImageSets/Segmentation/train_aug\.txt "
                                                 r"under .*data\.train_split=train"):
        build_dataset(data_config(dataset="voc", root=tmp_path), "train")


def test_voc_root_that_is_not_the_parent_of_vocdevkit_is_named(tmp_path):
    write_voc(tmp_path)
    wrong = tmp_path / "VOCdevkit"
    with pytest.raises(DatasetLayoutError, match=r"expected VOCdevkit/VOC2012 under .*VOCdevkit; set data\.root to "
                                                 r"the folder that contains VOCdevkit"):
        build_dataset(data_config(dataset="voc", root=wrong), "val")
    with pytest.raises(DatasetLayoutError, match=r"needs data\.root"):
        build_dataset(data_config(dataset="voc"), "val")


def test_random_scale_and_crop_pad_masks_with_the_ignore_label(tmp_path):
    write_voc(tmp_path)
    cfg = data_config(dataset="voc", root=tmp_path, image_size=96,
                      augment={"hflip": True, "scale": (0.5, 0.5), "color_jitter": 0.0})
    image, mask = build_dataset(cfg, "train")[0]
    assert image.shape == (3, 96, 96) and mask.shape == (96, 96)
    assert (mask == 255).float().mean() > 0.5  # a 20x26 image inside a 96 crop: mostly padding


def test_val_images_of_different_sizes_batch_with_padding_that_is_ignored(tmp_path):
    write_voc(tmp_path)
    cfg = data_config(dataset="voc", root=tmp_path, val_split="train", augment=NO_AUG)
    val = build_dataset(cfg, "val")
    images, masks = next(iter(DataLoader(val, batch_size=2, collate_fn=segmentation_collate)))
    assert images.shape == (2, 3, 44, 52) and masks.shape == (2, 44, 52)  # (40x52) and (44x50)
    assert (masks[0, 40:] == 255).all() and (masks[1, :, 50:] == 255).all()
    assert (images[0, :, 40:] == 0).all()


def test_val_max_side_resizes_images_and_masks_together(tmp_path):
    write_voc(tmp_path)
    image, mask = build_dataset(data_config(dataset="voc", root=tmp_path, val_max_side=32), "val")[0]
    assert image.shape[-2:] == mask.shape == (32, 32)


# --------------------------------------------------------------------------- COCO-Stuff-10k
def write_cocostuff(root: Path) -> dict[str, np.ndarray]:
    names = {"train": ["COCO_train2014_000000000077", "COCO_train2014_000000000078"],
             "test": ["COCO_train2014_000000000079"]}
    labels = {}
    for index, name in enumerate(names["train"] + names["test"]):
        write_image(root / "images" / f"{name}.jpg", 30, 36, seed=index)
        stored = mask_with(30, 36, [0, 1, 182, 92]).astype(np.uint16)  # 0 = unlabeled
        labels[name] = stored
        (root / "annotations").mkdir(exist_ok=True)
        savemat(root / "annotations" / f"{name}.mat", {"S": stored, "names": np.array(["x"], dtype=object)})
    (root / "imageLists").mkdir()
    for split, split_names in names.items():
        (root / "imageLists" / f"{split}.txt").write_text("\n".join(split_names) + "\n")
    return labels


def test_cocostuff10k_reads_the_s_label_map_shifted_by_one_with_unlabeled_ignored(tmp_path):
    write_cocostuff(tmp_path)
    cfg = data_config(dataset="cocostuff10k", root=tmp_path, augment=NO_AUG)
    info = dataset_info(cfg)
    assert info.num_classes == 182 and info.class_names[0] == "person" and info.class_names[-1] == "wood"
    assert len(build_dataset(cfg, "train")) == 2
    val = build_dataset(cfg, "val")  # the test list
    assert len(val) == 1
    _, mask = val[0]
    assert set(mask.unique().tolist()) == {255, 0, 181, 91}
    assert (mask[:8] == 255).all()  # the band stored as 0


def test_cocostuff10k_missing_annotation_is_named(tmp_path):
    write_cocostuff(tmp_path)
    (tmp_path / "annotations" / "COCO_train2014_000000000079.mat").unlink()
    with pytest.raises(DatasetLayoutError, match=r"expected annotations/COCO_train2014_000000000079\.mat under .*"
                                                 r"imageLists/test\.txt lists"):
        build_dataset(data_config(dataset="cocostuff10k", root=tmp_path), "val")


# ------------------------------------------------------------------------------ Cityscapes
def write_cityscapes(root: Path) -> None:
    for split, city, frame in [("train", "aachen", "000000_000019"), ("train", "bochum", "000001_000019"),
                               ("val", "frankfurt", "000000_000294")]:
        stem = f"{city}_{frame}"
        write_image(root / "leftImg8bit" / split / city / f"{stem}_leftImg8bit.png", 16, 32)
        label_ids = mask_with(16, 32, [7, 26, 33, 0, 4, 14])  # road, car, bicycle, unlabeled, static, void
        path = root / "gtFine" / split / city / f"{stem}_gtFine_labelIds.png"
        path.parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(label_ids, mode="L").save(path)


def test_cityscapes_maps_label_ids_to_the_19_train_ids(tmp_path):
    write_cityscapes(tmp_path)
    cfg = data_config(dataset="cityscapes", root=tmp_path, augment=NO_AUG)
    assert dataset_info(cfg).num_classes == 19
    assert len(build_dataset(cfg, "train")) == 2
    _, mask = build_dataset(cfg, "val")[0]
    bands = [int(mask[row, 0]) for row in (0, 3, 6, 9, 12, 14)]
    assert bands == [0, 13, 18, 255, 255, 255]  # road, car, bicycle; the rest ignored


def test_cityscapes_image_without_its_gtfine_mask_is_an_error(tmp_path):
    write_cityscapes(tmp_path)
    (tmp_path / "gtFine" / "val" / "frankfurt" / "frankfurt_000000_000294_gtFine_labelIds.png").unlink()
    with pytest.raises(DatasetLayoutError, match=r"expected gtFine/val/frankfurt/frankfurt_000000_000294_gtFine_"
                                                 r"labelIds\.png under"):
        build_dataset(data_config(dataset="cityscapes", root=tmp_path), "val")


# -------------------------------------------------------------------------- generic folder
def write_folder(root: Path) -> None:
    (root / "classes.txt").write_text("background\nroad\nlane\n")
    for split, names in [("train", ["a", "b"]), ("val", ["c"])]:
        for name in names:
            write_image(root / "images" / split / f"{name}.jpg", 20, 24)
            path = root / "masks" / split / f"{name}.png"
            path.parent.mkdir(parents=True, exist_ok=True)
            Image.fromarray(mask_with(20, 24, [0, 1, 2, 255]), mode="L").save(path)


def test_folder_dataset_reads_images_masks_and_the_class_list(tmp_path):
    write_folder(tmp_path)
    cfg = data_config(dataset="folder", root=tmp_path, augment=NO_AUG)
    info = dataset_info(cfg)
    assert info.class_names == ("background", "road", "lane")
    assert len(build_dataset(cfg, "train")) == 2
    _, mask = build_dataset(cfg, "val")[0]
    assert set(mask.unique().tolist()) == {0, 1, 2, 255}


def test_folder_label_outside_the_class_list_is_an_error_naming_the_file(tmp_path):
    write_folder(tmp_path)
    (tmp_path / "classes.txt").write_text("background\nroad\n")
    dataset = build_dataset(data_config(dataset="folder", root=tmp_path), "val")
    with pytest.raises(ValueError, match=r"c\.png: ids 2 \(classes are 0\.\.1"):
        dataset[0]


def test_folder_rgb_colour_masks_are_rejected_with_the_fix(tmp_path):
    write_folder(tmp_path)
    write_image(tmp_path / "masks" / "val" / "c.png", 20, 24)
    with pytest.raises(ValueError, match=r"RGB image; expected a palette or grayscale PNG"):
        build_dataset(data_config(dataset="folder", root=tmp_path), "val")[0]


def test_folder_missing_class_list_and_mask_are_named(tmp_path):
    write_folder(tmp_path)
    (tmp_path / "masks" / "train" / "b.png").unlink()
    with pytest.raises(DatasetLayoutError, match=r"expected masks/train/b\.png under"):
        build_dataset(data_config(dataset="folder", root=tmp_path), "train")
    (tmp_path / "classes.txt").unlink()
    with pytest.raises(DatasetLayoutError, match=r"classes\.txt does not exist.*data\.class_names_file"):
        dataset_info(data_config(dataset="folder", root=tmp_path))


def test_fingerprint_follows_the_sample_lists(tmp_path):
    write_folder(tmp_path)
    cfg = data_config(dataset="folder", root=tmp_path)
    before = dataset_fingerprint(cfg)
    assert dataset_fingerprint(cfg) == before
    (tmp_path / "images" / "train" / "b.jpg").unlink()
    assert dataset_fingerprint(cfg) != before


def test_a_real_dataset_is_chosen_from_the_config(tmp_path):
    config = load_config(None, ["data.dataset=cityscapes", f"data.root={tmp_path}", "data.image_size=513"])
    assert config.data.dataset == "cityscapes" and config.data.root == tmp_path
