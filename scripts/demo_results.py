"""Markdown tables (mean ± std over seeds) of the demo recipes' metrics.json files.

    python scripts/demo_results.py ROOT

ROOT holds ROOT/<dataset>/<experiment>/<seed dir>/metrics.json, e.g. written by
    kdrun experiment=omit_class dataset=digits seed=0 hydra.run.dir=ROOT/digits/omit_class/seed0
"""

from __future__ import annotations

import json
import statistics
import sys
from pathlib import Path


def load(root: Path, ds: str, exp: str) -> list[dict]:
    runs = []
    for f in sorted((root / ds / exp).glob("*/metrics.json")):
        m = json.loads(f.read_text())
        if m.get("status") == "completed":
            runs.append(m)
    return runs


def get(m: dict, path: str):
    for k in path.split("."):
        m = m[k] if isinstance(m, dict) else m[int(k)]
    return m


def ms(runs: list[dict], path: str, pct: bool = True, digits: int = 1) -> str:
    vals = [get(m, path) for m in runs]
    vals = [v for v in vals if v is not None]
    if not vals:
        return "-"
    k = 100 if pct else 1
    mean = statistics.fmean(vals) * k
    sd = statistics.stdev(vals) * k if len(vals) > 1 else 0.0
    return f"{mean:.{digits}f} ± {sd:.{digits}f}"


def omitted_table(root: Path, exp: str) -> None:
    print(f"\n### {exp}: accuracy (%) on the full test set, mean ± std over seeds\n")
    print(
        "| data set | model | test acc | acc on unseen | bias | adjusted test acc "
        "| adjusted acc on unseen |"
    )
    print("|---|---|---|---|---|---|---|")
    for ds in ("digits", "fashion_mnist"):
        runs = load(root, ds, exp)
        if not runs:
            continue
        o = "omitted."
        n = f"{ds} ({len(runs)} seeds)"
        print(
            f"| {n} | teacher | {ms(runs, 'teacher.test_acc')} | "
            f"{ms(runs, o + 'teacher_acc_on_omitted')} | | | |"
        )
        print(
            f"| | scratch | {ms(runs, o + 'baseline_test_acc')} | "
            f"{ms(runs, o + 'baseline_acc_on_omitted')} | "
            f"{ms(runs, o + 'baseline_bias', False, 2)} | "
            f"{ms(runs, o + 'baseline_test_acc_adjusted')} | "
            f"{ms(runs, o + 'baseline_acc_on_omitted_adjusted')} |"
        )
        print(
            f"| | distilled (val-selected) | {ms(runs, o + 'student_test_acc')} | "
            f"{ms(runs, o + 'student_acc_on_omitted')} | {ms(runs, o + 'bias', False, 2)} | "
            f"{ms(runs, o + 'student_test_acc_adjusted')} | "
            f"{ms(runs, o + 'student_acc_on_omitted_adjusted')} |"
        )
        le = o + "last_epoch."
        print(
            f"| | distilled (last epoch) | {ms(runs, le + 'student_test_acc')} | "
            f"{ms(runs, le + 'student_acc_on_omitted')} | {ms(runs, le + 'bias', False, 2)} | "
            f"{ms(runs, le + 'student_test_acc_adjusted')} | "
            f"{ms(runs, le + 'student_acc_on_omitted_adjusted')} |"
        )
        cnt = runs[0]["omitted"]
        print(
            f"| | *(test images: {cnt['test_count']}, of unseen classes: "
            f"{cnt['test_count_omitted']})* | | | | | |"
        )


def small_table(root: Path, exp: str) -> None:
    print(f"\n### {exp}: test accuracy (%), mean ± std over seeds\n")
    print(
        "| data set | students' train set | scratch (subset) | distilled (subset) | "
        "distilled, last epoch | scratch (all data) | teacher | gap closed | "
        "gap closed, last epoch |"
    )
    print("|---|---|---|---|---|---|---|---|---|")
    for ds in ("digits", "fashion_mnist"):
        runs = load(root, ds, exp)
        if not runs:
            continue
        s = "small_data."
        sd = runs[0]["small_data"]
        size = f"{sd['train_size']} of {sd['full_train_size']}"
        print(
            f"| {ds} ({len(runs)} seeds) | {size} | {ms(runs, s + 'baseline_test_acc')} | "
            f"{ms(runs, s + 'student_test_acc')} | {ms(runs, s + 'student_test_acc_last_epoch')}"
            f" | {ms(runs, s + 'full_data_baseline_test_acc')} | "
            f"{ms(runs, s + 'teacher_test_acc')} | {ms(runs, s + 'gap_closed', True, 0)} | "
            f"{ms(runs, s + 'gap_closed_last_epoch', True, 0)} |"
        )


def soft_table(root: Path) -> None:
    print("\n### soft_targets: teacher over the test set, mean ± std over seeds\n")
    for ds in ("digits", "fashion_mnist"):
        runs = load(root, ds, "soft_targets")
        if not runs:
            continue
        temps = runs[0]["soft_targets"]["temperatures"]
        print(
            f"\n{ds} ({len(runs)} seeds): teacher {ms(runs, 'teacher.test_acc')}, scratch "
            f"{ms(runs, 'baseline.test_acc')}, distilled (T={runs[0]['T']:g}) "
            f"{ms(runs, 'student.test_acc')}, KD gain {ms(runs, 'kd_gain', True, 2)} points\n"
        )
        print("| T | " + " | ".join(f"{t:g}" for t in temps) + " |")
        print("|---|" + "---|" * len(temps))
        for who in ("teacher", "distilled", "scratch"):
            for key, lab in (
                ("mean_entropy", "entropy (nats)"),
                ("non_target_mass", "non-target mass"),
            ):
                cells = [
                    ms(runs, f"soft_targets.{who}.{key}.{i}", False, 3) for i in range(len(temps))
                ]
                print(f"| {who} {lab} | " + " | ".join(cells) + " |")


def main() -> None:
    root = Path(sys.argv[1] if len(sys.argv) > 1 else "outputs/demos")
    soft_table(root)
    omitted_table(root, "omit_class")
    small_table(root, "small_data")
    omitted_table(root, "two_classes")
    small_table(root, "two_classes")


if __name__ == "__main__":
    main()
