"""The ``distill`` kind: teacher -> from-scratch baseline -> distilled student -> report.

Teacher and baseline are artifacts of the content-addressed store, so a sweep trains each
once; the distilled student is the job's own. The baseline and the distilled student start
from the same initial weights and see the same batch order: their difference is the KD gain.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from omegaconf import DictConfig
from torch import nn

import kdrun.experiments.aside as aside
from kdrun.commands.export import PREPROCESSING_FILE, preprocessing_record
from kdrun.engine import FitResult, RowCache, resolve_device
from kdrun.engine import distributed as dist_
from kdrun.engine.perf import configure_backends
from kdrun.experiments.analyses import run_analyses
from kdrun.experiments.artifact_checks import outputs_check, reference_check
from kdrun.experiments.context import JobContext, job_threads
from kdrun.experiments.keys import (
    code_identity,
    model_code,
    teacher_logits_key,
    teacher_reference_key,
)
from kdrun.experiments.kinds import register_kind
from kdrun.experiments.specs import model_label, resumable_config
from kdrun.methods.base import Distiller, transfer_rows
from kdrun.models import count_params
from kdrun.report.evidence import paired_evidence
from kdrun.store import atomic_torch_save, atomic_write_json, content_key


class Pipeline(JobContext):
    """The distill kind's job: its context, plus the teacher-output caches, the distilled
    student and the baseline's second process (kdrun.experiments.aside)."""

    def __init__(self, *args: Any, **kw: Any) -> None:
        super().__init__(*args, **kw)
        self.aside_job: aside.Aside | None = None  # the baseline's process while it may run

    def _govern(self, stage: str, hooks: dict[str, Any]) -> dict[str, Any]:
        """The thread budget's governor, and while the baseline trains aside, the hooks that
        take its thread back when its process exits."""
        if not self.threads.governable(stage):
            return hooks
        governed_hooks = self.threads.govern(stage, hooks)
        if stage != "student" or self.aside_job is None:
            return governed_hooks
        return aside.reclaiming(governed_hooks, self.aside_job, lambda: self._thread_back(hooks))

    def _thread_back(self, hooks: dict[str, Any]) -> dict[str, Any]:
        """The baseline's process has exited: its thread is the student's again, under a
        governor over the whole budget (it times both counts and keeps the faster)."""
        self.threads.take_back(1, apply=False)
        return self.threads.governor("student", hooks)

    def teacher_cache(self, distiller: Distiller, data: Any = None) -> RowCache | None:
        """Teacher outputs for the student's transfer set (``data``'s rows: the distilled
        student's rows, unlabelled ones included), computed once and stored."""
        cfg, data = self.cfg, self.data if data is None else data
        # across views the teacher's outputs come from the cache alone: the student's batch
        # is not the teacher's input (kdrun.experiments.viewcheck refused what cannot cache)
        wanted = cfg.runtime.cache_teacher_logits or self.teacher_data is not self.data
        if not (distiller.cacheable and wanted) or data.augment:
            return None
        outputs_spec = distiller.teacher_output_spec()
        if outputs_spec is None:
            return None
        # One cache per (teachers, data, what the method caches): method options that only
        # shape the student's loss (DKD's beta, ...) are not in the key.
        code = code_identity(type(distiller))  # a plugin's method computes the outputs
        spec = teacher_logits_key(cfg, self.teacher_keys, outputs_spec, self.data_fp, code)
        x = self.teacher_data.x_train  # the teacher's view of the student's rows
        rows = data.student_idx.to(x.device)

        def outputs(r: torch.Tensor) -> Any:  # the frozen teacher, in eval mode
            return _float_rows(distiller.teacher_outputs(x.index_select(0, r).to(self.device)))

        def build(_workdir: Path):
            bs = cfg.runtime.eval_batch_size
            parts = [_cpu_rows(outputs(rows[i : i + bs])) for i in range(0, len(rows), bs)]
            return _cat_rows(parts), {"rows": len(rows)}

        # rank 0 computes it alone, in the batches of a single process: the same bytes
        check = outputs_check(outputs, rows, self._rtol(), "the teacher's outputs")
        art = self.cached("teacher_logits", spec, build, check)
        pos = torch.full((len(x),), -1, dtype=torch.long, device=x.device)
        pos[rows] = torch.arange(len(rows), device=x.device)
        # beside the data: rows are fetched with the batch
        return RowCache(_rows_to(art.payload, x.device), pos)

    def _rtol(self) -> float:
        """How far recomputed teacher outputs may differ from stored ones: CUDA's TF32
        matmuls and per-shape kernels differ by more than float32 rounding; a stale cache is
        off by far more."""
        return 1e-2 if self.device.type == "cuda" else 1e-3

    def teacher_reference(self, teacher: nn.Module) -> Any:
        """The teacher's test outputs students are compared with, once per teacher (store)."""
        d = self.teacher_data  # on its view: the same test rows as the student's
        n = len(d.y_test)
        spec = teacher_reference_key(self.cfg, self.teacher_keys[0], self.data_fp)
        rt = self.cfg.runtime
        # checked row by row against the teacher now: a stale or shifted reference is rebuilt
        check = reference_check(self.task, teacher, d, rt.amp, self._rtol())

        def build(_wd: Path):
            ref = self.task.teacher_reference(teacher, d, rt.eval_batch_size, rt.amp)
            return _cpu_rows(ref), {"rows": n, "data": self.data_fp}

        # evaluation is sharded over ranks: every rank builds with rank 0
        art = self.cached("teacher_test_logits", spec, build, check=check, collective=True)
        return art.payload

    def distill(self) -> tuple[Distiller, FitResult]:
        cfg = self.cfg
        method = self.task.methods[cfg.method.name]
        distiller = method.build(cfg, self).to(self.device)
        data = distiller.transfer_set(self.data, cfg.student.train.batch_size)
        cache = self.teacher_cache(distiller, data)
        ckpt_dir = self.run_dir / "checkpoints"
        fp = content_key(
            {"cfg": resumable_config(cfg), "teachers": self.teacher_keys, "init": "student"}
        )
        res = self.train(
            distiller,
            cfg.student.train,
            "student",
            student=True,
            data=data,
            teacher_cache=cache,
            checkpoint=ckpt_dir / "student.partial.pt",
            fingerprint=fp,
        )
        self.history.extend(res.history)
        return distiller, res


# ---- per-sample outputs: a tensor or a dict of tensors, first dim the sample ------------
def _float_rows(out: Any) -> Any:
    return out if isinstance(out, dict) else out.float()


def _cpu_rows(out: Any) -> Any:
    return {k: v.cpu() for k, v in out.items()} if isinstance(out, dict) else out.cpu()


def _rows_to(out: Any, device: torch.device) -> Any:
    return {k: v.to(device) for k, v in out.items()} if isinstance(out, dict) else out.to(device)


def _cat_rows(parts: list[Any]) -> Any:
    if isinstance(parts[0], dict):
        return {k: torch.cat([p[k] for p in parts]) for k in parts[0]}
    return torch.cat(parts)


def _student_report(p: Pipeline, distiller: Distiller, res: FitResult, ref: Any) -> dict[str, Any]:
    """The distilled student's test numbers (its last epoch's too)."""
    rt, student = p.cfg.runtime, distiller.student
    scores = p.test_scores(student, res)  # leaves the selected weights loaded
    sel = p.task.selection.name
    return {
        "model": model_label(p.cfg.student),
        "params": count_params(student),
        **scores,
        **p.task.compare(student, p.data, ref, rt.eval_batch_size, rt.amp),
        f"last_{sel}": res.last_val_acc,
        "best_epoch": res.best_epoch,
        "train_seconds": res.train_seconds,
        "resumed_from_epoch": res.resumed_from_epoch,
        "train_images_seen": distiller.real_images_seen(p.data),
    }


def _data_sizes(p: Pipeline) -> dict[str, Any]:
    sizes = {
        "train_size": len(p.data.y_train),
        "student_train_size": len(p.data.student_idx),
        # dataset.unlabelled_transfer: the distilled student's images without their labels
        "student_unlabelled_size": transfer_rows(p.data) - len(p.data.student_idx),
        # the value used: the checks resolved the recipe's auto for this method
        "unlabelled_transfer": str(p.cfg.dataset.get("unlabelled_transfer", "off")),
        "val_size": len(p.data.y_val),
        "student_val_size": len(p.data.student_val_idx),  # what the student is selected on
        "test_size": len(p.data.y_test),
        "num_classes": p.data.num_classes,
        # which view of each example each model read (kdrun.data.views)
        "views": {
            "teacher": getattr(p.teacher_data, "view", None),
            "student": getattr(p.data, "view", None),
        },
    }
    return {**sizes, **({"source": p.data.extra} if p.data.extra else {})}


def _baseline_report(p: Pipeline, baseline: nn.Module, ref: Any) -> dict[str, Any]:
    rt = p.cfg.runtime
    return {
        **p.reports["baseline"].as_dict(),
        **p.task.compare(baseline, p.data, ref, rt.eval_batch_size, rt.amp),
    }


def _paired_evidence(p: Pipeline, baseline: nn.Module, student: nn.Module) -> dict | None:
    """kd_gain's interval and p-value from both models' results on each test item (the same
    items: a paired test, kdrun.report.evidence); None for a task without per-item results."""
    if not hasattr(p.task, "test_outcomes"):
        return None
    rt = p.cfg.runtime
    base, stud = (
        p.task.test_outcomes(m, p.data, rt.eval_batch_size, rt.amp) for m in (baseline, student)
    )
    return paired_evidence(p.task.outcomes, base, stud)


def _cpu(model: nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.cpu() for k, v in model.state_dict().items()}


def _save_models(
    ckpt_dir: Path, teacher: nn.Module | None, baseline: nn.Module | None, res: FitResult
) -> None:
    """The run's own copies of its models. student.partial.pt stays until metrics.json says
    completed (job.py removes it then), so a kill before that still resumes the student.
    Rank 0 writes them for all ranks."""
    if not dist_.current().is_main:
        return
    if teacher is not None:
        atomic_torch_save(_cpu(teacher), ckpt_dir / "teacher.pt")
    atomic_torch_save(res.best_state, ckpt_dir / "student.pt")
    atomic_torch_save(res.last_state, ckpt_dir / "student_last.pt")
    if baseline is not None:
        atomic_torch_save(_cpu(baseline), ckpt_dir / "baseline.pt")


def _baseline_child(container: dict[str, Any], run_dir: str, result: Any, rows: Any) -> None:
    """aside's second process (spawn imports this module and calls it by name)."""
    aside.run_child(container, run_dir, result, rows, JobContext)


def _baseline_and_student(p: Pipeline) -> tuple[nn.Module | None, Distiller, FitResult]:
    """The baseline (if asked for) and the distilled student: one after the other, or side by
    side in two processes (kdrun.experiments.aside)."""
    if not (p.cfg.baseline and aside.wanted(p)):
        baseline = p.baseline() if p.cfg.baseline else None
        return (baseline, *p.distill())
    job = p.aside_job = aside.start(p, _baseline_child)
    p.threads.lend(1)  # the child has one of them (until it exits: Pipeline._thread_back)
    try:
        distiller, res = p.distill()
    except BaseException:
        aside.stop(job)
        raise
    finally:
        p.aside_job = None
        p.threads.take_back(1 if job.reclaimed_at is None else 0)
    return aside.finish(p, job), distiller, res


@register_kind("distill")
def run_pipeline(cfg: DictConfig, run_dir: Path, reporter, should_stop=None) -> dict[str, Any]:
    """Train everything one job needs and return its metrics (without run bookkeeping)."""
    device = dist_.current().place(resolve_device(cfg.device))  # cuda:LOCAL_RANK under DDP
    threads = job_threads(cfg, device)
    configure_backends(cfg.runtime.deterministic, device)
    p = Pipeline(cfg, run_dir, device, reporter, threads)
    if should_stop is not None:
        p.should_stop = should_stop
    # A method without a teacher (e.g. DML) gets no teacher stage and teacher-less metrics.
    teacher = p.teacher() if p.task.methods[cfg.method.name].needs_teacher else None
    baseline, distiller, res = _baseline_and_student(p)
    student = distiller.student
    # Test-set numbers, computed once here; model selection used validation only.
    ref = p.teacher_reference(teacher) if teacher is not None else None
    student_rep = _student_report(p, distiller, res, ref)
    effective = distiller.effective()
    metrics: dict[str, Any] = {
        "task": p.task.name,
        # What the method actually used: T/alpha it ignores are null, not the config's values
        "T": effective.get("T"),
        "alpha": effective.get("alpha"),
        "effective": effective,
        "teacher": p.reports["teacher"].as_dict() if teacher is not None else None,
        "baseline": None,
        "student": student_rep,
        "kd_gain": None,
        "from_store": p.from_store,
        "data": _data_sizes(p),
        "stage_labels": dict(distiller.stage_labels),
        "world_size": p.dist.world_size,
        "dist_backend": p.dist.backend,
        # runtime.num_threads resolved ("threads") and what each stage's thread governor did
        # after starting at that count ("threads_governor")
        **threads.summary(),
        "baseline_aside": p.baseline_aside,  # trained in a second process: how it went
        # what the models were trained on and with: two runs with the same fingerprint saw
        # the same bytes; the teacher's code identity (null for kdrun's own models)
        "data_fingerprint": p.data_fp,
        "teacher_code": model_code(cfg.teacher) if teacher is not None else None,
    }
    if baseline is not None:
        metrics["baseline"] = _baseline_report(p, baseline, ref)
        key, sign = p.task.headline, 1.0 if p.task.higher_is_better else -1.0
        metrics["kd_gain"] = sign * (student_rep[key] - metrics["baseline"][key])
        metrics["evidence"] = _paired_evidence(p, baseline, student)
    _save_models(run_dir / "checkpoints", teacher, baseline, res)
    # What `kdrun export` needs to rebuild and feed the student without loading the data.
    if p.dist.is_main:  # rank 0 writes the run's files for all ranks
        atomic_write_json(
            preprocessing_record(p.data, cfg.student), run_dir / "checkpoints" / PREPROCESSING_FILE
        )
    extra = getattr(distiller, "extra_metrics", None)
    if extra is not None:
        metrics.update(extra(p))
    metrics.update(run_analyses(p, teacher, student, baseline, metrics))
    metrics["_history"] = p.history
    return metrics
