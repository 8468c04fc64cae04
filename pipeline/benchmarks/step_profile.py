"""Where a training step's time goes: teacher, student and distillation, split by part.

    python -m pipeline.benchmarks.step_profile [--config configs/default.yaml] [key=value ...] \
        [--threads 2] [--repeats 10] [--out exported/benchmarks/step_profile]

Writes ``step_profile.json`` and ``step_profile.md`` into ``--out``.

What is measured, at the config's batch size and image size, random weights and inputs:
- multiply-adds of one forward per image, by part (torch's FlopCounterMode);
- median wall time of forward + backward of each part on its own: the backbone on the images,
  ASPP on the backbone's deepest map, and the whole head (any arch: ASPP, decoder, upsampling and
  the cross-entropy) on that map and the stride-4 map, the decoder's share being head - ASPP; each
  part gets a detached copy of its real input, so its time is its own;
- forward + backward of every convolution on its own, on the input it gets in the model, and its
  forward alone: the costliest ones by name, shape, groups and dilation (a layer whose backward costs
  many times its forward is a kernel the CPU backend handles badly at that shape);
- the optimizer step, the whole plain training step, the teacher's no-grad forward, each
  distillation method's loss forward + backward on the real decoder features, and the whole
  distillation step. "other" is the whole step minus its parts (autograd and allocator work
  that belongs to no part).
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.utils.flop_counter import FlopCounterMode

from pipeline.benchmarks.common import machine, median_ms, train_step, write_results
from pipeline.reporting.tables import markdown_table


def part_macs(model: nn.Module, images: Tensor) -> dict[str, float]:
    """GMAC per image of one forward, by part (backbone, aspp, decoder) and in total."""
    counter = FlopCounterMode(display=False)
    with counter, torch.no_grad():
        model(images)
    per_module = counter.get_flop_counts()
    batch = images.shape[0]

    def gmac(key: str) -> float:
        return sum(per_module.get(key, {}).values()) / 2 / batch / 1e9

    total = sum(counter.get_flop_counts().get("Global", {}).values()) / 2 / batch / 1e9
    root = type(model).__name__
    backbone, aspp, head = gmac(f"{root}.backbone"), gmac(f"{root}.head.aspp"), gmac(f"{root}.head")
    return {"backbone": backbone, "aspp": aspp, "decoder": head - aspp, "total": total}


def backward_of(*outputs: Tensor) -> None:
    """Backward with a fixed unit gradient on every output (the parts' losses are irrelevant)."""
    torch.autograd.backward(list(outputs), [torch.ones_like(o) for o in outputs])


def model_parts(model: nn.Module, images: Tensor, targets: Tensor) -> dict[str, Callable[[], None]]:
    """Forward + backward of the backbone, of ASPP and of the whole head (ASPP, decoder, upsampling
    and the cross-entropy), each on a detached copy of its input; decoder = head - ASPP."""
    with torch.no_grad():
        features = model.backbone(images)
        high = model.neck(features["stage4"])
    high_in = high.detach().requires_grad_(True)
    low_in = features["stage1"].detach().requires_grad_(True)

    def backbone() -> None:
        out = model.backbone(images)
        backward_of(out["stage1"], out["stage4"])

    def aspp() -> None:
        backward_of(model.head.aspp(high_in))

    def head() -> None:
        logits, _ = model.head(high_in, low_in)
        logits = F.interpolate(logits, size=images.shape[-2:], mode="bilinear", align_corners=False)
        F.cross_entropy(logits, targets).backward()

    return {"backbone": backbone, "aspp": aspp, "head": head}


def convolution_costs(model: nn.Module, images: Tensor, device: torch.device, repeats: int, warmup: int,
                      top: int = 8) -> dict[str, Any]:
    """Each Conv2d timed alone on a detached copy of the input it receives in ``model``'s forward:
    the total and the ``top`` costliest by forward + backward."""
    convs = {name: module for name, module in model.named_modules() if isinstance(module, nn.Conv2d)}
    inputs: dict[str, Tensor] = {}

    def record(name: str) -> Callable[..., None]:
        def hook(_module: nn.Module, args: tuple[Tensor, ...], _output: Tensor) -> None:
            inputs.setdefault(name, args[0].detach())  # returns nothing: a hook's return value replaces the output
        return hook

    hooks = [module.register_forward_hook(record(name)) for name, module in convs.items()]
    with torch.no_grad():
        model(images)
    for hook in hooks:
        hook.remove()
    rows = []
    for name, conv in convs.items():
        x = inputs[name].clone().requires_grad_(True)

        def forward_backward(conv: nn.Module = conv, x: Tensor = x) -> None:
            out = conv(x)
            out.backward(torch.ones_like(out))

        def forward(conv: nn.Module = conv, x: Tensor = x) -> None:
            with torch.no_grad():
                conv(x)

        rows.append({"name": name, "input": list(x.shape), "groups": conv.groups, "dilation": list(conv.dilation),
                     "forward_backward_ms": median_ms(forward_backward, device, repeats, warmup)["median_ms"],
                     "forward_ms": median_ms(forward, device, repeats, warmup)["median_ms"]})
    rows.sort(key=lambda row: row["forward_backward_ms"], reverse=True)
    return {"forward_backward_ms": round(sum(r["forward_backward_ms"] for r in rows), 3),
            "forward_ms": round(sum(r["forward_ms"] for r in rows), 3), "count": len(rows), "costliest": rows[:top]}


def profile_model(role: str, model: nn.Module, images: Tensor, targets: Tensor, train_cfg: Any,
                  device: torch.device, repeats: int, warmup: int) -> dict[str, Any]:
    from pipeline.training import SupervisedObjective, build_optimizer

    task = SupervisedObjective(model).to(device).train()
    optimizer = build_optimizer(task, train_cfg)
    # One real step first so the optimizer has its state (AdamW's moments) before it is timed alone.
    train_step(task, optimizer, images, targets)()
    timings = {name: median_ms(part, device, repeats, warmup)["median_ms"]
               for name, part in model_parts(model, images, targets).items()}
    timings["decoder"] = round(timings.pop("head") - timings["aspp"], 3)
    timings["optimizer"] = median_ms(optimizer.step, device, repeats, warmup)["median_ms"]
    whole = median_ms(train_step(task, optimizer, images, targets), device, repeats, warmup)["median_ms"]
    timings["other"] = round(whole - sum(timings.values()), 3)
    convolutions = convolution_costs(model, images, device, repeats, warmup)
    model.eval()
    macs = part_macs(model, images[:1])
    model.train()
    print(f"[step profile] {role}: step {whole:.1f} ms, " + ", ".join(f"{k} {v:.1f}" for k, v in timings.items()))
    return {"step_ms": whole, "parts_ms": timings, "gmac_per_image": {k: round(v, 4) for k, v in macs.items()},
            "parameters": sum(p.numel() for p in model.parameters()), "convolutions": convolutions}


def profile_distillation(config: Any, teacher: nn.Module, student: nn.Module, images: Tensor, targets: Tensor,
                         device: torch.device, repeats: int, warmup: int) -> dict[str, Any]:
    from pipeline.builders import build_distiller
    from pipeline.training import build_optimizer

    distiller = build_distiller(config, teacher, student).to(device).train()
    optimizer = build_optimizer(distiller, config.student.train)

    def teacher_forward() -> None:
        with torch.no_grad():
            distiller.teacher.forward_features(images)

    with torch.no_grad():
        t_logits, t_feats = distiller.teacher.forward_features(images)
        s_logits, s_feats = distiller.student.forward_features(images)
    t_feats = {**t_feats, "logits": t_logits}
    s_feats = {name: value.detach().requires_grad_(True) for name, value in {**s_feats, "logits": s_logits}.items()}

    def method_step(method: nn.Module) -> Callable[[], None]:
        return lambda: method(s_feats, t_feats, targets).backward()

    methods = {f"loss {name}": median_ms(method_step(method), device, repeats, warmup)["median_ms"]
               for name, method in distiller.methods.items()}
    whole = median_ms(train_step(distiller, optimizer, images, targets), device, repeats, warmup)["median_ms"]
    result = {"step_ms": whole, "teacher_forward_ms": median_ms(teacher_forward, device, repeats, warmup)["median_ms"],
              "methods_ms": methods, "methods": [spec.name for spec in config.distill.methods]}
    print(f"[step profile] distillation: step {whole:.1f} ms, teacher forward {result['teacher_forward_ms']:.1f} ms, "
          + ", ".join(f"{k} {v:.1f} ms" for k, v in methods.items()))
    return result


def run(config_path: Path, overrides: list[str], device: torch.device, repeats: int, warmup: int) -> dict[str, Any]:
    from pipeline.builders import build_student, build_teacher
    from pipeline.config import load_config
    from pipeline.data import dataset_info

    config = load_config(config_path, overrides)
    torch.set_flush_denormal(config.run.flush_denormal)  # as the training stages run
    size, batch = config.data.image_size, config.student.train.batch_size
    torch.manual_seed(0)
    images = torch.randn(batch, 3, size, size, device=device)
    targets = torch.randint(0, dataset_info(config.data).num_classes, (batch, size, size), device=device)
    teacher, student = build_teacher(config).to(device), build_student(config).to(device)
    result: dict[str, Any] = {"config": str(config_path), "overrides": overrides, "batch_size": batch,
                              "image_size": size}
    for role, model, cfg in (("teacher", teacher, config.teacher), ("student", student, config.student)):
        result[role] = {"backbone": cfg.model.backbone, "aspp_channels": cfg.model.aspp_channels,
                        "decoder_channels": cfg.model.decoder_channels, "separable": cfg.model.separable,
                        **profile_model(role, model, images, targets, cfg.train, device, repeats, warmup)}
    result["distillation"] = profile_distillation(config, teacher, student, images, targets, device, repeats, warmup)
    distill_ms, plain_ms = result["distillation"]["step_ms"], result["student"]["step_ms"]
    result["distillation"]["step_over_plain_student_step"] = round(distill_ms / plain_ms, 3)
    return result


def markdown(result: dict[str, Any]) -> str:
    info = result["machine"]
    lines = ["# Training step profile", "", f"`{result['command']}`", "",
             f"Machine: {info['platform']}, {info.get('hardware', '')}, torch {info['versions']['torch']}, "
             f"{info['torch_threads']} threads; batch {result['batch_size']} at {result['image_size']} px, "
             "median of the repeats, forward + backward of each part on its own.", ""]
    rows = []
    for role in ("teacher", "student"):
        entry = result[role]
        parts, macs = entry["parts_ms"], entry["gmac_per_image"]
        name = (f"{role} {entry['backbone']}, ASPP {entry['aspp_channels']}, decoder {entry['decoder_channels']}"
                + (" separable" if entry["separable"] else ""))
        rows.append([name, entry["step_ms"], parts["backbone"], parts["aspp"], parts["decoder"], parts["optimizer"],
                     parts["other"], f"{macs['backbone']:.3f} / {macs['aspp']:.3f} / {macs['decoder']:.3f}",
                     f"{entry['parameters'] / 1e6:.2f}"])
    lines += [markdown_table(["model", "step ms", "backbone", "ASPP", "decoder", "optimizer", "other",
                              "GMAC/image backbone / ASPP / decoder", "M params"], rows), ""]
    for role in ("teacher", "student"):
        convs = result[role]["convolutions"]
        lines += [f"{role}: all {convs['count']} convolutions, each alone: forward + backward "
                  f"{convs['forward_backward_ms']:.1f} ms, forward {convs['forward_ms']:.1f} ms; the costliest:", "",
                  markdown_table(["convolution", "input", "groups", "dilation", "fwd + bwd ms", "fwd ms"],
                                 [[c["name"], "x".join(map(str, c["input"])), c["groups"],
                                   "x".join(map(str, c["dilation"])), c["forward_backward_ms"], c["forward_ms"]]
                                  for c in convs["costliest"]]), ""]
    dist = result["distillation"]
    lines += [markdown_table(["distillation step ms", "teacher forward ms",
                              *dist["methods_ms"].keys(), "distill step / plain student step"],
                             [[dist["step_ms"], dist["teacher_forward_ms"], *dist["methods_ms"].values(),
                               dist["step_over_plain_student_step"]]]), ""]
    return "\n".join(lines)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m pipeline.benchmarks.step_profile", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("overrides", nargs="*", metavar="key=value", help="overrides of --config")
    parser.add_argument("--config", type=Path, default=Path("configs/default.yaml"))
    parser.add_argument("--out", type=Path, default=Path("exported/benchmarks/step_profile"))
    parser.add_argument("--device", choices=("auto", "cpu", "cuda"), default="cpu")
    parser.add_argument("--threads", type=int, help="torch intra-op threads (CPU)")
    parser.add_argument("--repeats", type=int, default=10)
    parser.add_argument("--warmup", type=int, default=2)
    return parser


def main(argv: list[str] | None = None) -> int:
    from pipeline.environment import select_device

    args = build_parser().parse_args(argv)
    device = select_device(args.device)
    if args.threads:
        torch.set_num_threads(args.threads)
    result = run(args.config, list(args.overrides), device, args.repeats, args.warmup)
    result["command"] = "python -m pipeline.benchmarks.step_profile " + " ".join(
        argv if argv is not None else sys.argv[1:])
    result["machine"] = machine(device)
    write_results(args.out, "step_profile", result, markdown(result), "step profile")
    return 0


if __name__ == "__main__":
    sys.exit(main())
