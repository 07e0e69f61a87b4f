"""Embeds the demo photos with one TFLite runtime, or checks another runtime gives the same embeddings."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
MIN_COSINE = 0.98  # same int8 model, same inputs: only kernel rounding may differ between runtimes


def model_inputs(n: int) -> tuple[list[str], np.ndarray]:
    """``n`` demo catalog photos as the model's input: uint8 RGB [n, 224, 224, 3] (needs OpenCV)."""
    from pi_search import images
    from pi_search.model.framing import to_model_input

    paths = sorted((ROOT / "pi_search/data/demo/images").glob("*.jpg"))[:n]
    return [p.name for p in paths], np.stack([to_model_input(images.read(p), 224) for p in paths])


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--runtime", required=True, choices=["ai_edge_litert", "tflite_runtime"])
    group = ap.add_mutually_exclusive_group(required=True)
    group.add_argument("--save", type=Path, help="write inputs and embeddings here (.npz)")
    group.add_argument("--compare", type=Path, help="embed the inputs saved there and compare")
    ap.add_argument("-n", type=int, default=8)
    args = ap.parse_args()

    from pi_search.model.extractor import Extractor

    ex = Extractor(runtime=args.runtime)
    runtime = ex.info()["runtime"]
    if args.save:
        names, inputs = model_inputs(args.n)
        vectors = np.stack([ex.embed(x) for x in inputs])
        np.savez(args.save, names=np.array(names), inputs=inputs, vectors=vectors)
        print(f"{runtime['name']} {runtime['version']}: embedded {len(names)} photos -> {args.save}")
        return 0
    saved = np.load(args.compare)
    vectors = np.stack([ex.embed(x) for x in saved["inputs"]])
    cosines = np.sum(vectors * saved["vectors"], axis=1)
    print(f"{runtime['name']} {runtime['version']} vs saved: cosine min {cosines.min():.4f} "
          f"mean {cosines.mean():.4f} over {len(cosines)} photos")
    if cosines.min() < MIN_COSINE:
        print(f"FAIL: runtimes disagree (cosine below {MIN_COSINE})", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
