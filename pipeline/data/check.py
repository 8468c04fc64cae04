"""Read every sample of an on-disk dataset once, before any work, and report every problem at once.

Unreadable images and masks, masks of another size than their image, mask ids outside the class
list, and empty splits would otherwise surface one at a time, minutes into training, from inside a
data loader. A clean scan is remembered (``~/.cache/pipeline/data_checks``, or under
``$XDG_CACHE_HOME``), keyed by the dataset fingerprint and every file's size and modification time,
so an unchanged dataset is read once, and an edited file is read again.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections import defaultdict
from pathlib import Path

from pipeline.config import DataConfig
from pipeline.data.files import DatasetLayoutError, SegmentationFiles

MAX_FILES_NAMED = 5


class DatasetCheckError(DatasetLayoutError):
    """The dataset has unreadable or inconsistent samples; the message lists them all."""


def cache_dir() -> Path:
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "pipeline" / "data_checks"


def _scan_key(cfg: DataConfig, splits: dict[str, SegmentationFiles]) -> str:
    from pipeline.data import dataset_fingerprint

    digest = hashlib.sha256(dataset_fingerprint(cfg).encode())
    for name, dataset in splits.items():
        digest.update(name.encode())
        for sample in dataset.samples:
            for path in (sample.image, sample.mask):
                stat = path.stat()
                digest.update(f"{path}\0{stat.st_size}\0{stat.st_mtime_ns}\n".encode())
    return digest.hexdigest()


def check_dataset_files(cfg: DataConfig) -> int:
    """Scan both splits of an on-disk segmentation dataset; raise :class:`DatasetCheckError` naming
    every problem. Returns the number of samples read (0: nothing to check, or remembered clean)."""
    from pipeline.data import build_dataset

    if cfg.root is None:
        return 0  # generated datasets (synthetic) have no files to read; readers of real ones require a root
    splits: dict[str, SegmentationFiles] = {}
    problems: dict[str, list[tuple[Path, str]]] = defaultdict(list)
    layout_errors = []
    for split in ("train", "val"):
        try:
            dataset = build_dataset(cfg, split, augment=False)
        except DatasetLayoutError as exc:
            layout_errors.append(exc)
            problems["unusable split"].append((Path(split), str(exc)))
            continue
        if isinstance(dataset, SegmentationFiles):
            splits[split] = dataset
    if layout_errors and not splits:
        raise layout_errors[0]  # nothing readable at all (no root, no class list): the layout error says it
    if not splits:
        return 0
    remembered = None if problems else cache_dir() / f"{_scan_key(cfg, splits)}.json"
    if remembered is not None and remembered.is_file():
        return 0
    read = 0
    for split, dataset in splits.items():
        if len(dataset) == 0:
            problems["empty split"].append((Path(split), "no samples"))
        for index in range(len(dataset)):
            for kind, path, detail in dataset.problems(index):
                problems[kind].append((path, detail))
            read += 1
    if problems or remembered is None:
        raise DatasetCheckError(_describe(cfg, problems))
    remembered.parent.mkdir(parents=True, exist_ok=True)
    remembered.write_text(json.dumps({"dataset": cfg.dataset, "root": str(cfg.root), "samples": read}))
    return read


def _describe(cfg: DataConfig, problems: dict[str, list[tuple[Path, str]]]) -> str:
    total = sum(len(found) for found in problems.values())
    lines = [f"the {cfg.dataset} dataset at {cfg.root} has {total} problem(s); nothing was trained. Fix or remove "
             "these samples and run again:"]
    for kind, found in problems.items():
        named = "; ".join(f"{_relative(path, cfg.root)} ({detail})" for path, detail in found[:MAX_FILES_NAMED])
        more = f"; and {len(found) - MAX_FILES_NAMED} more" if len(found) > MAX_FILES_NAMED else ""
        lines.append(f"  {kind} ({len(found)}): {named}{more}")
    return "\n".join(lines)


def _relative(path: Path, root: Path | None) -> str:
    try:
        return path.relative_to(Path(root).expanduser()).as_posix() if root is not None else str(path)
    except ValueError:
        return str(path)
