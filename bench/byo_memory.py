"""Peak memory of an image-folder run held in memory (uint8) vs streamed from disk.

    python bench/byo_memory.py --write DIR          # Fashion-MNIST as a 70,000-PNG image folder
    python bench/byo_memory.py --measure DIR [overrides...]

--write reads the installed IDX files (/usr/share/datasets/fashion-mnist) and writes
DIR/train/<class>/*.png (60,000) and DIR/test/<class>/*.png (10,000). --measure runs the same
kdrun job twice, dataset.in_memory=true then false, each under a fresh parent process, and
prints the peak resident set size (ru_maxrss of that child) and wall time of each. Nothing is
asserted.
"""

from __future__ import annotations

import argparse
import gzip
import resource
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
from PIL import Image

FASHION = Path("/usr/share/datasets/fashion-mnist")
CLASSES = [
    "t-shirt",
    "trouser",
    "pullover",
    "dress",
    "coat",
    "sandal",
    "shirt",
    "sneaker",
    "bag",
    "ankle-boot",
]


def _idx(path: Path) -> np.ndarray:
    data = gzip.open(path, "rb").read()
    ndim = data[3]
    dims = np.frombuffer(data[4 : 4 + 4 * ndim], ">u4").astype(int)
    return np.frombuffer(data, np.uint8, offset=4 + 4 * ndim).reshape(dims)


def write(root: Path) -> None:
    for split, stem in (("train", "train"), ("test", "t10k")):
        x = _idx(FASHION / f"{stem}-images-idx3-ubyte.gz")
        y = _idx(FASHION / f"{stem}-labels-idx1-ubyte.gz")
        for c in CLASSES:
            (root / split / c).mkdir(parents=True, exist_ok=True)
        for i, (img, lab) in enumerate(zip(x, y, strict=True)):
            Image.fromarray(img).save(root / split / CLASSES[lab] / f"{i:05d}.png")
        print(f"{split}: {len(y)} images", flush=True)


def run_one(root: Path, in_memory: str, extra: list[str]) -> None:
    """One kdrun job as this process's only child: ru_maxrss of the children is its peak."""
    out = Path(f"/tmp/byo_memory_{in_memory}")
    argv = [
        sys.executable,
        "-m",
        "kdrun",
        f"dataset.root={root}",
        "dataset=image_folder",
        "runtime.num_threads=1",
        "teacher=mlp",
        "student=mlp",
        "teacher.train.epochs=1",
        "student.train.epochs=1",
        "baseline=false",
        "runtime.progress=off",
        f"dataset.in_memory={in_memory}",
        f"hydra.run.dir={out}",
        f"store_dir={out}/store",
        *extra,
    ]
    t0 = time.perf_counter()
    rc = subprocess.run(argv, capture_output=True, text=True)
    peak = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
    print(
        f"in_memory={in_memory}: rc={rc.returncode} peak RSS {peak / 1024:.0f} MiB, wall "
        f"{time.perf_counter() - t0:.1f}s",
        flush=True,
    )
    if rc.returncode:
        print(rc.stderr[-2000:])


def measure(root: Path, extra: list[str]) -> None:
    for in_memory in ("true", "false"):  # each in a fresh process: peaks do not mix
        subprocess.run(
            [sys.executable, __file__, "--one", in_memory, "--measure", str(root), *extra]
        )


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--write", type=Path)
    ap.add_argument("--measure", type=Path)
    ap.add_argument("--one", choices=["true", "false"])
    args, extra = ap.parse_known_args()
    if args.write:
        write(args.write)
    if args.measure and args.one:
        run_one(args.measure, args.one, extra)
    elif args.measure:
        measure(args.measure, extra)


if __name__ == "__main__":
    main()
