"""The context of one job: what every experiment kind, analysis and method works with.

A ``JobContext`` holds the job's data, task, store, device, thread budget, reports and
history, and makes its models: the teacher (trained once through the store, or loaded), any
other model a method asks for, the student with the run's shared initial weights, and the
from-scratch baseline. It is the ``BuildContext`` methods are built from; it never imports a
method (one that needs a model distilled from another passes how to distill it).
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from omegaconf import DictConfig, OmegaConf
from torch import nn

import kdrun.data.views as views
from kdrun.data import DATASETS, DataBundle
from kdrun.engine import FitResult, fit, place_data, planned_steps
from kdrun.engine import distributed as dist_
from kdrun.engine.perf import Perf
from kdrun.engine.threads import ThreadBudget
from kdrun.errors import ConfigError
from kdrun.experiments.hydra_job import current_hydra_config
from kdrun.experiments.keys import baseline_key, model_key, store_notice, teacher_samples_key
from kdrun.experiments.reports import META_FIELDS, StageReport
from kdrun.experiments.specs import check_state, first_reason, load_hints, model_label
from kdrun.experiments.teachers import make_teacher
from kdrun.methods.base import Distiller
from kdrun.models import count_params
from kdrun.store import Artifact, ArtifactStore, CorruptArtifact, content_key
from kdrun.store.fingerprint import data_fingerprint
from kdrun.tasks import task_named

log = logging.getLogger("kdrun")


def job_threads(cfg: DictConfig, device: torch.device) -> ThreadBudget:
    """The job's thread budget, applied to this process: the one place a kind decides it
    (a multirun's joblib ``n_jobs`` shares the cores under ``runtime.num_threads=auto``)."""
    cache = Path(cfg.store_dir) / "threads.json"
    return ThreadBudget.for_job(cfg.runtime, device, current_hydra_config(), cache)


class JobContext:
    """Builds and trains the models of one job; the BuildContext handed to methods."""

    def __init__(
        self,
        cfg: DictConfig,
        run_dir: Path,
        device: torch.device,
        reporter,
        threads: ThreadBudget | None = None,
    ) -> None:
        self.cfg = cfg
        self.run_dir = run_dir
        self.device = device
        self.reporter = reporter
        self.store = ArtifactStore(cfg.store_dir)
        if dist_.current().is_main and (notice := store_notice(cfg.store_dir)):
            log.warning(notice)
        self.perf = Perf.from_config(cfg.runtime, device)
        self.task = task_named(DATASETS[cfg.dataset.name].task)
        loaded = self.task.load_data(cfg.dataset, load_hints(cfg))
        # the content of every file the loader read: once per job, in every store key
        self.data_fp: str = data_fingerprint(loaded)
        self._loaded, self._views = loaded, {}
        # the student's view: what the baseline and the student train and are tested on
        self.data: DataBundle = self.view_data(cfg.student)
        if self.teacher_data is not self.data:
            for role in ("teacher", "student"):
                self._check_takes_view(cfg[role])
        self.history: list[dict[str, Any]] = []
        self.reports: dict[str, StageReport] = {}
        self.teacher_keys: list[str] = []
        self.from_store: dict[str, bool] = {}  # artifact kind -> loaded (True) or built here
        self._teacher: nn.Module | None = None
        self._student_init: dict[str, torch.Tensor] | None = None
        self.should_stop: Callable[[], bool] = lambda: False
        self.dist = dist_.current()  # rank 0 alone writes the store and the run's files
        # without one handed down (a job's kind makes it with job_threads): the count in force
        cache = Path(cfg.store_dir) / "threads.json"
        self.threads = threads or ThreadBudget.in_force(cfg.runtime, device, cache)
        self.baseline_aside: dict[str, Any] | None = None  # set by kdrun.experiments.aside

    # views of the thread budget, by the names metrics.json gives them
    @property
    def thread_budget(self) -> int:
        return self.threads.budget

    @thread_budget.setter
    def thread_budget(self, n: int) -> None:
        self.threads.budget = n

    @property
    def stage_threads(self) -> dict[str, int]:
        return self.threads.stages

    @property
    def governors(self) -> dict[str, Any]:
        return self.threads.governors

    # ---- views -------------------------------------------------------------------------
    def view_data(self, model_cfg: DictConfig) -> DataBundle:
        """The job's data as the model of ``model_cfg`` sees it (its ``view``, kdrun.data.views;
        the same rows in every view), placed once per view."""
        role = str(model_cfg._key() or "model") if isinstance(model_cfg, DictConfig) else "model"
        name = views.resolve(self._loaded, model_cfg.get("view"), role, self.cfg.dataset.name)
        if name not in self._views:
            bundle = self._loaded
            if isinstance(bundle, DataBundle):
                bundle = views.select(bundle, name, self.cfg.dataset)
            self._views[name] = place_data(bundle, self.cfg.runtime.data_on_device, self.device)
        return self._views[name]

    def _check_takes_view(self, model_cfg: DictConfig) -> None:
        """A model that cannot read its view (a 5x5 convolution on 2x2 images) fails in one
        line now, not after the teacher has trained: one forward pass of two rows on the CPU,
        the random state left as it was."""
        d = self.view_data(model_cfg)
        with torch.random.fork_rng(devices=[]):
            try:
                model = self.task.build_model(model_cfg, d).eval()
                with torch.no_grad():
                    model(d.x_train[:2].cpu())
            except Exception as e:  # any failure to build or run is the model's misfit
                role, shape = model_cfg._key(), "x".join(map(str, d.in_shape))
                raise ConfigError(
                    f"{role}={model_cfg.name} cannot read the view {d.view} ({shape} inputs): "
                    f"{first_reason(e)}; choose another {role} (e.g. {role}=mlp) or view"
                ) from None

    @property
    def teacher_data(self) -> DataBundle:
        """The data on the teacher's view: what it trains, is tested and is cached on."""
        return self.view_data(self.cfg.teacher)

    # ---- training one stage ------------------------------------------------------------
    def build(self, model_cfg: DictConfig) -> nn.Module:
        """A model of the task on the data of its view, on its device, prepared for speed."""
        model = self.task.build_model(model_cfg, self.view_data(model_cfg)).to(self.device)
        return self.perf.prepare_model(model)

    def train(
        self,
        distiller: Distiller,
        recipe,
        stage: str,
        student: bool,
        seed: int | None = None,
        data: DataBundle | None = None,
        **kw,
    ) -> FitResult:
        """``engine.fit`` on the student's rows (``student``) or the teacher's, with the stage's
        thread count chosen and governed."""
        d = self.data if data is None else data
        rt = self.cfg.runtime
        steps = planned_steps(recipe, len(d.student_idx if student else d.teacher_idx))
        first = d.x_train
        self.threads.choose(stage, distiller.student, lambda: first[: recipe.batch_size])
        with self.reporter.stage(stage, steps) as hooks:
            hooks = self._govern(stage, hooks)
            return fit(
                distiller,
                d,
                recipe,
                stage=stage,
                seed=self.cfg.seed if seed is None else seed,
                train_idx=d.student_idx if student else d.teacher_idx,
                val_idx=d.student_val_idx if student else d.teacher_val_idx,
                amp=rt.amp,
                eval_batch_size=rt.eval_batch_size,
                perf=self.perf,
                should_stop=self.should_stop,
                resume=self.cfg.resume,
                val_score=self.task.val_score,
                selection=self.task.selection,
                **hooks,
                **kw,
            )

    def _govern(self, stage: str, hooks: dict[str, Any]) -> dict[str, Any]:
        return self.threads.govern(stage, hooks)

    # ---- evaluation ----------------------------------------------------------------------
    def evaluate(self, model: nn.Module) -> torch.Tensor:
        """The model's outputs on the test split."""
        rt = self.cfg.runtime
        return self.task.test_logits(model, self.data, rt.eval_batch_size, rt.amp)

    def test_metrics(self, model: nn.Module, data: DataBundle | None = None) -> dict[str, Any]:
        """The model's test metrics, on ``data`` (its view; default: the student's)."""
        rt = self.cfg.runtime
        d = self.data if data is None else data
        return self.task.test_metrics(model, d, rt.eval_batch_size, rt.amp)

    def test_scores(
        self, model: nn.Module, res: FitResult, data: DataBundle | None = None
    ) -> dict[str, Any]:
        """The task's test metrics of the selected weights (left loaded), the headline of the
        last epoch's, and the validation metric the selection used."""
        headline = self.task.headline
        last_epoch = res.history[-1]["epoch"] if res.history else None
        last = None
        if res.best_epoch != last_epoch:  # else the same weights: one test pass is enough
            model.load_state_dict(res.last_state)
            last = self.test_metrics(model, data)[headline]
        model.load_state_dict(res.best_state)
        best = self.test_metrics(model, data)
        return {
            **best,
            self.task.selection.name: res.best_val_acc,
            f"last_{headline}": best[headline] if last is None else last,
        }

    # ---- the store -----------------------------------------------------------------------
    def cached(
        self,
        kind: str,
        spec: dict[str, Any],
        build: Callable[[Path], tuple[Any, dict[str, Any]]],
        check: Callable[[Any], None] | None = None,
        collective: bool = False,
        record: bool = True,
        on_wait: Callable[[], None] | None = None,
    ) -> Artifact:
        """An artifact of the store, built once (by rank 0 alone, or by every rank with
        ``collective``: the one DDP-aware path); ``record``: note in ``from_store`` whether it
        was loaded."""
        art = dist_.get_or_build(
            self.store, self.dist, kind, spec, build, check, collective=collective, on_wait=on_wait
        )
        if record:
            self.from_store[kind] = art.from_cache
        return art

    def _stage_meta(self, model: nn.Module, cfg_m: DictConfig, res: FitResult) -> dict[str, Any]:
        return {
            "model": model_label(cfg_m),
            "params": count_params(model),
            **self.test_scores(model, res, self.view_data(cfg_m)),
            "best_epoch": res.best_epoch,
            "train_seconds": res.train_seconds,
            "history": res.history,
        }

    def stored_model(
        self,
        kind: str,
        spec: dict[str, Any],
        model: nn.Module,
        train: Callable[..., FitResult],
        stage: str | None = None,
        built_here: bool = False,
    ) -> tuple[nn.Module, StageReport]:
        """Train ``model`` once through the store (or load it); return it with its report.
        ``built_here``: a stored copy was built by this job (in a second process)."""

        def build(workdir: Path):
            res = train(workdir / "partial.pt", content_key(spec))
            meta = self._stage_meta(model, cfg_m, res)
            # its thread count orders its float sums: a job that loads it records it
            meta["threads"] = self.threads.stages.get(stage or kind, torch.get_num_threads())
            (workdir / "partial.pt").unlink(missing_ok=True)
            return res.best_state, meta

        cfg_m = spec["model_cfg"]
        spec = {k: v for k, v in spec.items() if k != "model_cfg"}
        art = self.cached(
            kind,
            spec,
            build,
            check=check_state(model),
            collective=True,  # every rank trains it (DDP); rank 0 stores it
            record=False,
            on_wait=lambda: log.info("waiting for another process building %s", kind),
        )
        model.load_state_dict(art.payload)
        meta = art.meta
        from_cache = art.from_cache and not built_here
        # Stored stages contribute their (stored) history rows too, so history.csv is whole.
        # (labelled with this job's stage: another job may have stored it under another role)
        self.history.extend(
            {**r, "stage": stage or r["stage"], "from_store": from_cache} for r in meta["history"]
        )
        self.from_store[stage or kind] = from_cache
        if "threads" in meta:  # the count it was trained at (a stored stage's too)
            self.threads.stages.setdefault(stage or kind, meta["threads"])
        scores = {k: v for k, v in meta.items() if k not in META_FIELDS}
        rep = StageReport(
            meta["model"],
            meta["params"],
            scores,
            meta["best_epoch"],
            meta["train_seconds"],
            from_cache,
            "store" if from_cache else "trained",
        )
        return model, rep

    # ---- BuildContext ----------------------------------------------------------------
    def teacher(self) -> nn.Module:
        if self._teacher is None:
            self._teacher = make_teacher(self)
        return self._teacher

    def model(
        self,
        model_cfg: DictConfig,
        role: str,
        teacher: nn.Module | None = None,
        seed: int | None = None,
        distill: Callable[[nn.Module, nn.Module], Distiller] | None = None,
    ) -> nn.Module:
        """Train (once, through the store) a model on hard labels, or distilled from
        ``teacher`` by ``distill(model, teacher)`` (the asking method's loss; its store key
        holds the run's T and alpha).

        ``seed`` (default: the run's) sets its init and batch order. Its report lands in
        ``self.reports[role]``; its key joins ``teacher_keys`` so that caches derived from it
        are keyed by it. The store holds it by what it is, not by ``role``, so e.g. an
        ensemble member with seed 1 is the teacher of the run with seed=1."""
        cfg = self.cfg
        if teacher is not None and distill is None:
            raise ValueError(f"model '{role}': a teacher was given but no distill(model, teacher)")
        if seed is None:  # the teacher has its own seed, so a sweep over `seed` shares it
            seed = cfg.teacher_seed if role == "teacher" and teacher is None else cfg.seed
        kind = "teacher" if teacher is None else "distilled"
        torch.manual_seed(seed)
        model = self.build(model_cfg)
        # a model used as built is keyed by its weights; one distilled from a teacher (e.g. a
        # teacher assistant) by its teachers and the run's T/alpha
        keys = list(self.teacher_keys) if teacher is not None else None
        spec = model_key(cfg, model_cfg, seed, self.data_fp, built=model, teacher_keys=keys)

        def train(ckpt: Path, fp: str) -> FitResult:
            if teacher is None or distill is None:
                d: Distiller = self.task.hard_distiller(model)
            else:
                d = distill(model, teacher)
            return self.train(
                d,
                model_cfg.train,
                role,
                student=False,
                checkpoint=ckpt,
                fingerprint=fp,
                seed=seed,
                data=self.view_data(model_cfg),
            )

        model, self.reports[role] = self.stored_model(
            kind, {**spec, "model_cfg": model_cfg}, model, train, stage=role
        )
        self.teacher_keys.append(f"{role}:{content_key(spec)}")
        return model

    def new_student(self, seed: int | None = None) -> nn.Module:
        """The student with this run's shared initial weights (the baseline starts from them);
        with ``seed``, a student initialised from that seed instead (e.g. a DML peer)."""
        if seed is not None:
            torch.manual_seed(seed)
            return self.build(self.cfg.student)
        if self._student_init is None:
            torch.manual_seed(self.cfg.seed + 1)  # differs from the teacher's init seed
            m = self.build(self.cfg.student)
            self._student_init = {k: v.detach().clone() for k, v in m.state_dict().items()}
            return m
        m = self.build(self.cfg.student)
        m.load_state_dict(self._student_init)
        return m

    def teacher_samples(
        self,
        teacher: nn.Module,
        opts: Any,
        sample: Callable[[nn.Module, torch.Tensor, Any, int, int], torch.Tensor],
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Sequences sampled once from the teacher by ``sample(teacher, windows, opts,
        batch_size, seed)`` (sequence-level KD), continuing windows of the transfer set; with
        each training row's sample (``pos``, cycling when fewer)."""
        d = self.data
        rows = d.student_idx.cpu()
        n = opts.samples or len(rows)
        windows = torch.cat([d.x_train[rows[:n]], d.y_train[rows[:n], -1:]], 1).cpu()
        spec = teacher_samples_key(self.cfg, self.teacher_keys[0], opts, self.data_fp)

        def check(t: Any) -> None:
            if not isinstance(t, torch.Tensor) or t.shape != windows.shape:
                raise CorruptArtifact("teacher samples do not match the transfer set")

        def build(_wd: Path):
            bs = max(1, self.cfg.runtime.eval_batch_size // 16)
            out = sample(teacher, windows, opts, bs, self.cfg.teacher_seed)
            return out, {"rows": len(out)}

        art = self.cached("teacher_samples", spec, build, check=check)
        pos = torch.zeros(len(d.x_train), dtype=torch.long)
        pos[rows] = torch.arange(len(rows)) % len(art.payload)
        return art.payload, pos

    # ---- the from-scratch baseline -------------------------------------------------------
    def baseline_spec(
        self, full_data: bool = False, epochs: int = 0
    ) -> tuple[dict[str, Any], DictConfig]:
        """The baseline's store key spec and its model config (see ``baseline``)."""
        s_cfg = self.cfg.student
        if epochs:  # full epochs: a cap on the student's epoch (steps_per_epoch) is not kept
            s_cfg = OmegaConf.merge(s_cfg, {"train": {"epochs": epochs, "steps_per_epoch": 0}})
        spec = baseline_key(self.cfg, s_cfg, self.data_fp, full_data)
        return spec, s_cfg

    def baseline(
        self, full_data: bool = False, epochs: int = 0, trained_aside: bool = False
    ) -> nn.Module:
        """The student trained from scratch on its transfer set; with ``full_data``, on the
        whole training split instead (the reference of the small-data experiments; its store
        key is that of an unrestricted run's baseline, so the two are shared). ``epochs`` > 0
        replaces the student recipe's epoch count, in epochs over every row. ``trained_aside``:
        this job trained it in a second process (kdrun.experiments.aside), so loading it from
        the store is no reuse."""
        model = self.new_student()
        spec, s_cfg = self.baseline_spec(full_data, epochs)
        stage = "full_baseline" if full_data else "baseline"

        def train(ckpt: Path, fp: str) -> FitResult:
            return self.train(
                self.task.hard_distiller(model),
                s_cfg.train,
                stage,
                student=not full_data,
                checkpoint=ckpt,
                fingerprint=fp,
            )

        n_rows = len(self.history)
        model, rep = self.stored_model(
            "baseline", {**spec, "model_cfg": s_cfg}, model, train, built_here=trained_aside
        )
        for row in self.history[n_rows:]:  # stored rows may carry the other stage name
            row["stage"] = stage
        self.reports[stage] = rep
        return model
