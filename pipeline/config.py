"""Typed, validated pipeline configuration.

YAML file + dotted ``key=value`` overrides -> :class:`PipelineConfig`. Every model forbids
unknown keys, so a typo is an error that names the key and the closest valid one before any
work starts (:class:`ConfigError`).

This module is a leaf: it imports nothing of the project, so reading or gating a run never
imports torch. Names that registries define (datasets, backbones, tasks, distillation methods and
their options) are plain strings here; :func:`pipeline.orchestration.preflight.preflight` checks them, once,
before any work.
"""

from __future__ import annotations

import difflib
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator


class ConfigError(ValueError):
    """A configuration problem, worded for the person who wrote the config."""


class StrictModel(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, protected_namespaces=())


# --------------------------------------------------------------------------------------- run
class RunConfig(StrictModel):
    name: str = Field("default", pattern=r"^[A-Za-z0-9_.-]+$")
    seed: int = 0
    device: Literal["auto", "cpu", "cuda"] = "auto"
    # Deterministic kernels make CI gates tight; costs a little speed on GPU.
    deterministic: bool = True
    threads: int | None = Field(None, ge=1, description="torch intra-op threads; None = torch default")
    # Subnormal floats take a slow microcode path on x86. Flushing them saved 5-23 % of the default
    # teacher's 2-thread epoch time on an AVX2 EPYC; like the thread count, it can move the last bits
    # of a sum and so a trained number (docs/BENCHMARKS.md, section "Subnormal floats").
    flush_denormal: bool = Field(True, description="treat subnormal floats as zero on CPU (x86 FTZ/DAZ)")
    # Training speed on accelerators (all of it also runs on CPU; see pipeline/training.py).
    amp: Literal["none", "bf16", "fp16"] = Field("none", description="mixed precision; fp16 uses a GradScaler")
    channels_last: bool = Field(False, description="NHWC memory format (faster convolutions on tensor cores)")
    compile: bool = Field(False, description="torch.compile the training step's model")
    sync_batchnorm: bool = Field(False, description="SyncBatchNorm across ranks under torchrun (CUDA only)")


# -------------------------------------------------------------------------------------- data
class AugmentConfig(StrictModel):
    hflip: bool = True
    scale: tuple[float, float] = (0.75, 1.25)
    rotate_degrees: float = Field(0.0, ge=0, le=180)
    color_jitter: float = Field(0.2, ge=0, le=1)

    @field_validator("scale")
    @classmethod
    def _ordered(cls, v: tuple[float, float]) -> tuple[float, float]:
        if not 0 < v[0] <= v[1]:
            raise ValueError("scale must be (low, high) with 0 < low <= high")
        return v


class DataConfig(StrictModel):
    # Segmentation: synthetic (embedded), voc, cocostuff10k, cityscapes, folder (images/ + masks/).
    # Classification: synthetic_classification (embedded), cifar100 (cifar-100-python pickles under
    # root), image_folder (root/{train,val}/<class>/*.JPEG).
    dataset: str = Field("synthetic", description="a name of pipeline.data.DATASETS")
    root: Path | None = Field(None, description="real datasets: the folder holding the dataset's layout")
    image_size: int = Field(64, ge=32, description="training crop / synthetic image side, pixels")
    # Real datasets: split names as the dataset spells them; None = the dataset's usual train/val pair.
    train_split: str | None = Field(None, description="e.g. voc: train_aug | train; cocostuff10k: train")
    val_split: str | None = Field(None, description="e.g. voc: val; cocostuff10k: test; cityscapes: val")
    class_names_file: Path | None = Field(None, description="folder dataset: one class name a line "
                                                            "(default <root>/classes.txt)")
    val_max_side: int | None = Field(None, ge=32, description="resize val images so the longer side is this; "
                                                              "None = full resolution")
    val_batch_size: int = Field(32, ge=1, description="val batches of different-size images are padded with "
                                                      "the ignore label; 1 = exact full-image evaluation")
    pin_memory: bool = Field(True, description="page-locked host batches (CUDA only)")
    persistent_workers: bool = Field(True, description="keep DataLoader workers between epochs (workers > 0)")
    train_size: int = Field(2000, ge=1, description="synthetic dataset: images in the train split")
    val_size: int = Field(300, ge=1, description="synthetic dataset: images in the val split")
    seed: int = Field(0, description="synthetic dataset: generator seed (independent of run.seed)")
    shape_rotation: float = Field(180.0, ge=0, le=180, description="synthetic datasets: squares and triangles turn "
                                  "by at most this many degrees from their base orientation (180 = any; 0 = one "
                                  "orientation per shape, learnt in far fewer images)")
    augment: AugmentConfig = AugmentConfig()
    workers: int = Field(0, ge=0)


# ------------------------------------------------------------------------------------ models
class ModelConfig(StrictModel):
    arch: Literal["deeplabv3plus", "deeplabv3"] = "deeplabv3plus"
    backbone: str = Field("mobilenet_v2", description="a name of pipeline.models.backbones.BACKBONES")
    output_stride: Literal[8, 16] = 16
    aspp_channels: int = Field(256, ge=8)
    aspp_rates: tuple[int, int, int] = (6, 12, 18)
    decoder_channels: int = Field(256, ge=8, description="DeepLabV3+ decoder width (the TaT feature)")
    low_level_channels: int = Field(48, ge=4)
    separable: bool = Field(False, description="depthwise-separable 3x3 convs in ASPP and decoder (the DeepLabV3+ "
                            "paper's choice; dense 3x3 is the official TaT code's)")
    width_mult: float = Field(1.0, gt=0, description="MobileNetV2 width multiplier")
    dropout: float = Field(0.1, ge=0, lt=1)
    pretrained: Path | None = Field(None, description="local torchvision-format backbone weights")
    stem: Literal["imagenet", "cifar"] = Field(
        "imagenet", description="classification: 'cifar' = 3x3 stride-1 stem without max-pool, for 32x32 inputs")

    @model_validator(mode="after")
    def _width_only_for_mobilenet(self) -> "ModelConfig":
        if self.width_mult != 1.0 and self.backbone != "mobilenet_v2":
            raise ValueError("width_mult applies to backbone 'mobilenet_v2' only; remove it or set 1.0")
        return self


class TrainConfig(StrictModel):
    epochs: int = Field(10, ge=1)
    batch_size: int = Field(16, ge=1)
    optimizer: Literal["sgd", "adamw"] = "sgd"
    lr: float = Field(0.01, gt=0)
    momentum: float = Field(0.9, ge=0, lt=1)
    nesterov: bool = True
    weight_decay: float = Field(5e-4, ge=0)
    head_lr_mult: float = Field(10.0, gt=0, description="learning-rate multiplier of the head vs backbone")
    schedule: Literal["cosine", "poly", "constant"] = "cosine"
    warmup_steps: int = Field(0, ge=0)
    max_steps_per_epoch: int | None = Field(None, ge=1, description="cap steps per epoch (smoke runs)")
    max_images: int | None = Field(None, ge=2, description="train on the first N images of the train split only "
                                                           "(e.g. students with fewer labels than the teacher had); "
                                                           "None = all")
    eval_every: int = Field(1, ge=1, description="evaluate on val every N epochs and after the last one (a val "
                                                 "pass costs about half a training epoch on a 2-core CPU)")
    ema_decay: float | None = Field(None, gt=0, lt=1, description="keep an exponential moving average of the "
                                    "network's weights (timm's model EMA) and evaluate and ship it in place of the "
                                    "last weights; e.g. 0.99; None = off")
    precise_bn_batches: int = Field(0, ge=0, description="before each val evaluation, re-estimate the batch-norm "
                                    "statistics of the weights being evaluated over this many training batches "
                                    "(precise BN: Detectron2's PreciseBN hook, pycls); 0 = the running averages, "
                                    "which trail the weights while they still move")
    # Lets a sweep vary the student's seed while the teacher (keyed by run.seed) stays the same.
    seed: int | None = Field(None, description="seed of this training (init, batch order); None = run.seed")


def _fill_backbone(default: str) -> Any:
    """A partial ``model:`` section keeps its role's default backbone (teacher vs student)."""

    def fill(value: Any) -> Any:
        if isinstance(value, dict) and "backbone" not in value:
            return {"backbone": default, **value}
        return value

    return field_validator("model", mode="before")(lambda cls, value: fill(value))


class TeacherConfig(StrictModel):
    model: ModelConfig = ModelConfig(backbone="resnet50")
    train: TrainConfig = TrainConfig()
    _default_backbone = _fill_backbone("resnet50")


class StudentConfig(StrictModel):
    model: ModelConfig = ModelConfig(backbone="mobilenet_v2")
    # Shared by the baseline and the distilled student, so the comparison is like for like.
    train: TrainConfig = TrainConfig()
    _default_backbone = _fill_backbone("mobilenet_v2")


class BaselineConfig(StrictModel):
    enabled: bool = True


class MethodSpec(StrictModel):
    """One distillation method in the slot; its own options are validated by its registry entry."""

    model_config = ConfigDict(extra="allow", frozen=True)
    name: str
    weight: float | None = Field(None, ge=0, description="None = the method's default_weight (`python -m pipeline methods`)")

    @property
    def options(self) -> dict[str, Any]:
        return dict(self.model_extra or {})


class DistillConfig(StrictModel):
    methods: tuple[MethodSpec, ...] = (MethodSpec(name="kd", weight=1.0, temperature=4.0),)
    ce_weight: float = Field(1.0, ge=0, description="weight of the student's own cross-entropy")
    warmup_steps: int = Field(0, ge=0, description="ramp every distillation term linearly from 0 to its weight "
                                                   "over this many training steps; 0 = full weight from step 1")
    # The official TaT code keeps the teacher in train() mode (batch-stat BN); eval is the sane default.
    teacher_mode: Literal["eval", "train"] = "eval"

    @field_validator("methods", mode="after")
    @classmethod
    def _methods_once(cls, methods: tuple[MethodSpec, ...]) -> tuple[MethodSpec, ...]:
        names = [m.name for m in methods]
        if len(set(names)) != len(names):
            raise ValueError(f"each method may appear once; got {names}")
        return methods


# -------------------------------------------------------------------------------- deployment
class ExportConfig(StrictModel):
    # The dynamo exporter builds at opset >= 18 and cannot always convert down, so 18 is the floor.
    opset: int = Field(18, ge=18)
    dynamic: bool = Field(True, description="dynamic batch/height/width; False = static (1, 3, s, s)")
    argmax: bool = Field(False, description="add a second output with the per-pixel class id")
    simplify: bool = Field(False, description="run onnxslim; kept only when parity still holds")


class QuantizeConfig(StrictModel):
    """INT8 (ONNX Runtime static QDQ) and FP16 models derived from the FP32 export."""

    int8: bool = True
    fp16: bool = True
    calibration_images: int = Field(64, ge=1, description="training images (no augmentation) for INT8 ranges")
    # U8S8 is the fast kind on x86 (VNNI's u8 x s8 dot product); TensorRT needs S8 activations, so
    # an S8S8 twin is written for it whenever a TensorRT INT8 engine is asked for.
    activation_type: Literal["quint8", "qint8"] = "quint8"
    calibrate_method: Literal["minmax", "percentile", "entropy"] = "minmax"
    float_op_types: tuple[str, ...] = Field(("Resize",), description="op types kept in float")
    float_nodes: tuple[str, ...] = Field((), description="node names kept in float")
    float_classifier: bool = Field(True, description="keep the final classifier Conv in float")
    # Per-tensor weights are for targets whose INT8 kernels take one weight scale per layer (some
    # NPUs and DSPs); depthwise convolutions with batch norm folded in often lose accuracy that way.
    per_channel: bool = Field(True, description="one INT8 weight scale per output channel (false: one per layer)")
    reduce_range: bool | Literal["auto"] = Field(
        "auto", description="7-bit INT8 weights; auto = where the CPU that quantizes and validates is an x86 "
                            "without VNNI (AVX2-only), whose U8S8 kernels can saturate with full-range weights")


class QatConfig(StrictModel):
    """Quantization-aware fine-tuning of the distilled student (stage qat_student): fake quantization
    that matches the INT8 recipe, then a Q/DQ ONNX model of exactly the graph trained."""

    enabled: bool = False
    teacher: Literal["teacher", "float_student", "none"] = Field(
        "teacher", description="what the quantized student learns from: teacher = CE plus distill.methods against "
                               "the frozen teacher; float_student = logit KD from the frozen FP32 distilled student "
                               "(quantization-aware distillation), plus CE at qat.ce_weight; none = CE only "
                               "(quantization-aware training without a teacher). true/false = teacher/none")
    kd_temperature: float = Field(1.0, gt=0, description="float_student only: temperature of the logit KD")
    ce_weight: float = Field(0.0, ge=0, description="float_student only: weight of CE on the labels beside the KD")
    activation_type: Literal["auto", "quint8", "qint8"] = Field(
        "auto", description="activations simulated while training: quint8 (U8 asymmetric, ONNX Runtime on CPU), "
                            "qint8 (S8 symmetric, TensorRT); auto = quantize.activation_type")
    # A short fine-tune from the distilled weights at a low learning rate; batch norms stay frozen.
    train: TrainConfig = TrainConfig(epochs=2, optimizer="adamw", lr=1e-4, weight_decay=0.0, head_lr_mult=1.0)

    @property
    def reads_labels(self) -> bool:
        """Whether the QAT objective uses labels: all but pure distillation from the float student."""
        return self.teacher != "float_student" or self.ce_weight > 0

    @field_validator("teacher", mode="before")
    @classmethod
    def _teacher_from_bool(cls, value: Any) -> Any:
        return {True: "teacher", False: "none"}.get(value, value) if isinstance(value, bool) else value


class EngineConfig(StrictModel):
    """TensorRT engines built from the FP16 and Q/DQ INT8 ONNX models (skipped without TensorRT/CUDA)."""

    enabled: bool = True
    precisions: tuple[Literal["fp16", "int8"], ...] = ("fp16", "int8")
    # Optimisation profile, NCHW shapes; None = derived from data.image_size (s/2 .. 2s) and max_batch.
    min_shape: tuple[int, int, int, int] | None = None
    opt_shape: tuple[int, int, int, int] | None = None
    max_shape: tuple[int, int, int, int] | None = None
    max_batch: int = Field(8, ge=1)
    workspace_mb: int = Field(1024, ge=16)
    cache_dir: Path | None = Field(None, description="engine + timing cache; None = ~/.cache/pipeline/tensorrt")


class DeployConfig(StrictModel):
    enabled: bool = True


class ValidateConfig(StrictModel):
    max_images: int | None = Field(None, ge=1, description="val images for mIoU; None = whole split")
    parity_images: int = Field(8, ge=1, description="fixed saved inputs for the tensor-parity check")
    batch_size: int = Field(8, ge=1)
    atol: float = Field(1e-4, gt=0, description="max abs logit difference allowed")
    miou_tolerance: float = Field(0.05, ge=0, description="max mIoU drop (points) allowed vs PyTorch")
    # FP32 parity of the one dynamic model at several input sides and batch sizes; None = derived.
    parity_sizes: tuple[int, ...] | None = Field(None, description="input sides; None = (s, 1.5 s, 2 s), s = image_size")
    parity_batches: tuple[int, ...] = (1, 2)
    fp16_miou_tolerance: float = Field(0.3, ge=0, description="max mIoU drop (points) of FP16 back ends")
    int8_miou_tolerance: float = Field(1.0, ge=0, description="max mIoU drop (points) of INT8 back ends")
    # ONNX Runtime's TensorRT provider may run FP32 layers in TF32 on Ampere and newer GPUs (it has
    # no switch for it): its row is labelled tf32 and held to these instead of atol / miou_tolerance.
    tf32_atol: float = Field(1e-2, gt=0, description="max abs logit difference of TF32 back ends")
    tf32_miou_tolerance: float = Field(0.1, ge=0, description="max mIoU drop (points) of TF32 back ends")


class BenchmarkConfig(StrictModel):
    batch_size: int = Field(1, ge=1)
    warmup: int = Field(10, ge=0)
    min_iters: int = Field(50, ge=1)
    min_seconds: float = Field(2.0, ge=0)
    threads: int | None = Field(None, ge=1, description="intra-op threads for every backend; None = default")


class ReportConfig(StrictModel):
    samples: int = Field(4, ge=0, description="val images drawn in the picture grid")


# Model keys that only the segmentation head reads, and keys only classification reads.
SEGMENTATION_MODEL_KEYS = ("arch", "output_stride", "aspp_channels", "aspp_rates", "decoder_channels",
                           "low_level_channels", "separable", "dropout")
CLASSIFICATION_MODEL_KEYS = ("stem",)


class PipelineConfig(StrictModel):
    # What the pipeline trains and measures: per-pixel masks (mIoU) or one label per image (top-1/top-5).
    task: str = Field("segmentation", description="a name of pipeline.tasks.TASKS: segmentation | classification")
    run: RunConfig = RunConfig()
    data: DataConfig = DataConfig()
    teacher: TeacherConfig = TeacherConfig()
    student: StudentConfig = StudentConfig()
    baseline: BaselineConfig = BaselineConfig()
    distill: DistillConfig = DistillConfig()
    export: ExportConfig = ExportConfig()
    quantize: QuantizeConfig = QuantizeConfig()
    qat: QatConfig = QatConfig()
    engine: EngineConfig = EngineConfig()
    deploy: DeployConfig = DeployConfig()
    validate_: ValidateConfig = Field(ValidateConfig(), alias="validate")
    benchmark: BenchmarkConfig = BenchmarkConfig()
    report: ReportConfig = ReportConfig()

    model_config = ConfigDict(extra="forbid", frozen=True, populate_by_name=True)

    @model_validator(mode="after")
    def _models_fit_the_task(self) -> "PipelineConfig":
        foreign = SEGMENTATION_MODEL_KEYS if self.task == "classification" else CLASSIFICATION_MODEL_KEYS
        for role, model in (("teacher", self.teacher.model), ("student", self.student.model)):
            # Compared with the defaults (not fields_set) so a dumped, fully resolved config reloads.
            wrong = [k for k in foreign if getattr(model, k) != ModelConfig.model_fields[k].default]
            if wrong:
                raise ValueError(f"{role}.model.{wrong[0]} does not apply to task '{self.task}'; remove "
                                 f"{', '.join(f'{role}.model.{k}' for k in wrong)}")
        return self

    def to_dict(self) -> dict[str, Any]:
        """Plain, YAML/JSON-able dict with the user-facing key names."""
        return self.model_dump(mode="json", by_alias=True)

    def section(self, dotted: str) -> Any:
        """The resolved value at a dotted key of :meth:`to_dict` (used for stage fingerprints)."""
        value: Any = self.to_dict()
        for part in dotted.split("."):
            value = value[part]
        return value


# ------------------------------------------------------------------------------ loading
def parse_override(text: str) -> tuple[list[str], Any]:
    """``a.b.c=value`` -> (["a", "b", "c"], value parsed as YAML)."""
    if "=" not in text:
        raise ConfigError(f"override {text!r} is not of the form key=value (for example distill.ce_weight=0.5)")
    key, raw = text.split("=", 1)
    key = key.strip()
    if not key or any(not part for part in key.split(".")):
        raise ConfigError(f"override {text!r} has an empty key part; write it as section.key=value")
    return key.split("."), yaml.safe_load(raw) if raw.strip() else None


def apply_override(data: dict[str, Any], path: list[str], value: Any) -> None:
    node = data
    for depth, part in enumerate(path[:-1]):
        child = node.get(part)
        if child is None:
            child = node[part] = {}
        if not isinstance(child, dict):
            raise ConfigError(f"cannot set {'.'.join(path)}: {'.'.join(path[: depth + 1])} is not a section")
        node = child
    node[path[-1]] = value


def load_config(path: str | Path | None, overrides: list[str] | tuple[str, ...] = ()) -> PipelineConfig:
    """Read a YAML config (None = all defaults), apply overrides, validate."""
    data: dict[str, Any] = {}
    source = "defaults"
    if path is not None:
        path = Path(path)
        source = str(path)
        if not path.is_file():
            raise ConfigError(f"config file {path} does not exist; pass a YAML file such as configs/default.yaml")
        try:
            loaded = yaml.safe_load(path.read_text())
        except yaml.YAMLError as exc:
            raise ConfigError(f"{path} is not valid YAML: {exc}") from exc
        if loaded is not None and not isinstance(loaded, dict):
            raise ConfigError(f"{path} must hold a mapping of sections (run:, data:, ...), not {type(loaded).__name__}")
        data = loaded or {}
    for override in overrides:
        keys, value = parse_override(override)
        apply_override(data, keys, value)
    return validate_config(data, source)


def validate_config(data: dict[str, Any], source: str = "config") -> PipelineConfig:
    try:
        return PipelineConfig.model_validate(data)
    except ValidationError as exc:
        raise ConfigError(describe_validation_error(exc, source)) from None


def describe_validation_error(exc: ValidationError, source: str) -> str:
    lines = [f"{source}: invalid configuration"]
    for error in exc.errors():
        loc = [str(p) for p in error["loc"]]
        key = ".".join(loc) or "<root>"
        if error["type"] == "extra_forbidden":
            hint = _closest_key(loc)
            lines.append(f"  - unknown key '{key}'" + (f"; did you mean '{hint}'?" if hint else ""))
        else:
            got = error.get("input")
            shown = "" if isinstance(got, dict) else f" (got {got!r})"
            lines.append(f"  - {key}: {error['msg']}{shown}")
    return "\n".join(lines)


def _closest_key(loc: list[str]) -> str | None:
    """The valid dotted key closest to the misspelt last part of ``loc``."""
    model: type[BaseModel] | None = PipelineConfig
    for part in loc[:-1]:
        if part.isdigit() or model is None:
            return None
        field = _fields_by_name(model).get(part)
        annotation = getattr(field, "annotation", None)
        model = annotation if isinstance(annotation, type) and issubclass(annotation, BaseModel) else None
    if model is None:
        return None
    match = difflib.get_close_matches(loc[-1], list(_fields_by_name(model)), n=1, cutoff=0.5)
    return ".".join([*loc[:-1], match[0]]) if match else None


def _fields_by_name(model: type[BaseModel]) -> dict[str, Any]:
    return {(f.alias or name): f for name, f in model.model_fields.items()}


def dump_config(config: PipelineConfig, path: Path) -> None:
    from pipeline.artifacts import atomic_write_text

    atomic_write_text(path, yaml.safe_dump(config.to_dict(), sort_keys=False))


# Settings that never change a number in metrics.json: a run renamed or re-reported is the same run.
NOT_NUMBERS = (("run", "name"), ("report",))


def comparable_config(config: PipelineConfig) -> dict[str, Any]:
    """The resolved config without :data:`NOT_NUMBERS`: what ``config_fingerprint`` hashes."""
    data = config.to_dict()
    for path in NOT_NUMBERS:
        node = data
        for key in path[:-1]:
            node = node[key]
        node.pop(path[-1], None)
    return data
