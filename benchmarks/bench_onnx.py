"""ONNX Runtime latency per image of exported PawFinder models on this machine's CPU.

    .venv/bin/python benchmarks/bench_onnx.py                                 # lite0 + lite2, 1/2 threads, batch 1/16
    .venv/bin/python benchmarks/bench_onnx.py --model path/to/model.onnx      # an existing export (no torch needed)

Prints one JSON object per (model, threads, batch): file size, median and p90 milliseconds per image, plus the
numpy preprocessing cost per image.
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np
from PIL import Image

from pawfinder.inference import OnnxClassifier
from pawfinder.preprocessing.numpy_ops import preprocess


def _export(backbone: str, out_dir: Path) -> Path:
    from pawfinder.models.backbones import build_model
    from pawfinder.models.onnx_export import export_onnx, metadata_for

    model = build_model(backbone, pretrained=backbone != "mobilenet_v2")
    return export_onnx(model, out_dir / f"{backbone}.onnx", metadata_for(model, "pawfinder"))


def _time_ms(fn, repeats: int) -> list[float]:
    samples = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        samples.append((time.perf_counter() - start) * 1000)
    return samples


def bench(path: Path, threads: int, batch: int, repeats: int) -> dict[str, object]:
    """Median/p90 ms per image of ``OnnxClassifier.run`` at one thread count and batch size."""
    classifier = OnnxClassifier.from_path(path, intra_op_threads=threads)
    size = classifier.metadata.preprocessing.crop_size
    inputs = np.random.default_rng(0).standard_normal((batch, 3, size, size), dtype=np.float32)
    for _ in range(3):
        classifier.run(inputs)
    per_image = sorted(ms / batch for ms in _time_ms(lambda: classifier.run(inputs), repeats))
    return {
        "model": path.name,
        "backbone": classifier.metadata.backbone,
        "size_mb": round(path.stat().st_size / 1e6, 2),
        "threads": threads,
        "batch": batch,
        "ms_per_image_median": round(statistics.median(per_image), 2),
        "ms_per_image_p90": round(per_image[int(0.9 * (len(per_image) - 1))], 2),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", type=Path, action="append", help="Existing .onnx file(s); default: export fresh.")
    parser.add_argument("--backbone", action="append", help="Backbones to export (default lite0 and lite2).")
    parser.add_argument("--threads", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--batch", type=int, nargs="+", default=[1, 16])
    parser.add_argument("--repeats", type=int, default=20)
    args = parser.parse_args()

    with tempfile.TemporaryDirectory(prefix="pf-bench-") as tmp:
        paths = args.model or [
            _export(b, Path(tmp)) for b in args.backbone or ["efficientnet_lite0", "efficientnet_lite2"]
        ]
        for path in paths:
            spec = OnnxClassifier.from_path(path).metadata.preprocessing
            photo = Image.fromarray(np.random.default_rng(0).integers(0, 255, (375, 500, 3), dtype=np.uint8))
            prep = statistics.median(_time_ms(lambda spec=spec, photo=photo: preprocess(photo, spec), 20))
            print(json.dumps({"model": path.name, "preprocess_ms_per_500x375_image": round(prep, 2)}), flush=True)
            for threads in args.threads:
                for batch in args.batch:
                    print(json.dumps(bench(path, threads, batch, args.repeats)), flush=True)


if __name__ == "__main__":
    main()
