#!/usr/bin/env python3
"""Run or benchmark the exported student on any box: needs only numpy and onnxruntime.

Optional: Pillow (read an image, write the mask as PNG); tensorrt + cuda-python (run a TensorRT
engine built for this exact GPU and TensorRT version). Settings (classes, mean/std, input size)
come from meta.json beside this script.

  python run_onnx.py                                  # FP32 model, random input, prints the classes
  python run_onnx.py --model student_int8.onnx --image photo.png --out mask.png
  python run_onnx.py --benchmark --min-seconds 5      # latency p50/p90/p95/p99/mean + throughput
  python run_onnx.py --providers CUDAExecutionProvider --model student_fp16.onnx --benchmark
  python run_onnx.py --engine student_fp16.engine --benchmark   # TensorRT (GPU only)
"""

from __future__ import annotations

import argparse
import ctypes
import json
import os
import platform
import sys
import time
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent


def load_meta(path: Path) -> dict:
    if not path.is_file():
        sys.exit(f"error: {path} not found; keep meta.json beside this script (or pass --meta)")
    return json.loads(path.read_text())


def read_image(path: Path, meta: dict, size: int | None) -> np.ndarray:
    try:
        from PIL import Image
    except ImportError:
        sys.exit("error: reading an image needs Pillow (pip install pillow); or run without --image for random input")
    image = Image.open(path).convert("RGB")
    if size:
        image = image.resize((size, size), Image.BILINEAR)
    x = np.asarray(image, dtype=np.float32) / 255.0
    x = (x - np.asarray(meta["mean"], np.float32)) / np.asarray(meta["std"], np.float32)
    return x.transpose(2, 0, 1)[None].copy()


def parse_shape(text: str) -> tuple[int, ...]:
    try:
        shape = tuple(int(v) for v in text.lower().split("x"))
    except ValueError:
        shape = ()
    if len(shape) != 4 or min(shape) < 1:
        sys.exit(f"error: --shape must look like 1x3x64x64, got {text!r}")
    return shape


class OrtRunner:
    def __init__(self, model: Path, providers: list[str], threads: int | None) -> None:
        import onnxruntime as ort

        missing = [p for p in providers if p not in ort.get_available_providers()]
        if missing:
            sys.exit(f"error: onnxruntime {ort.__version__} lacks {missing}; available: {ort.get_available_providers()}")
        options = ort.SessionOptions()
        if threads:
            options.intra_op_num_threads = threads
        self.session = ort.InferenceSession(str(model), sess_options=options, providers=providers)
        self.input = self.session.get_inputs()[0].name
        self.output = self.session.get_outputs()[0].name
        self.info = {"runtime": f"onnxruntime {ort.__version__}", "providers": self.session.get_providers(),
                     "model": model.name, "threads": threads or "default"}

    def __call__(self, x: np.ndarray) -> np.ndarray:
        return self.session.run([self.output], {self.input: x})[0]


class TensorRTRunner:
    """A TensorRT engine through cuda-python's runtime API (no torch needed).

    The stream and the buffers are made once: device buffers and pinned host buffers sized for the
    largest shape of the engine's optimisation profile (cudaFree would synchronise the device on
    every call; pageable memory makes the copies synchronous). ``close()`` (or ``with``) frees them.
    """

    def __init__(self, engine: Path) -> None:
        try:
            import tensorrt as trt
        except ImportError:
            sys.exit("error: --engine needs TensorRT (pip install tensorrt) on an NVIDIA GPU")
        try:
            from cuda.bindings import runtime as cudart
        except ImportError:
            try:
                from cuda import cudart
            except ImportError:
                sys.exit("error: --engine needs cuda-python (pip install cuda-python)")
        meta_path = engine.with_name(engine.name + ".json")
        if meta_path.is_file():
            built = json.loads(meta_path.read_text())
            if built.get("tensorrt_version") != trt.__version__:
                sys.exit(f"error: {engine.name} was built by TensorRT {built.get('tensorrt_version')}, this is "
                         f"{trt.__version__}; engines are not portable: rebuild it on this machine")
        self.trt, self.cudart = trt, cudart
        logger = trt.Logger(trt.Logger.WARNING)
        self.engine = trt.Runtime(logger).deserialize_cuda_engine(engine.read_bytes())
        if self.engine is None:
            sys.exit(f"error: TensorRT could not load {engine} (built for another GPU or version?)")
        self.context = self.engine.create_execution_context()
        names = [self.engine.get_tensor_name(i) for i in range(self.engine.num_io_tensors)]
        self.input = next(n for n in names if self.engine.get_tensor_mode(n) == trt.TensorIOMode.INPUT)
        self.outputs = [n for n in names if n != self.input]
        low, _, high = self.engine.get_tensor_profile_shape(self.input, 0)
        self.profile = (tuple(low), tuple(high))
        self.dtypes = {name: np.dtype(trt.nptype(self.engine.get_tensor_dtype(name))) for name in names}
        if not self.context.set_input_shape(self.input, self.profile[1]):
            raise RuntimeError(f"TensorRT refused the profile's own largest shape {self.profile[1]}")
        largest = {self.input: self.profile[1],
                   **{name: tuple(self.context.get_tensor_shape(name)) for name in self.outputs}}
        self.stream = self._check(cudart.cudaStreamCreate())
        self.device, self.host = {}, {}
        for name, shape in largest.items():
            nbytes = int(np.prod(shape)) * self.dtypes[name].itemsize
            self.device[name] = self._check(cudart.cudaMalloc(nbytes))
            pointer = self._check(cudart.cudaMallocHost(nbytes))
            self.host[name] = np.ctypeslib.as_array((ctypes.c_byte * nbytes).from_address(int(pointer)))
            self.context.set_tensor_address(name, int(self.device[name]))
        self.info = {"runtime": f"tensorrt {trt.__version__}", "model": engine.name,
                     "profile": {"min": list(self.profile[0]), "max": list(self.profile[1])}}

    def _check(self, result):
        err, *rest = result if isinstance(result, tuple) else (result,)
        if int(err) != 0:
            raise RuntimeError(f"CUDA error {err}")
        return rest[0] if rest else None

    def _host(self, name: str, shape: tuple[int, ...]) -> np.ndarray:
        count = int(np.prod(shape))
        return self.host[name].view(self.dtypes[name])[:count].reshape(shape)

    def __call__(self, x: np.ndarray) -> np.ndarray:
        cudart = self.cudart
        low, high = self.profile
        if len(x.shape) != len(low) or any(not lo <= d <= hi for d, lo, hi in zip(x.shape, low, high)):
            sys.exit(f"error: input shape {tuple(x.shape)} is outside the engine's profile (min {low}, max {high}); "
                     "rebuild the engine with a profile that covers it")
        if not self.context.set_input_shape(self.input, x.shape):
            raise RuntimeError(f"TensorRT refused input shape {tuple(x.shape)}")
        host_in = self._host(self.input, tuple(x.shape))
        host_in[...] = x
        copy_in, copy_out = cudart.cudaMemcpyKind.cudaMemcpyHostToDevice, cudart.cudaMemcpyKind.cudaMemcpyDeviceToHost
        self._check(cudart.cudaMemcpyAsync(self.device[self.input], host_in.ctypes.data, host_in.nbytes, copy_in,
                                           self.stream))
        if not self.context.execute_async_v3(self.stream):
            raise RuntimeError("TensorRT execution failed")
        first = self.outputs[0]
        host_out = self._host(first, tuple(self.context.get_tensor_shape(first)))
        self._check(cudart.cudaMemcpyAsync(host_out.ctypes.data, self.device[first], host_out.nbytes, copy_out,
                                           self.stream))
        self._check(cudart.cudaStreamSynchronize(self.stream))
        return host_out.astype(np.float32)

    def close(self) -> None:
        cudart = self.cudart
        for pointer in self.device.values():
            cudart.cudaFree(pointer)
        for array in self.host.values():
            cudart.cudaFreeHost(array.ctypes.data)
        self.device, self.host = {}, {}
        cudart.cudaStreamDestroy(self.stream)

    def __enter__(self) -> "TensorRTRunner":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def benchmark(run, x: np.ndarray, warmup: int, min_iters: int, min_seconds: float) -> dict:
    for _ in range(warmup):
        run(x)
    times: list[float] = []
    while len(times) < min_iters or sum(times) < min_seconds:
        start = time.perf_counter()
        run(x)
        times.append(time.perf_counter() - start)
    ms = np.asarray(times) * 1e3
    p50, p90, p95, p99 = np.percentile(ms, [50, 90, 95, 99])
    return {"p50_ms": round(float(p50), 4), "p90_ms": round(float(p90), 4), "p95_ms": round(float(p95), 4),
            "p99_ms": round(float(p99), 4), "mean_ms": round(float(ms.mean()), 4), "iters": len(times),
            "throughput": round(x.shape[0] * len(times) / float(ms.sum() / 1e3), 2)}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--meta", type=Path, default=HERE / "meta.json")
    parser.add_argument("--model", type=Path, help="ONNX file (default: the FP32 model named in meta.json)")
    parser.add_argument("--engine", type=Path, help="TensorRT engine instead of an ONNX model")
    parser.add_argument("--providers", nargs="+", default=["CPUExecutionProvider"])
    parser.add_argument("--threads", type=int, help="onnxruntime intra-op threads (default: onnxruntime's)")
    parser.add_argument("--image", type=Path, help="image to segment (needs Pillow); default: random input")
    parser.add_argument("--resize", type=int, help="resize the image to SIDE x SIDE first")
    parser.add_argument("--shape", help="random input shape NxCxHxW (default: 1x3xSxS, S = meta input size)")
    parser.add_argument("--out", type=Path, help="write the class mask (.npy, or .png with Pillow); for a "
                                                 "classifier, the class id of each image (.npy)")
    parser.add_argument("--benchmark", action="store_true", help="time the model instead of a single run")
    parser.add_argument("--warmup", type=int, default=10)
    parser.add_argument("--min-iters", type=int, default=50)
    parser.add_argument("--min-seconds", type=float, default=2.0)
    args = parser.parse_args(argv)

    meta = load_meta(args.meta)
    if args.engine:
        run = TensorRTRunner(args.engine if args.engine.is_absolute() else HERE / args.engine)
    else:
        model = args.model or Path(meta["models"]["fp32"])
        run = OrtRunner(model if model.is_absolute() or model.exists() else HERE / model, args.providers, args.threads)

    if args.image:
        x = read_image(args.image, meta, args.resize)
    else:
        side = meta["input_size"][0]
        shape = parse_shape(args.shape) if args.shape else (1, 3, side, meta["input_size"][1])
        x = np.random.default_rng(0).standard_normal(shape).astype(np.float32)

    report = {**run.info, "input_shape": list(x.shape), "machine": platform.machine(),
              "cpu_count": os.cpu_count(), "python": platform.python_version(), "numpy": np.__version__}
    if args.benchmark:
        report["latency"] = benchmark(run, x, args.warmup, args.min_iters, args.min_seconds)
    logits = run(x)
    if hasattr(run, "close"):
        run.close()
    report["output_shape"] = list(logits.shape)
    if meta.get("task", "segmentation") == "classification":
        report.update(classify(logits, meta["class_names"], args.out))
    else:
        report.update(segment(logits, meta["class_names"], args.out))
    print(json.dumps(report, indent=2))
    return 0


def segment(logits: np.ndarray, class_names: list[str], out: Path | None) -> dict:
    """Per-pixel classes: how many pixels each class got; the mask to ``out`` (.png with Pillow, or .npy)."""
    labels = logits.argmax(1).astype(np.uint8 if len(class_names) <= 256 else np.int32)
    counts = np.bincount(labels.ravel(), minlength=len(class_names))
    report: dict = {"pixels_per_class": {name: int(n) for name, n in zip(class_names, counts) if n}}
    if out:
        if out.suffix.lower() == ".png":
            from PIL import Image

            Image.fromarray(labels[0]).save(out)
        else:
            np.save(out, labels)
        report["mask"] = str(out)
    return report


def classify(logits: np.ndarray, class_names: list[str], out: Path | None, top: int = 5) -> dict:
    """Per image: the top classes with their softmax probabilities; the class ids to ``out`` (.npy)."""
    shifted = np.exp(logits - logits.max(1, keepdims=True))
    probabilities = shifted / shifted.sum(1, keepdims=True)
    best = np.argsort(-probabilities, axis=1)[:, :top]
    report: dict = {"predictions": [[{"class": class_names[c], "probability": round(float(p[c]), 4)} for c in row]
                                    for row, p in zip(best, probabilities)]}
    if out:
        np.save(out, logits.argmax(1))
        report["classes"] = str(out)
    return report


if __name__ == "__main__":
    sys.exit(main())
