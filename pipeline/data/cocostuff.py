"""COCO-Stuff-10k (v1.1) in its released layout.

``data.root`` is the folder that holds::

    images/<name>.jpg
    annotations/<name>.mat        MATLAB file; "S" is the label map (uint16, 0 = unlabeled, 1..182)
    imageLists/{train,test}.txt   one <name> a line (9,000 / 1,000 images)

Labels: 0 (unlabeled) -> 255 (ignore); k -> k - 1, giving the 182 COCO-Stuff classes (ids of the
COCO things that never occur stay in the list, as in the 182-class setting of the TaT paper).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from pipeline.data.files import Sample, SegmentationFiles, read_list, require, require_root
from pipeline.data.transforms import IGNORE_INDEX

CLASS_NAMES: tuple[str, ...] = tuple("""
person bicycle car motorcycle airplane bus train truck boat traffic_light fire_hydrant street_sign stop_sign
parking_meter bench bird cat dog horse sheep cow elephant bear zebra giraffe hat backpack umbrella shoe
eye_glasses handbag tie suitcase frisbee skis snowboard sports_ball kite baseball_bat baseball_glove skateboard
surfboard tennis_racket bottle plate wine_glass cup fork knife spoon bowl banana apple sandwich orange broccoli
carrot hot_dog pizza donut cake chair couch potted_plant bed mirror dining_table window desk toilet door tv
laptop mouse remote keyboard cell_phone microwave oven toaster sink refrigerator blender book clock vase
scissors teddy_bear hair_drier toothbrush hair_brush banner blanket branch bridge building-other bush cabinet
cage cardboard carpet ceiling-other ceiling-tile cloth clothes clouds counter cupboard curtain desk-stuff dirt
door-stuff fence floor-marble floor-other floor-stone floor-tile floor-wood flower fog food-other fruit
furniture-other grass gravel ground-other hill house leaves light mat metal mirror-stuff moss mountain mud
napkin net paper pavement pillow plant-other plastic platform playingfield railing railroad river road rock
roof rug salad sand sea shelf sky-other skyscraper snow solid-other stairs stone straw structural-other table
tent textile-other towel tree vegetable wall-brick wall-concrete wall-other wall-panel wall-stone wall-tile
wall-wood water-other waterdrops window-blind window-other wood
""".split())
DEFAULT_SPLITS = {"train": "train", "val": "test"}
_ROOT_HINT = "set data.root to the COCO-Stuff-10k folder that holds images/, annotations/ and imageLists/"

assert len(CLASS_NAMES) == 182


def read_label_mat(path: Path) -> np.ndarray:
    """The "S" label map of an annotation .mat, as class ids (0 -> ignore, k -> k - 1)."""
    from scipy.io import loadmat

    try:
        content = loadmat(str(path), variable_names=["S"])
    except Exception as exc:  # scipy raises several types for a damaged or non-MATLAB file
        raise ValueError(f"could not read annotation {path}: {exc}") from exc
    if "S" not in content:
        raise ValueError(f"annotation {path} has no 'S' label map (COCO-Stuff-10k .mat files hold S)")
    labels = content["S"].astype(np.int64)
    return np.where(labels == 0, IGNORE_INDEX, labels - 1).astype(np.uint8)


def samples(root: Path | None, split: str) -> list[Sample]:
    root = require_root(root, "cocostuff10k", "images/, annotations/ and imageLists/")
    names = read_list(require(root / "imageLists" / f"{split}.txt", root, _ROOT_HINT))
    out = []
    for name in names:
        image, mask = root / "images" / f"{name}.jpg", root / "annotations" / f"{name}.mat"
        require(image, root, f"imageLists/{split}.txt lists '{name}' but its image is missing")
        require(mask, root, f"imageLists/{split}.txt lists '{name}' but its annotation is missing")
        out.append(Sample(image, mask))
    return out


def build(root: Path | None, split: str, transform) -> SegmentationFiles:
    return SegmentationFiles(samples(root, split), read_label_mat, len(CLASS_NAMES), transform)
