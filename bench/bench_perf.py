"""kdrun speed benchmark: every contender runs side by side in this one process.

    python bench/bench_perf.py                 # the four comparisons (< 15 min on 2 CPU cores)
    python bench/bench_perf.py --switches      # measured effect of each runtime.* switch
    python bench/bench_perf.py --quick         # 1 repetition, 1 epoch: checks the script works

On Fashion-MNIST, with the same teacher/student MLPs, epochs, batch size and optimiser for
every contender:
  1. kdrun's distilled-student epoch (cached teacher logits) vs its plain-student epoch;
  2. kdrun end to end (teacher + baseline + distilled student) vs a reference loop written
     the usual way (torchvision data set + DataLoader + ToTensor, teacher forward every step);
  3. kdrun vs torchdistill (optional: pip install 'kdrun[bench]') on the same recipe;
  4. the MLP student's training FLOP rate as a fraction of this machine's float32 matmul rate.
Times are medians over --reps repetitions, interleaved so that load changes hit every
contender alike. Nothing here is a test: speed is reported, not asserted.
"""

from __future__ import annotations

import argparse
import copy
import gzip
import io
import os
import platform
import shutil
import statistics
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

import numpy as np  # noqa: E402
import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402
from omegaconf import OmegaConf  # noqa: E402
from rich.console import Console  # noqa: E402

from bench.machine import machine_line  # noqa: E402
from kdrun.config import KdrunConfig  # noqa: E402
from kdrun.data import load_data  # noqa: E402
from kdrun.engine import Perf, fit  # noqa: E402
from kdrun.experiments.pipeline import Pipeline, resolve_device, run_pipeline  # noqa: E402
from kdrun.methods.base import HardLabels  # noqa: E402
from kdrun.models import MLP  # noqa: E402
from kdrun.report import Reporter  # noqa: E402

FASHION = Path(os.environ.get("KDRUN_FASHION", "/usr/share/datasets/fashion-mnist"))
IDX = [
    "train-images-idx3-ubyte",
    "train-labels-idx1-ubyte",
    "t10k-images-idx3-ubyte",
    "t10k-labels-idx1-ubyte",
]


@dataclass
class Recipe:
    """One recipe for every contender (teacher, baseline and student use the same one)."""

    teacher: list[int] = field(default_factory=lambda: [512, 512])
    student: list[int] = field(default_factory=lambda: [256])
    epochs: int = 4
    batch_size: int = 512  # large batches keep BLAS efficient; same for every contender
    eval_batch_size: int = 1024
    lr: float = 2e-3
    T: float = 4.0
    alpha: float = 0.9  # weight of the soft term
    val_size: int = 5000
    seed: int = 0


def median(xs: list[float]) -> float:
    return statistics.median(xs) if xs else float("nan")


# --------------------------------------------------------------------------- machine


def matmul_gflops(n: int = 2048, reps: int = 5) -> float:
    """float32 torch.mm rate on big square matrices, median of reps (the machine's 'peak')."""
    a, b = torch.randn(n, n), torch.randn(n, n)
    c = torch.empty(n, n)
    torch.mm(a, b, out=c)
    ts = []
    for _ in range(reps):
        t = time.perf_counter()
        torch.mm(a, b, out=c)
        ts.append(time.perf_counter() - t)
    return 2 * n**3 / median(ts) / 1e9


def mlp_train_flops(in_features: int, hidden: list[int], classes: int) -> int:
    """FLOPs of one sample's forward + backward through an MLP's linear layers: 2*in*out for
    the forward, as much for the weight gradient, as much again for the input gradient of
    every layer but the first (the images need none). Elementwise ops are not counted."""
    widths = [in_features, *hidden, classes]
    total = 0
    for i, (a, b) in enumerate(zip(widths[:-1], widths[1:], strict=True)):
        total += 2 * a * b * (2 if i == 0 else 3)
    return total


def mlp_forward_flops(in_features: int, hidden: list[int], classes: int) -> int:
    widths = [in_features, *hidden, classes]
    return sum(2 * a * b for a, b in zip(widths[:-1], widths[1:], strict=True))


def pipeline_flops(r: Recipe, n: int, n_val: int, n_test: int) -> float:
    """The matmul work any implementation of the job must do: train teacher, baseline and
    student for r.epochs (validating each epoch), one teacher pass over the transfer set,
    one test pass per model."""
    tt, tf = mlp_train_flops(784, r.teacher, 10), mlp_forward_flops(784, r.teacher, 10)
    st, sf = mlp_train_flops(784, r.student, 10), mlp_forward_flops(784, r.student, 10)
    epochs = r.epochs * (n * (tt + 2 * st) + n_val * (tf + 2 * sf))
    return epochs + n * tf + n_test * (tf + 2 * sf)


def machine_info(device: torch.device) -> str:
    parts = [
        machine_line(),
        f"torch threads {torch.get_num_threads()}, Python {platform.python_version()}, "
        f"device {device}",
    ]
    if device.type == "cuda":
        parts.append(f"GPU: {torch.cuda.get_device_name(device)}")
    return "\n".join(parts) + "\n"


# --------------------------------------------------------------------------- data


def torchvision_root(tmp: Path) -> Path:
    """torchvision's FashionMNIST wants root/FashionMNIST/raw/<uncompressed IDX files>."""
    raw = tmp / "FashionMNIST" / "raw"
    raw.mkdir(parents=True, exist_ok=True)
    for name in IDX:
        if (FASHION / name).is_file():
            shutil.copy(FASHION / name, raw / name)
        else:
            with gzip.open(FASHION / f"{name}.gz", "rb") as src, open(raw / name, "wb") as dst:
                shutil.copyfileobj(src, dst)
    return tmp


def kdrun_split(r: Recipe):
    """kdrun's train/val indices into the official training set and its normalisation."""
    cfg = OmegaConf.structured(KdrunConfig).dataset
    cfg.name, cfg.root, cfg.val_size = "fashion_mnist", str(FASHION), r.val_size
    perm = np.random.default_rng(cfg.split_seed).permutation(60000)
    val_idx, tr_idx = np.sort(perm[: r.val_size]), np.sort(perm[r.val_size :])
    bundle = load_data(cfg)
    assert len(bundle.y_train) == len(tr_idx)
    return tr_idx.tolist(), val_idx.tolist(), float(bundle.mean[0]), float(bundle.std[0])


# --------------------------------------------------------------------------- kdrun


def kdrun_cfg(r: Recipe, store: Path, device: str, threads: int):
    cfg = OmegaConf.structured(KdrunConfig)
    cfg.dataset.name, cfg.dataset.root, cfg.dataset.val_size = "fashion_mnist", str(FASHION), 5000
    for role, hidden in (("teacher", r.teacher), ("student", r.student)):
        m = cfg[role]
        m.name, m.hidden, m.dropout = "mlp", hidden, 0.0
        t = m.train
        t.epochs, t.batch_size, t.optimizer, t.lr = r.epochs, r.batch_size, "adam", r.lr
        t.weight_decay, t.schedule = 0.0, "cosine"
    cfg.T, cfg.alpha, cfg.seed = r.T, r.alpha, r.seed
    cfg.store_dir, cfg.device = str(store), device
    cfg.runtime.progress, cfg.runtime.num_threads = "off", threads
    cfg.runtime.eval_batch_size = r.eval_batch_size
    return cfg


def quiet_reporter() -> Reporter:
    return Reporter(Console(file=io.StringIO()), progress=False)


def run_kdrun(r: Recipe, tmp: Path, device: str, threads: int, amp: str = "auto") -> dict:
    store = Path(tempfile.mkdtemp(dir=tmp))  # a fresh store: nothing is reused between reps
    cfg = kdrun_cfg(r, store, device, threads)
    cfg.runtime.amp = amp
    t0 = time.perf_counter()
    m = run_pipeline(cfg, store / "run", quiet_reporter())
    sync()
    return {
        "seconds": time.perf_counter() - t0,
        "store": store,
        **{k: 100 * m[k]["test_acc"] for k in ("teacher", "baseline", "student")},
    }


def sync() -> None:
    if torch.cuda.is_available():
        torch.cuda.synchronize()


# --------------------------------------------------------------------------- reference loop


def run_reference(r: Recipe, root: Path, split, device: torch.device) -> dict:
    """Knowledge distillation written the usual way: torchvision data set, DataLoader with
    ToTensor + Normalize, teacher forward on every student step, best-val model selection."""
    import torchvision
    from torch.utils.data import DataLoader, Subset
    from torchvision import transforms

    tr_idx, val_idx, mean, std = split
    t0 = time.perf_counter()
    tf = transforms.Compose([transforms.ToTensor(), transforms.Normalize((mean,), (std,))])
    full = torchvision.datasets.FashionMNIST(str(root), train=True, transform=tf)
    test = torchvision.datasets.FashionMNIST(str(root), train=False, transform=tf)
    train, val = Subset(full, tr_idx), Subset(full, val_idx)

    def evaluate(model, ds) -> float:
        model.eval()
        correct = 0
        with torch.no_grad():
            for x, y in DataLoader(ds, batch_size=r.eval_batch_size):
                correct += (model(x.to(device)).argmax(1) == y.to(device)).sum().item()
        return 100 * correct / len(ds)

    def train_model(model, teacher=None) -> float:
        opt = torch.optim.Adam(model.parameters(), lr=r.lr)
        sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=r.epochs)
        best, best_state = -1.0, None
        for _ in range(r.epochs):
            model.train()
            for x, y in DataLoader(train, batch_size=r.batch_size, shuffle=True):
                x, y = x.to(device), y.to(device)
                out = model(x)
                loss = F.cross_entropy(out, y)
                if teacher is not None:
                    with torch.no_grad():
                        t_out = teacher(x)
                    soft = F.kl_div(
                        F.log_softmax(out / r.T, 1),
                        F.softmax(t_out / r.T, 1),
                        reduction="batchmean",
                    )
                    loss = r.alpha * r.T**2 * soft + (1 - r.alpha) * loss
                opt.zero_grad()
                loss.backward()
                opt.step()
            sched.step()
            acc = evaluate(model, val)
            if acc > best:
                best, best_state = acc, copy.deepcopy(model.state_dict())
        model.load_state_dict(best_state)
        return evaluate(model, test)

    torch.manual_seed(r.seed)
    teacher = MLP(784, r.teacher, 10, 0.0).to(device)
    student = MLP(784, r.student, 10, 0.0).to(device)
    baseline = copy.deepcopy(student)  # same initial weights as the distilled student
    out = {"teacher": train_model(teacher)}
    teacher.eval()
    out["baseline"] = train_model(baseline)
    out["student"] = train_model(student, teacher)
    sync()
    return {"seconds": time.perf_counter() - t0, **out}


# --------------------------------------------------------------------------- torchdistill


def torchdistill_available() -> str | None:
    try:
        import torchdistill  # noqa: F401
    except ImportError:
        return "torchdistill is not installed (pip install 'kdrun[bench]')"
    return None


def run_torchdistill(r: Recipe, root: Path, split, device: torch.device, tmp: Path) -> dict:
    """The same recipe through torchdistill's training and distillation boxes, configured by
    bench/torchdistill_fashion_mnist.yaml; the epoch loop follows its example script."""
    import logging

    from torch.utils.data import DataLoader, Subset
    from torchdistill.common import yaml_util
    from torchdistill.core.distillation import get_distillation_box
    from torchdistill.core.training import get_training_box

    logging.getLogger("torchdistill").setLevel(logging.WARNING)
    tr_idx, val_idx, mean, std = split
    text = (REPO / "bench" / "torchdistill_fashion_mnist.yaml").read_text()
    fill = {
        "ROOT": str(root),
        "MEAN": repr(mean),
        "STD": repr(std),
        "EPOCHS": r.epochs,
        "BATCH_SIZE": r.batch_size,
        "EVAL_BATCH_SIZE": r.eval_batch_size,
        "LR": r.lr,
        "T": r.T,
        "HARD_WEIGHT": round(1 - r.alpha, 10),
        "TEACHER_HIDDEN": r.teacher,
        "STUDENT_HIDDEN": r.student,
    }
    for k, v in fill.items():
        text = text.replace(f"@{k}@", str(v))
    path = tmp / "torchdistill.yaml"
    path.write_text(text)

    t0 = time.perf_counter()
    torch.manual_seed(r.seed)
    config = yaml_util.load_yaml_file(str(path))  # builds the data sets and the models
    datasets = config["datasets"]
    full = datasets["fashion_mnist/train_full"]
    datasets["fashion_mnist/train"] = Subset(full, tr_idx)
    datasets["fashion_mnist/val"] = Subset(full, val_idx)
    teacher = config["models"]["teacher_model"].to(device)
    student = config["models"]["student_model"].to(device)
    baseline = copy.deepcopy(student)

    def evaluate(model, loader) -> float:
        model.eval()
        correct = n = 0
        with torch.inference_mode():
            for x, y in loader:
                correct += (model(x.to(device)).argmax(1) == y.to(device)).sum().item()
                n += len(y)
        return 100 * correct / n

    def train(box, model) -> None:
        best, best_state = -1.0, None
        for epoch in range(box.num_epochs):
            box.pre_epoch_process(epoch=epoch)
            model.train()
            for x, y, supp in box.train_data_loader:
                loss = box.forward_process(x.to(device), y.to(device), supp)
                box.post_forward_process(loss=loss)
            acc = evaluate(model, box.val_data_loader)
            if acc > best:
                best, best_state = acc, copy.deepcopy(model.state_dict())
            box.post_epoch_process()
        model.load_state_dict(best_state)

    test_cfg = config["test_data_loader"]
    test_loader = DataLoader(datasets[test_cfg["dataset_id"]], **test_cfg["kwargs"])
    out = {}
    box = get_training_box(teacher, datasets, config["train_ce"], device, None, False, 1)
    train(box, teacher)
    out["teacher"] = evaluate(teacher, test_loader)
    box = get_training_box(baseline, datasets, config["train_ce"], device, None, False, 1)
    train(box, baseline)
    out["baseline"] = evaluate(baseline, test_loader)
    box = get_distillation_box(
        teacher, student, datasets, config["train_kd"], device, None, False, 1
    )
    train(box, student)
    out["student"] = evaluate(student, test_loader)
    sync()
    return {"seconds": time.perf_counter() - t0, **out}


# --------------------------------------------------------------------------- epochs


def epoch_times(r: Recipe, store: Path, device: str, threads: int, reps: int) -> dict:
    """Seconds per student epoch (training + validation) through kdrun's fit: plain (CE),
    distilled from cached teacher logits, distilled with a teacher forward per step."""
    cfg = kdrun_cfg(r, store, device, threads)
    cfg.student.train.epochs = 1
    p = Pipeline(cfg, store / "epochs", resolve_device(device), quiet_reporter())
    from kdrun.methods import METHODS

    dist = METHODS["kd"].build(cfg, p)  # the teacher comes from the store (already trained)
    cache = p.teacher_cache(dist)
    d = p.data
    init = copy.deepcopy(dist.student.state_dict())
    times: dict[str, list[float]] = {"plain": [], "kd_cached": [], "kd_teacher": []}
    peak = []  # measured between the epochs, under the same load as they are
    for _ in range(reps):
        for kind in times:
            peak.append(
                matmul_gflops() if p.device.type == "cpu" else 1e3 * cuda_matmul_tflops(p.device)
            )
            dist.student.load_state_dict(init)
            model = HardLabels(dist.student) if kind == "plain" else dist
            res = fit(
                model,
                d,
                cfg.student.train,
                stage=kind,
                seed=r.seed,
                train_idx=d.student_idx,
                val_idx=d.student_val_idx,
                teacher_cache=cache if kind == "kd_cached" else None,
                amp=cfg.runtime.amp,
                eval_batch_size=r.eval_batch_size,
                perf=p.perf,
            )
            times[kind].append(res.history[0]["seconds"])
    n, n_val = len(d.student_idx), len(d.student_val_idx)
    return {
        "n": n,
        "n_val": n_val,
        "peak": median(peak),
        **{k: median(v) for k, v in times.items()},
    }


# --------------------------------------------------------------------------- switches


def switch_effects(r: Recipe, device_name: str, threads: int, reps: int, tmp: Path) -> None:
    """Epoch seconds with each runtime.* switch off and on (training + validation)."""
    device = resolve_device(device_name)
    rows = []

    def epoch(
        model_kind: str, hidden, amp="off", n_threads=threads, limit=0, place="auto", **perf
    ) -> float:
        torch.set_num_threads(n_threads)
        cfg = kdrun_cfg(r, tmp, device_name, n_threads)
        cfg.dataset.limit_train = limit
        cfg.runtime.data_on_device = place
        if model_kind == "cnn":
            cfg.student.name, cfg.student.channels, cfg.student.train.batch_size = "cnn", hidden, 64
        cfg.student.train.epochs = 2
        data = Pipeline(cfg, tmp, device, quiet_reporter()).data
        pf = Perf(**perf)
        from kdrun.models import build_model

        ts = []
        for _ in range(reps):
            torch.manual_seed(0)
            m = pf.prepare_model(build_model(cfg.student, data.in_shape, 10).to(device))
            res = fit(
                HardLabels(m),
                data,
                cfg.student.train,
                stage="s",
                seed=0,
                train_idx=data.student_idx,
                val_idx=data.student_val_idx,
                amp=amp,
                perf=pf,
            )
            ts.append(res.history[-1]["seconds"])  # the 2nd epoch: after any compilation
        torch.set_num_threads(threads)
        return median(ts)

    cnn, limit, ncpu = [8, 16], 10000, os.cpu_count() or 1
    cases = [
        (
            f"num_threads 1 -> {ncpu} (MLP)",
            lambda: epoch("mlp", r.student, n_threads=1),
            lambda: epoch("mlp", r.student, n_threads=ncpu),
        ),
        (
            "channels_last (CNN [8,16])",
            lambda: epoch("cnn", cnn, limit=limit),
            lambda: epoch("cnn", cnn, limit=limit, channels_last=True),
        ),
        (
            "fused_optimizer (MLP)",
            lambda: epoch("mlp", r.student),
            lambda: epoch("mlp", r.student, fused_optimizer=True),
        ),
        (
            "amp=bf16 (MLP)",
            lambda: epoch("mlp", r.student),
            lambda: epoch("mlp", r.student, amp="bf16"),
        ),
        (
            "amp=bf16 (CNN [8,16], channels_last)",
            lambda: epoch("cnn", cnn, limit=limit, channels_last=True),
            lambda: epoch("cnn", cnn, limit=limit, channels_last=True, amp="bf16"),
        ),
        (
            "compile (MLP, inductor)",
            lambda: epoch("mlp", r.student),
            lambda: epoch("mlp", r.student, compile=True),
        ),
    ]
    if device.type == "cuda":
        cases.append(
            (
                "data_on_device host -> device (MLP)",
                lambda: epoch("mlp", r.student, place="host"),
                lambda: epoch("mlp", r.student, place="device"),
            )
        )
    print(f"\nruntime switches: seconds per epoch (2nd epoch, median of {reps}), on {device}")
    print(f"{'switch':<40} {'off':>8} {'on':>8} {'speed-up':>9}")
    for name, off, on in cases:
        try:
            a, b = off(), on()
        except Exception as e:  # e.g. inductor without a C++ compiler
            print(f"{name:<40} failed: {type(e).__name__}: {str(e).splitlines()[0][:60]}")
            continue
        rows.append((name, a, b))
        print(f"{name:<40} {a:8.3f} {b:8.3f} {a / b:8.2f}x", flush=True)


# --------------------------------------------------------------------------- main


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--epochs", type=int, default=None)
    ap.add_argument("--batch-size", type=int, default=None)
    ap.add_argument("--threads", type=int, default=0, help="torch threads (0 = all cores)")
    ap.add_argument("--device", default="auto")
    ap.add_argument("--no-torchdistill", action="store_true")
    ap.add_argument("--bf16", action="store_true", help="also run kdrun with runtime.amp=bf16")
    ap.add_argument("--switches", action="store_true", help="measure each runtime.* switch")
    ap.add_argument("--quick", action="store_true", help="1 rep, 1 epoch: a smoke run")
    args = ap.parse_args(argv)

    r = Recipe()
    if args.quick:
        args.reps, r.epochs = 1, 1
    r.epochs = args.epochs or r.epochs
    r.batch_size = args.batch_size or r.batch_size
    threads = args.threads or os.cpu_count() or 1
    torch.set_num_threads(threads)
    device = resolve_device(args.device)
    t_start = time.perf_counter()
    print(machine_info(device))
    tmp = Path(tempfile.mkdtemp(prefix="kdrun-bench-"))
    try:
        if args.switches:
            switch_effects(r, args.device, threads, args.reps, tmp)
            return 0
        return run_all(r, args, device, threads, tmp, t_start)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def run_all(r: Recipe, args, device: torch.device, threads: int, tmp: Path, t_start) -> int:
    print(
        f"recipe: teacher MLP {r.teacher}, student MLP {r.student}, {r.epochs} epochs per "
        f"model, batch {r.batch_size}, Adam lr {r.lr} cosine, T={r.T}, alpha={r.alpha}; "
        f"{args.reps} repetitions"
    )
    peak = [matmul_gflops()] if device.type == "cpu" else []
    root = torchvision_root(tmp / "tv")
    split = kdrun_split(r)  # also reads the IDX files once: every contender finds them cached
    td_missing = None if not args.no_torchdistill else "skipped (--no-torchdistill)"
    td_missing = td_missing or torchdistill_available()
    warm_up(device)
    results: dict[str, list[dict]] = {"kdrun": [], "reference": [], "torchdistill": []}
    if args.bf16:
        results["kdrun_bf16"] = []
    for rep in range(args.reps):
        results["kdrun"].append(run_kdrun(r, tmp, args.device, threads))
        if args.bf16:
            results["kdrun_bf16"].append(run_kdrun(r, tmp, args.device, threads, amp="bf16"))
        results["reference"].append(run_reference(r, root, split, device))
        if td_missing is None:
            try:
                results["torchdistill"].append(run_torchdistill(r, root, split, device, tmp))
            except Exception as e:  # report what could not run instead of dying
                td_missing = f"failed: {type(e).__name__}: {str(e).splitlines()[0][:120]}"
        line = ", ".join(f"{k} {v[-1]['seconds']:.1f}s" for k, v in results.items() if v)
        print(f"  rep {rep + 1}/{args.reps}: {line}", flush=True)
        if device.type == "cpu":
            peak.append(matmul_gflops())

    ep = epoch_times(r, results["kdrun"][0]["store"], args.device, threads, max(3, args.reps))
    if device.type != "cpu":
        peak = [ep["peak"]]

    def med(name: str, key: str) -> float:
        return median([x[key] for x in results[name]])

    print(f"\n== 1. distilled vs plain student epoch (kdrun, median of {max(3, args.reps)}) ==")
    print(f"plain student epoch            {ep['plain']:.3f} s")
    print(
        f"distilled, cached logits       {ep['kd_cached']:.3f} s   ratio "
        f"{ep['kd_cached'] / ep['plain']:.3f}  (target <= 1.10)"
    )
    print(
        f"distilled, teacher every step  {ep['kd_teacher']:.3f} s   ratio "
        f"{ep['kd_teacher'] / ep['plain']:.3f}  (what the cache saves)"
    )

    def versus(num: str, title: str, target: str, base: str = "kdrun") -> None:
        k_s, o_s = med(base, "seconds"), med(num, "seconds")
        print(f"\n== {title} (end to end, median of {len(results[num])}) ==")
        print(f"{'':14}{'seconds':>9}{'teacher':>9}{'baseline':>9}{'student':>9}  (test acc %)")
        for name in (base, num):
            print(
                f"{name:<14}{med(name, 'seconds'):9.1f}"
                + "".join(f"{med(name, k):9.2f}" for k in ("teacher", "baseline", "student"))
            )
        gap = max(abs(med(base, k) - med(num, k)) for k in ("teacher", "baseline", "student"))
        print(
            f"speed-up {o_s / k_s:.2f}x ({target}); largest test accuracy gap "
            f"{gap:.2f} points (target <= 0.5)"
        )

    # How close each contender runs to the machine's matmul rate over the job's FLOPs.
    floor = pipeline_flops(r, ep["n"], ep["n_val"], 10000) / 1e9
    pk = median(peak)
    print(
        f"\nthe job's matmul work: {floor:.0f} GFLOP = {floor / pk:.1f} s at the matmul rate "
        f"({pk:.1f} GFLOP/s); each contender's time is that floor times:"
    )
    for name, runs in results.items():
        if runs:
            print(f"  {name:<13} {med(name, 'seconds') / (floor / pk):5.2f}x")

    versus("reference", "2. kdrun vs reference loop", "target >= 3x")
    if args.bf16:
        versus(
            "reference",
            "2b. kdrun with runtime.amp=bf16 vs reference loop (fp32)",
            "target >= 3x",
            base="kdrun_bf16",
        )
    if results["torchdistill"]:
        versus("torchdistill", "3. kdrun vs torchdistill", "target >= 3x")
        if td_missing:
            print(f"torchdistill: {td_missing}")
    else:
        print(f"\n== 3. kdrun vs torchdistill ==\ntorchdistill: {td_missing}")

    # An epoch = the training steps + a forward pass over the validation split.
    fwd = mlp_forward_flops(784, r.student, 10)
    flops = mlp_train_flops(784, r.student, 10) + fwd * ep["n_val"] / ep["n"]
    print(f"\n== 4. MLP student throughput vs float32 matmul rate ({device}) ==")
    print(
        f"matmul rate {ep['peak']:.1f} GFLOP/s (float32 torch.mm, median of "
        f"{3 * max(3, args.reps)} runs between the epochs below, {threads} threads)"
    )
    for kind in ("plain", "kd_cached"):
        sps = ep["n"] / ep[kind]
        print(
            f"{kind:<10} {sps:10.0f} samples/s x {flops / 1e3:.1f} kFLOP/sample = "
            f"{sps * flops / 1e9:6.1f} GFLOP/s = {100 * sps * flops / 1e9 / ep['peak']:5.1f}% "
            f"of the matmul rate (target >= 50%)"
        )
    print(
        f"\nload average at end: {', '.join(f'{x:.1f}' for x in os.getloadavg())}; "
        f"total {time.perf_counter() - t_start:.0f} s"
    )
    return 0


def warm_up(device: torch.device) -> None:
    """Pay one-time costs (lazy imports, e.g. torch._dynamo on the first optimiser, BLAS and
    allocator start-up) before any contender is timed."""
    import torchvision  # noqa: F401

    m = MLP(784, [64], 10, 0.0).to(device)
    opt = torch.optim.Adam(m.parameters())
    F.cross_entropy(
        m(torch.randn(8, 784, device=device)), torch.zeros(8, dtype=torch.long, device=device)
    ).backward()
    opt.step()


def cuda_matmul_tflops(device: torch.device, n: int = 8192) -> float:
    a, b = torch.randn(n, n, device=device), torch.randn(n, n, device=device)
    torch.mm(a, b)
    torch.cuda.synchronize()
    t = time.perf_counter()
    for _ in range(10):
        torch.mm(a, b)
    torch.cuda.synchronize()
    return 10 * 2 * n**3 / (time.perf_counter() - t) / 1e12


if __name__ == "__main__":
    sys.exit(main())
