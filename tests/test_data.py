import hashlib

import numpy as np
import pytest
import torch

from pipeline.config import AugmentConfig, DataConfig
from pipeline.data import build_dataset, dataset_fingerprint, dataset_info
from pipeline.data.synthetic import CLASS_NAMES, IGNORE_INDEX, SyntheticSegmentation, render_sample
from pipeline.data.transforms import MEAN, STD, eval_transform, train_transform

SIZE = 64


def _digest(image, mask):
    return hashlib.sha256(image.tobytes() + mask.tobytes()).hexdigest()


def class_pixel_shares(seed=0, split="train", n=200, image_size=SIZE):
    """Share of pixels per class over ``n`` samples (printed to help tune the generator)."""
    counts = np.zeros(len(CLASS_NAMES), dtype=np.int64)
    present = np.zeros(len(CLASS_NAMES), dtype=np.int64)
    for i in range(n):
        _, mask = render_sample(seed, split, i, image_size)
        c = np.bincount(mask.ravel(), minlength=len(CLASS_NAMES))
        counts += c
        present += c > 0
    shares = counts / counts.sum()
    for name, share, k in zip(CLASS_NAMES, shares, present):
        print(f"{name:22s} {100 * share:6.2f}% of pixels, in {k}/{n} images")
    return shares, present


def test_same_key_gives_identical_bytes():
    a = render_sample(3, "train", 17, SIZE)
    b = render_sample(3, "train", 17, SIZE)
    assert a[0].tobytes() == b[0].tobytes() and a[1].tobytes() == b[1].tobytes()
    ds1 = SyntheticSegmentation("val", 5, SIZE, seed=3)
    ds2 = SyntheticSegmentation("val", 5, SIZE, seed=3, cache=False)
    for i in range(5):
        x1, y1 = ds1[i]
        x2, y2 = ds2[i]
        assert torch.equal(x1, x2) and torch.equal(y1, y2)


def test_different_seed_split_or_index_differ():
    base = _digest(*render_sample(0, "train", 0, SIZE))
    assert _digest(*render_sample(1, "train", 0, SIZE)) != base
    assert _digest(*render_sample(0, "val", 0, SIZE)) != base
    assert _digest(*render_sample(0, "train", 1, SIZE)) != base


def test_train_and_val_streams_are_disjoint():
    train = {_digest(*render_sample(0, "train", i, SIZE)) for i in range(300)}
    val = {_digest(*render_sample(0, "val", i, SIZE)) for i in range(300)}
    assert len(train) == 300 and len(val) == 300
    assert not train & val


def test_sample_format():
    image, mask = render_sample(0, "train", 0, SIZE)
    assert image.shape == (SIZE, SIZE, 3) and image.dtype == np.uint8
    assert mask.shape == (SIZE, SIZE) and mask.dtype == np.uint8
    for i in range(50):
        _, mask = render_sample(0, "val", i, 48)
        assert mask.max() < len(CLASS_NAMES)  # every pixel labelled, no ignore in raw samples


def test_every_class_is_common_enough():
    shares, present = class_pixel_shares()
    assert CLASS_NAMES[0] == "background"
    assert len(CLASS_NAMES) >= 9
    for name, share, k in zip(CLASS_NAMES[1:], shares[1:], present[1:]):
        assert share >= 0.01, f"{name} covers only {100 * share:.2f}% of pixels"
        assert k >= 20, f"{name} appears in only {k} of 200 images"
    assert shares[0] < 0.85


def test_objects_can_be_large():
    biggest = 0
    for i in range(200):
        _, mask = render_sample(0, "train", i, SIZE)
        for c in range(1, len(CLASS_NAMES)):
            ys, xs = np.nonzero(mask == c)
            if len(ys):
                biggest = max(biggest, ys.max() - ys.min() + 1, xs.max() - xs.min() + 1)
    assert biggest > SIZE // 2


def test_few_objects_coarse_textures_plain_background():
    # The design the models are tuned on: 1-3 objects per image, each texture high-contrast and
    # coarse enough to see at 64 px, and no clutter, so a background pixel is only noise.
    bg_steps, obj_steps = [], []
    for i in range(100):
        image, mask = render_sample(0, "train", i, SIZE)
        assert 1 <= len(set(np.unique(mask)) - {0}) <= 3
        img = image.astype(np.float32)
        # Colour change to the right and below neighbours, where all three pixels share a class.
        step = (np.abs(img[1:, 1:] - img[1:, :-1]) + np.abs(img[1:, 1:] - img[:-1, 1:])).mean(axis=2)
        m = mask[1:, 1:]
        same = (m == mask[1:, :-1]) & (m == mask[:-1, 1:])
        bg_steps.append(step[same & (m == 0)].mean())
        if (same & (m > 0)).sum() > 50:
            obj_steps.append(step[same & (m > 0)].mean())
    assert max(bg_steps) < 16, max(bg_steps)  # noise alone: about 2.3 sigma, sigma <= 6
    assert min(obj_steps) > 20 and np.mean(obj_steps) > 40, (min(obj_steps), np.mean(obj_steps))


def test_classes_cross_textures_and_shapes():
    # The class is (texture, shape): a patch shows the texture, only the outline shows the shape.
    pairs = [name.split("_") for name in CLASS_NAMES[1:]]
    assert len(set(pairs_t := [t for t, _ in pairs])) == 3 and len({s for _, s in pairs}) == 3
    assert len(set(map(tuple, pairs))) == len(pairs) == 9 and all(pairs_t.count(t) == 3 for t in pairs_t)


def test_any_orientation_by_default_renders_generator_v2_samples_byte_for_byte():
    # Digest of the first 20 train samples (64 px, seed 0) as generator version 2 rendered them,
    # before shape_rotation existed: the default must not move a committed baseline's data.
    digest = hashlib.sha256()
    for i in range(20):
        image, mask = render_sample(0, "train", i, 64)
        digest.update(image.tobytes() + mask.tobytes())
    assert digest.hexdigest() == "db562605e0d2751900fd8ac1727c76ee34dfb504e2a32233355d36e651b2978b"


def _lone_square_fill_ratios(max_rotation: float) -> list[float]:
    """How much of its bounding box the square class fills in images holding only that class, away
    from the border (1.0 = one axis-aligned square; two overlapping squares of a class fill less)."""
    ratios = []
    square_ids = [k for k, name in enumerate(CLASS_NAMES) if name.endswith("square")]
    for i in range(150):
        _, mask = render_sample(0, "train", i, SIZE, max_rotation=max_rotation)
        present = set(np.unique(mask)) - {0}
        if len(present) != 1 or present.pop() not in square_ids:
            continue
        ys, xs = np.nonzero(mask)
        if ys.min() == 0 or xs.min() == 0 or ys.max() == SIZE - 1 or xs.max() == SIZE - 1:
            continue  # cut by the image border
        box = (ys.max() - ys.min() + 1) * (xs.max() - xs.min() + 1)
        ratios.append(len(ys) / box)
    return ratios


def test_shape_rotation_zero_keeps_every_square_axis_aligned():
    upright, turned = np.array(_lone_square_fill_ratios(0)), np.array(_lone_square_fill_ratios(180))
    assert len(upright) >= 10 and len(turned) >= 10
    assert (upright == 1.0).mean() >= 0.8
    assert (turned == 1.0).mean() <= 0.2  # a square turned by up to 45 degrees fills down to half its box


def test_shape_rotation_outside_zero_to_180_degrees_is_refused():
    with pytest.raises(ValueError, match="between 0 and 180"):
        render_sample(0, "train", 0, SIZE, max_rotation=270)
    with pytest.raises(ValueError, match="between 0 and 180"):
        SyntheticSegmentation("val", 4, SIZE, seed=0, max_rotation=-1)


def test_dataset_items_dtypes_and_normalisation():
    ds = SyntheticSegmentation("val", 4, SIZE, seed=0)
    x, y = ds[1]
    assert x.dtype == torch.float32 and x.shape == (3, SIZE, SIZE)
    assert y.dtype == torch.int64 and y.shape == (SIZE, SIZE)
    image, mask = ds.raw(1)
    expected = (image.astype(np.float32) / 255.0 - np.array(MEAN, np.float32)) / np.array(STD, np.float32)
    np.testing.assert_allclose(x.numpy(), expected.transpose(2, 0, 1), atol=1e-5)
    np.testing.assert_array_equal(y.numpy(), mask)
    assert len(ds) == 4
    with pytest.raises(IndexError):
        ds[4]


def test_flip_keeps_image_and_mask_aligned():
    image, mask = render_sample(0, "train", 2, SIZE)
    tf = train_transform(AugmentConfig(hflip=True, scale=(1.0, 1.0), color_jitter=0.0), SIZE)
    plain = eval_transform()(image=image, mask=mask)
    flips = 0
    for _ in range(20):
        out = tf(image=image, mask=mask)
        assert out["image"].dtype == torch.float32 and out["mask"].dtype == torch.int64
        if torch.equal(out["mask"], plain["mask"]):
            assert torch.allclose(out["image"], plain["image"])
        else:
            flips += 1
            assert torch.equal(out["mask"], plain["mask"].flip(-1))
            assert torch.allclose(out["image"], plain["image"].flip(-1))
    assert flips > 0


def test_scale_and_crop_keep_alignment_and_pad_with_ignore():
    # Blocks of classes 0..7 whose grey level encodes the class, so alignment can be read back
    # off the pixels; neighbouring blocks differ by one class so interpolated edges mostly still
    # decode to one of their two sides.
    yy, xx = np.mgrid[0:SIZE, 0:SIZE]
    mask = (xx // 16 + 4 * (yy // 32)).astype(np.uint8)
    image = np.repeat((mask * 20)[..., None], 3, axis=2).astype(np.uint8)
    aug = AugmentConfig(hflip=True, scale=(0.5, 1.5), rotate_degrees=10.0, color_jitter=0.0)
    tf = train_transform(aug, SIZE)
    tf.set_random_seed(0)
    mean, std = np.array(MEAN, np.float32)[:, None, None], np.array(STD, np.float32)[:, None, None]
    saw_ignore = False
    agreements = []
    for _ in range(40):
        out = tf(image=image, mask=mask)
        x, y = out["image"].numpy(), out["mask"].numpy()
        assert x.shape == (3, SIZE, SIZE) and y.shape == (SIZE, SIZE) and y.dtype == np.int64
        decoded = np.rint((x * std + mean)[0] * 255.0 / 20.0)
        valid = y != IGNORE_INDEX
        saw_ignore |= not valid.all()
        agreements.append(np.mean(decoded[valid] == y[valid]))
        assert agreements[-1] > 0.8  # only interpolated edges may disagree
        both = valid & valid[:, ::-1]
        assert np.mean(decoded[:, ::-1][both] == y[both]) < 0.5  # a misaligned mask would show
        assert set(np.unique(y)) <= set(range(8)) | {IGNORE_INDEX}
    assert saw_ignore
    assert np.mean(agreements) > 0.9


def test_colour_jitter_changes_image_not_mask():
    image, mask = render_sample(0, "train", 6, SIZE)
    tf = train_transform(AugmentConfig(hflip=False, scale=(1.0, 1.0), color_jitter=0.4), SIZE)
    out = tf(image=image, mask=mask)
    np.testing.assert_array_equal(out["mask"].numpy(), mask)


def test_build_dataset_dispatch_and_info():
    cfg = DataConfig(train_size=8, val_size=4)
    info = dataset_info(cfg)
    assert info.num_classes == len(CLASS_NAMES) and info.class_names == CLASS_NAMES
    assert info.mean == MEAN and info.std == STD and info.ignore_index == 255
    train, val = build_dataset(cfg, "train"), build_dataset(cfg, "val")
    assert len(train) == 8 and len(val) == 4
    x, y = train[0]
    assert x.shape == (3, 64, 64) and y.dtype == torch.int64
    # val is not augmented by default: equal to the plain normalised sample
    assert torch.equal(val[0][1], torch.from_numpy(render_sample(0, "val", 0, 64)[1]).long())
    plain_train = build_dataset(cfg, "train", augment=False)
    assert torch.equal(plain_train[0][1], torch.from_numpy(render_sample(0, "train", 0, 64)[1]).long())
    loader = torch.utils.data.DataLoader(train, batch_size=4)
    xb, yb = next(iter(loader))
    assert xb.shape == (4, 3, 64, 64) and yb.shape == (4, 64, 64)


def test_fingerprint_tracks_data_not_loader_settings():
    base = DataConfig()
    fp = dataset_fingerprint(base)
    assert len(fp) == 64 and int(fp, 16) >= 0
    assert dataset_fingerprint(DataConfig()) == fp
    for change in ({"seed": 1}, {"train_size": 10}, {"val_size": 10}, {"image_size": 96}):
        assert dataset_fingerprint(base.model_copy(update=change)) != fp, change
    for same in ({"workers": 2}, {"augment": AugmentConfig(hflip=False, color_jitter=0.0)}):
        assert dataset_fingerprint(base.model_copy(update=same)) == fp, same


def test_unknown_dataset_is_a_clear_error():
    cfg = DataConfig().model_copy(update={"dataset": "imagenet-pets"})
    for call in (lambda: build_dataset(cfg, "train"), lambda: dataset_info(cfg), lambda: dataset_fingerprint(cfg)):
        with pytest.raises(ValueError, match="imagenet-pets.*synthetic"):
            call()
    with pytest.raises(ValueError, match="split"):
        build_dataset(DataConfig(), "test")
