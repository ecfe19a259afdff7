"""The pipeline of one job: teacher -> from-scratch baseline -> distilled student -> report.

Teacher and baseline are artifacts of the content-addressed store, so a sweep trains each
once; the distilled student is the job's own. The baseline and the distilled student start
from the same initial weights and see the same batch order: their difference is the KD gain.
"""

from __future__ import annotations

import hashlib
import logging
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from omegaconf import DictConfig, OmegaConf
from torch import nn

from kdrun.config import DatasetConfig, to_container
from kdrun.data import DATASETS, DataBundle, LoadHints, parse_size
from kdrun.engine import (
    FitResult,
    RowCache,
    ThreadGovernor,
    calibrated_threads,
    fit,
    governed,
    place_data,
    planned_steps,
    resolve_device,
    set_threads,
)
from kdrun.engine import distributed as dist_
from kdrun.engine.perf import Perf, configure_backends
from kdrun.errors import CheckpointError
from kdrun.experiments import aside
from kdrun.experiments.analyses import run_analyses
from kdrun.experiments.export import PREPROCESSING_FILE, preprocessing_record
from kdrun.experiments.kinds import register_kind
from kdrun.methods import Distiller
from kdrun.methods.kd import KD
from kdrun.methods.lm import teacher_samples
from kdrun.models import count_params, is_pretrained, preprocessing, weights_identity
from kdrun.store import (
    ArtifactStore,
    CorruptArtifact,
    atomic_torch_save,
    atomic_write_json,
    content_key,
    load_weights,
    sha256_file,
)
from kdrun.tasks import task_named

log = logging.getLogger("kdrun")


# Keys for models from outside kdrun, left out of store keys at their defaults so the keys of
# kdrun's own models (stored before these keys existed) stay what they were.
_EXTERNAL_DEFAULTS = {
    "arch": None,
    "weights": None,
    "path": None,
    "num_classes_from_data": False,
    "trust_remote_code": False,
    "finetune_epochs": 0,
    "_target_": None,
    "kwargs": {},
    "dim": 0,
}


def _model_spec(model_cfg: DictConfig, built: nn.Module | None = None) -> dict[str, Any]:
    """The model's part of a store key. A pretrained model is keyed by its weights' content
    (a file's or a save_pretrained directory's hash); one used as built
    (``teacher.pretrained=true``) has no file to hash, so with ``built`` (the model as built)
    the hash of its weights stands in."""
    spec = to_container(model_cfg)
    spec.pop("checkpoint", None)
    for k, default in _EXTERNAL_DEFAULTS.items():
        if spec.get(k, default) == default:
            spec.pop(k, None)
    ident = weights_identity(model_cfg)  # the weights' content, not their file name
    if ident:
        spec["weights"] = ident
        spec.pop("path", None)
    elif built is not None and is_pretrained(model_cfg):
        spec["state"] = state_digest(built)
    # absent unless set (older store keys stay valid), and beside weights it names nothing
    # more: teacher=hf_causal_lm teacher.path=M and the same with pretrained=true share a key
    if not spec.get("pretrained") or ident:
        spec.pop("pretrained", None)
    return spec


def state_digest(model: nn.Module) -> str:
    """sha256 of a model's weights (names, shapes and values): what a cache derived from a
    pretrained model is keyed by."""
    h = hashlib.sha256()
    for name, t in sorted(model.state_dict().items()):
        h.update(f"{name}:{tuple(t.shape)}:{t.dtype}".encode())
        h.update(t.detach().cpu().contiguous().view(torch.uint8).numpy().tobytes())
    return h.hexdigest()


def model_label(model_cfg: DictConfig) -> str:
    """The model's name in tables: kdrun's name, or e.g. torchvision:resnet18 / hf:vit-tiny."""
    if model_cfg.get("arch") and model_cfg.name in ("torchvision", "timm"):
        return f"{model_cfg.name}:{model_cfg.arch}"
    if model_cfg.name == "hf" and model_cfg.get("path"):
        return f"hf:{Path(model_cfg.path).name}"
    if model_cfg.name == "custom" and model_cfg.get("_target_"):
        return str(model_cfg._target_).rsplit(".", 1)[-1]
    return str(model_cfg.name)


def load_hints(cfg: DictConfig) -> LoadHints:
    """A pretrained teacher's preprocessing (the user's data follows it unless dataset.*
    says otherwise) and the memory limit above which the user's images stream from disk."""
    pre = preprocessing(cfg.teacher) if is_pretrained(cfg.teacher) else None
    return LoadHints(
        image_size=pre.image_size if pre else None,
        mean=pre.mean if pre else None,
        std=pre.std if pre else None,
        max_data_memory=parse_size(cfg.runtime.max_data_memory),
    )


def run_test_inputs(run_dir: Path, n: int) -> torch.Tensor:
    """The first ``n`` test inputs of a finished run's data, preprocessed as it trained
    (what `kdrun export` checks an ONNX file on)."""
    cfg = OmegaConf.load(Path(run_dir) / ".hydra" / "config.yaml")
    task = task_named(DATASETS[cfg.dataset.name].task)
    data = task.load_data(cfg.dataset, load_hints(cfg))
    return data.x_test[0:n]


# Text-corpus fields (task lm): in the key only when set away from their defaults, so the
# keys of image data sets stay as they were.
_TEXT_KEYS = ("glob", "tokenizer", "block_size", "stride", "test_size")


def data_spec(cfg: DictConfig, student: bool, content: Any = None) -> dict[str, Any]:
    """The data set fields that change what a model trained on it learns; ``content``: the
    data's fingerprint (the user's images and statistics, a text corpus's sha256)."""
    ds = cfg.dataset
    spec = {
        "name": ds.name,
        "val_size": ds.val_size,
        "val_max": ds.val_max,
        "split_seed": ds.split_seed,
        "augment": ds.augment,
        "crop_padding": ds.crop_padding,
        "hflip": ds.hflip,
        # limit_train changes the training data; limit_test the test numbers kept in meta.
        "limit_train": ds.limit_train,
        "limit_test": ds.limit_test,
    }
    defaults = DatasetConfig()
    spec.update({k: ds[k] for k in _TEXT_KEYS if ds[k] != getattr(defaults, k)})
    if student:
        spec.update(
            train_fraction=ds.train_fraction,
            omit_classes=list(ds.omit_classes),
            keep_classes=list(ds.keep_classes),
        )
    if content:
        spec["content"] = content
    return spec


def _first_reason(e: BaseException) -> str:
    """The informative line of an error: load_state_dict puts the reason on its second line."""
    lines = [ln.strip() for ln in str(e).strip().splitlines() if ln.strip()]
    if len(lines) > 1 and lines[0].startswith("Error(s) in loading state_dict"):
        lines = lines[1:]
    text = lines[0] if lines else type(e).__name__
    return text if len(text) <= 160 else text[:157] + "..."


def _check_state(model: nn.Module):
    def check(state: Any) -> None:
        if not isinstance(state, dict):
            raise CorruptArtifact("payload is not a state dict")
        try:
            model.load_state_dict(state)
        except RuntimeError as e:
            raise CorruptArtifact(_first_reason(e)) from None

    return check


def resumable_config(cfg: DictConfig) -> dict[str, Any]:
    """The config a checkpoint must match to be resumed: without switches that change no result."""
    c = to_container(cfg)
    # device: a job moved from cuda to cuda:1 (or to another node) resumes, not restarts
    for k in ("resume", "debug", "device"):
        c.pop(k, None)
    for k in ("progress", "dist_backend", "dist_timeout_s"):
        c.get("runtime", {}).pop(k, None)
    return c


_META_FIELDS = ("model", "params", "best_epoch", "train_seconds", "history", "source")


@dataclass
class StageReport:
    """What the report shows about one trained model: ``scores`` are the task's test
    metrics, ``last_<headline>`` (the last epoch's) and the validation metric it selected on."""

    model: str
    params: int
    scores: dict[str, Any]
    best_epoch: int
    train_seconds: float
    from_cache: bool = False
    source: str = "trained"  # trained | store | pretrained | checkpoint | finetuned

    @property
    def test_acc(self) -> float | None:
        return self.scores.get("test_acc")

    def as_dict(self) -> dict[str, Any]:
        return {
            "model": self.model,
            "params": self.params,
            **self.scores,
            "best_epoch": self.best_epoch,
            "train_seconds": self.train_seconds,
            "from_cache": self.from_cache,
            "source": self.source,
        }


class Pipeline:
    """Builds and trains the models of one job; the BuildContext handed to methods."""

    def __init__(self, cfg: DictConfig, run_dir: Path, device: torch.device, reporter) -> None:
        self.cfg = cfg
        self.run_dir = run_dir
        self.device = device
        self.reporter = reporter
        self.store = ArtifactStore(cfg.store_dir)
        self.perf = Perf.from_config(cfg.runtime, device)
        self.task = task_named(DATASETS[cfg.dataset.name].task)
        self.data: DataBundle = place_data(
            self.task.load_data(cfg.dataset, load_hints(cfg)), cfg.runtime.data_on_device, device
        )
        self.history: list[dict[str, Any]] = []
        self.reports: dict[str, StageReport] = {}
        self.teacher_keys: list[str] = []
        self.from_store: dict[str, bool] = {}  # artifact kind -> loaded (True) or built here
        self._teacher: nn.Module | None = None
        self._student_init: dict[str, torch.Tensor] | None = None
        self.should_stop = lambda: False
        self.dist = dist_.current()  # rank 0 alone writes the store and the run's files
        # runtime.num_threads=auto: each stage measures 1 thread against this budget, then
        # a governor re-decides while it trains.
        self.thread_budget = torch.get_num_threads()
        self.stage_threads: dict[str, int] = {}
        self.baseline_aside: dict[str, Any] | None = None  # kdrun.experiments.aside
        self.governors: dict[str, ThreadGovernor] = {}
        self.aside_job: aside.Aside | None = None  # the baseline's process while it may run

    # ---- helpers -------------------------------------------------------------------
    def _build(self, model_cfg: DictConfig) -> nn.Module:
        model = self.task.build_model(model_cfg, self.data).to(self.device)
        return self.perf.prepare_model(model)

    def _fit(
        self,
        distiller: Distiller,
        recipe,
        stage: str,
        student: bool,
        seed: int | None = None,
        data: DataBundle | None = None,
        **kw,
    ) -> FitResult:
        d = self.data if data is None else data
        rt = self.cfg.runtime
        steps = planned_steps(recipe, len(d.student_idx if student else d.teacher_idx))
        self._choose_threads(distiller.student, recipe.batch_size, stage)
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

    def _choose_threads(self, model: nn.Module, batch_size: int, stage: str) -> None:
        """runtime.num_threads=auto on a CPU: 1 thread or the whole budget, whichever trains
        this model faster (measured once per machine and model, remembered in the store)."""
        if str(self.cfg.runtime.num_threads) != "auto" or self.device.type != "cpu":
            return
        x = self.data.x_train[:batch_size]
        cache_file = Path(self.cfg.store_dir) / "threads.json"
        n = calibrated_threads(model, x, self.thread_budget, cache_file)
        torch.set_num_threads(n)
        self.stage_threads[stage] = n

    def _govern(self, stage: str, hooks: dict[str, Any]) -> dict[str, Any]:
        """The reporter's hooks, plus a thread governor's where the stage's count was chosen
        (auto, CPU) and can change: a budget above 1 and no runtime.deterministic (the
        governor's choices depend on timing, and the count can change float sums' order)."""
        if stage not in self.stage_threads or self.cfg.runtime.deterministic:
            return hooks
        governed_hooks = self._governed(stage, hooks) if self.thread_budget > 1 else hooks
        if stage != "student" or self.aside_job is None:
            return governed_hooks
        return aside.reclaiming(governed_hooks, self.aside_job, lambda: self._thread_back(hooks))

    def _governed(self, stage: str, hooks: dict[str, Any]) -> dict[str, Any]:
        start = 1 if torch.get_num_threads() == 1 else self.thread_budget
        self.governors[stage] = ThreadGovernor(self.thread_budget, start)
        return governed(hooks, self.governors[stage])

    def _thread_back(self, hooks: dict[str, Any]) -> dict[str, Any]:
        """The baseline's process has exited: its thread is the student's again, under a
        governor over the whole budget (it times both counts and keeps the faster)."""
        self.thread_budget += 1
        return self._governed("student", hooks)

    def evaluate(self, model: nn.Module) -> torch.Tensor:
        """The model's outputs on the test split."""
        rt = self.cfg.runtime
        return self.task.test_logits(model, self.data, rt.eval_batch_size, rt.amp)

    def test_metrics(self, model: nn.Module) -> dict[str, Any]:
        rt = self.cfg.runtime
        return self.task.test_metrics(model, self.data, rt.eval_batch_size, rt.amp)

    def _test_scores(self, model: nn.Module, res: FitResult) -> dict[str, Any]:
        """The task's test metrics of the selected weights (left loaded), the headline of the
        last epoch's, and the validation metric the selection used."""
        headline = self.task.headline
        last_epoch = res.history[-1]["epoch"] if res.history else None
        last = None
        if res.best_epoch != last_epoch:  # else the same weights: one test pass is enough
            model.load_state_dict(res.last_state)
            last = self.test_metrics(model)[headline]
        model.load_state_dict(res.best_state)
        best = self.test_metrics(model)
        return {
            **best,
            self.task.selection.name: res.best_val_acc,
            f"last_{headline}": best[headline] if last is None else last,
        }

    def _stage_meta(self, model: nn.Module, cfg_m: DictConfig, res: FitResult) -> dict[str, Any]:
        return {
            "model": model_label(cfg_m),
            "params": count_params(model),
            **self._test_scores(model, res),
            "best_epoch": res.best_epoch,
            "train_seconds": res.train_seconds,
            "history": res.history,
        }

    def _stored_model(
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
            (workdir / "partial.pt").unlink(missing_ok=True)
            return res.best_state, meta

        cfg_m = spec["model_cfg"]
        spec = {k: v for k, v in spec.items() if k != "model_cfg"}
        art = dist_.get_or_build(
            self.store,
            self.dist,
            kind,
            spec,
            build,
            check=_check_state(model),
            collective=True,  # every rank trains it (DDP); rank 0 stores it
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
        scores = {k: v for k, v in meta.items() if k not in _META_FIELDS}
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

    def data_spec(self, student: bool) -> dict[str, Any]:
        extra = self.data.extra  # the user's images' fingerprint, or a text corpus's sha256
        return data_spec(self.cfg, student, extra.get("content") or extra.get("files_sha256"))

    # ---- BuildContext ----------------------------------------------------------------
    def teacher(self) -> nn.Module:
        if self._teacher is None:
            self._teacher = self._make_teacher()
        return self._teacher

    def _make_teacher(self) -> nn.Module:
        tcfg = self.cfg.teacher
        if tcfg.checkpoint:
            model = self._teacher_from_file(tcfg)
            self._untrained_report(tcfg, model, True, "checkpoint")
            # Keyed by content, so overwriting the file never reuses stale cached logits.
            self.teacher_keys.append(f"file:{sha256_file(Path(tcfg.checkpoint).expanduser())}")
            return model
        if is_pretrained(tcfg):
            return self._pretrained_teacher()
        return self.model(tcfg, "teacher")

    def _untrained_report(
        self, tcfg: DictConfig, model: nn.Module, from_cache: bool, source: str
    ) -> None:
        """The report of a teacher kdrun did not train: test numbers only."""
        headline = self.task.headline
        scores = {
            **self.test_metrics(model),
            self.task.selection.name: float("nan"),
            f"last_{headline}": float("nan"),
        }
        self.reports["teacher"] = StageReport(
            model_label(tcfg), count_params(model), scores, 0, 0.0, from_cache, source
        )

    def _teacher_from_file(self, tcfg: DictConfig) -> nn.Module:
        model = self._build(tcfg)
        path = Path(tcfg.checkpoint).expanduser()
        if not path.is_file():
            raise CheckpointError(
                f"teacher.checkpoint={path} does not exist; give the path of a teacher.pt "
                f"from a kdrun run directory"
            )
        try:
            state = load_weights(path)
        except (CorruptArtifact, OSError, EOFError) as e:
            raise CheckpointError(
                f"teacher.checkpoint={path} cannot be loaded: {e}; give a teacher.pt from a "
                f"kdrun run directory (or a file saved with torch.save(model.state_dict()))"
            ) from None
        try:
            if not isinstance(state, dict):
                raise TypeError(f"it holds a {type(state).__name__}, not a state dict")
            model.load_state_dict(state)
        except Exception as e:
            first = _first_reason(e)
            raise CheckpointError(
                f"teacher.checkpoint={path} does not fit teacher={tcfg.name} on "
                f"{self.cfg.dataset.name} ({first}); check the teacher model and data set"
            ) from None
        return model

    def _pretrained_teacher(self) -> nn.Module:
        """A pretrained teacher (``is_pretrained``: weights=, an hf or hf_causal_lm directory,
        or teacher.pretrained=true) is evaluated, never retrained: its test numbers on this
        data set's test split are reported with source 'pretrained' and 0 s of training, and
        caches derived from it are keyed by its weights' content. With
        ``teacher.finetune_epochs=N`` it is fine-tuned first, through the store."""
        tcfg = self.cfg.teacher
        if tcfg.finetune_epochs > 0:
            ft = OmegaConf.merge(tcfg, {"train": {"epochs": tcfg.finetune_epochs}})
            model = self.model(ft, "teacher")
            self.reports["teacher"].source = "finetuned"
            return model
        model = self._build(tcfg)
        self._untrained_report(tcfg, model, False, "pretrained")
        self.teacher_keys.append(f"pretrained:{content_key(_model_spec(tcfg, model))}")
        return model

    def model(
        self,
        model_cfg: DictConfig,
        role: str,
        teacher: nn.Module | None = None,
        seed: int | None = None,
    ) -> nn.Module:
        """Train (once, through the store) a model on hard labels or distilled from a teacher.

        ``seed`` (default: the run's) sets its init and batch order. Its report lands in
        ``self.reports[role]``; its key joins ``teacher_keys`` so that caches derived from it
        are keyed by it. The store holds it by what it is, not by ``role``, so e.g. an
        ensemble member with seed 1 is the teacher of the run with seed=1."""
        cfg = self.cfg
        if seed is None:  # the teacher has its own seed, so a sweep over `seed` shares it
            seed = cfg.teacher_seed if role == "teacher" and teacher is None else cfg.seed
        kind = "teacher" if teacher is None else "distilled"
        torch.manual_seed(seed)
        model = self._build(model_cfg)
        spec = {
            "role": kind,
            "model": _model_spec(model_cfg, model),  # a model used as built: by its weights
            "data": self.data_spec(student=False),
            "seed": seed,
        }
        if teacher is not None:  # e.g. a teacher assistant: depends on its teacher and T/alpha
            spec.update(teacher_keys=list(self.teacher_keys), T=cfg.T, alpha=cfg.alpha)

        def train(ckpt: Path, fp: str) -> FitResult:
            if teacher is None:
                dist: Distiller = self.task.hard_distiller(model)
            else:
                dist = KD(model, teacher, cfg.T, cfg.alpha)
            return self._fit(
                dist,
                model_cfg.train,
                role,
                student=False,
                checkpoint=ckpt,
                fingerprint=fp,
                seed=seed,
            )

        model, self.reports[role] = self._stored_model(
            kind, {**spec, "model_cfg": model_cfg}, model, train, stage=role
        )
        self.teacher_keys.append(f"{role}:{content_key(spec)}")
        return model

    def new_student(self, seed: int | None = None) -> nn.Module:
        """The student with this run's shared initial weights (the baseline starts from them);
        with ``seed``, a student initialised from that seed instead (e.g. a DML peer)."""
        if seed is not None:
            torch.manual_seed(seed)
            return self._build(self.cfg.student)
        if self._student_init is None:
            torch.manual_seed(self.cfg.seed + 1)  # differs from the teacher's init seed
            m = self._build(self.cfg.student)
            self._student_init = {k: v.detach().clone() for k, v in m.state_dict().items()}
            return m
        m = self._build(self.cfg.student)
        m.load_state_dict(self._student_init)
        return m

    # ---- the stages ----------------------------------------------------------------
    def baseline_spec(
        self, full_data: bool = False, epochs: int = 0
    ) -> tuple[dict[str, Any], DictConfig]:
        """The baseline's store key spec and its model config (see ``baseline``)."""
        s_cfg = self.cfg.student
        if epochs:
            s_cfg = OmegaConf.merge(s_cfg, {"train": {"epochs": epochs}})
        data = self.data_spec(student=True)
        if full_data:
            data.update(train_fraction=1.0, omit_classes=[], keep_classes=[])
        spec = {
            "role": "baseline",
            "model": _model_spec(s_cfg),
            "data": data,
            "seed": self.cfg.seed,
        }
        return spec, s_cfg

    def baseline(
        self, full_data: bool = False, epochs: int = 0, trained_aside: bool = False
    ) -> nn.Module:
        """The student trained from scratch on its transfer set; with ``full_data``, on the
        whole training split instead (the reference of the small-data experiments; its store
        key is that of an unrestricted run's baseline, so the two are shared). ``epochs`` > 0
        replaces the student recipe's epoch count. ``trained_aside``: this job trained it in
        a second process (kdrun.experiments.aside), so loading it from the store is no reuse."""
        model = self.new_student()
        spec, s_cfg = self.baseline_spec(full_data, epochs)
        stage = "full_baseline" if full_data else "baseline"

        def train(ckpt: Path, fp: str) -> FitResult:
            return self._fit(
                self.task.hard_distiller(model),
                s_cfg.train,
                stage,
                student=not full_data,
                checkpoint=ckpt,
                fingerprint=fp,
            )

        n_rows = len(self.history)
        model, rep = self._stored_model(
            "baseline", {**spec, "model_cfg": s_cfg}, model, train, built_here=trained_aside
        )
        for row in self.history[n_rows:]:  # stored rows may carry the other stage name
            row["stage"] = stage
        self.reports[stage] = rep
        return model

    def teacher_cache(self, distiller: Distiller) -> RowCache | None:
        """Teacher outputs for the student's transfer set, computed once and stored."""
        cfg = self.cfg
        if not (distiller.cacheable and cfg.runtime.cache_teacher_logits) or self.data.augment:
            return None
        outputs_spec = distiller.teacher_output_spec()
        if outputs_spec is None:
            return None
        # One cache per (teachers, data, what the method caches): method options that only
        # shape the student's loss (DKD's beta, ...) are not in the key.
        spec = {
            "teachers": list(self.teacher_keys),
            "outputs": outputs_spec,
            "data": self.data_spec(student=True),
        }
        x = self.data.x_train
        rows = self.data.student_idx.to(x.device)

        def outputs(r: torch.Tensor) -> Any:  # the frozen teacher, in eval mode
            return _float_rows(distiller.teacher_outputs(x.index_select(0, r).to(self.device)))

        def build(_workdir: Path):
            bs = cfg.runtime.eval_batch_size
            parts = [_cpu_rows(outputs(rows[i : i + bs])) for i in range(0, len(rows), bs)]
            return _cat_rows(parts), {"rows": len(rows)}

        rtol = 1e-2 if self.device.type == "cuda" else 1e-3
        # rank 0 computes it alone, in the batches of a single process: the same bytes
        art = dist_.get_or_build(
            self.store, self.dist, "teacher_logits", spec, build, _cache_check(outputs, rows, rtol)
        )
        self.from_store["teacher_logits"] = art.from_cache
        pos = torch.full((len(x),), -1, dtype=torch.long, device=x.device)
        pos[rows] = torch.arange(len(rows), device=x.device)
        # beside the data: rows are fetched with the batch
        return RowCache(_rows_to(art.payload, x.device), pos)

    def teacher_reference(self, teacher: nn.Module) -> Any:
        """The teacher's test outputs students are compared with, once per teacher (store)."""
        n = len(self.data.y_test)
        spec = {"teacher": self.teacher_keys[0], "data": self.data_spec(student=False)}
        rt = self.cfg.runtime

        def check(t: Any) -> None:
            if _n_rows(t) != n:
                raise CorruptArtifact("teacher test outputs do not match the test split")

        def build(_wd: Path):
            ref = self.task.teacher_reference(teacher, self.data, rt.eval_batch_size, rt.amp)
            return _cpu_rows(ref), {"rows": n}

        art = dist_.get_or_build(
            self.store,
            self.dist,
            "teacher_test_logits",
            spec,
            build,
            check=check,
            collective=True,  # evaluation is sharded over ranks: every rank builds with rank 0
        )
        self.from_store["teacher_test_logits"] = art.from_cache
        return art.payload

    def teacher_samples(self, teacher: nn.Module, opts: Any) -> tuple[torch.Tensor, torch.Tensor]:
        """Sequences sampled once from the teacher (sequence-level KD), continuing windows of
        the transfer set; with each training row's sample (``pos``, cycling when fewer)."""
        d = self.data
        rows = d.student_idx.cpu()
        n = opts.samples or len(rows)
        windows = torch.cat([d.x_train[rows[:n]], d.y_train[rows[:n], -1:]], 1).cpu()
        spec = {
            "teacher": self.teacher_keys[0],
            "options": dict(vars(opts)),
            "data": self.data_spec(student=True),
        }

        def check(t: Any) -> None:
            if not isinstance(t, torch.Tensor) or t.shape != windows.shape:
                raise CorruptArtifact("teacher samples do not match the transfer set")

        def build(_wd: Path):
            bs = max(1, self.cfg.runtime.eval_batch_size // 16)
            out = teacher_samples(teacher, windows, opts, bs, self.cfg.teacher_seed)
            return out, {"rows": len(out)}

        art = self.store.get_or_build("teacher_samples", spec, build, check=check)
        self.from_store["teacher_samples"] = art.from_cache
        pos = torch.zeros(len(d.x_train), dtype=torch.long)
        pos[rows] = torch.arange(len(rows)) % len(art.payload)
        return art.payload, pos

    def distill(self) -> tuple[Distiller, FitResult]:
        cfg = self.cfg
        method = self.task.methods[cfg.method.name]
        distiller = method.build(cfg, self).to(self.device)
        cache = self.teacher_cache(distiller)
        ckpt_dir = self.run_dir / "checkpoints"
        fp = content_key(
            {"cfg": resumable_config(cfg), "teachers": self.teacher_keys, "init": "student"}
        )
        res = self._fit(
            distiller,
            cfg.student.train,
            "student",
            student=True,
            data=distiller.transfer_set(self.data, cfg.student.train.batch_size),
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


def _n_rows(out: Any) -> int | None:
    if isinstance(out, dict) and out and all(isinstance(v, torch.Tensor) for v in out.values()):
        sizes = {v.shape[0] for v in out.values()}
        return sizes.pop() if len(sizes) == 1 else None
    return out.shape[0] if isinstance(out, torch.Tensor) and out.dim() >= 1 else None


def _cache_check(outputs: Callable[[torch.Tensor], Any], rows: torch.Tensor, rtol: float):
    """A stored cache must be this teacher's outputs for these rows, row by row: recompute
    a spread of rows and compare the floating-point parts (a shifted or stale cache fails).
    ``rtol``: CUDA's TF32 matmuls and per-shape cuDNN algorithms differ from the batches the
    cache was built with by more than float32 rounding; a stale cache is off by far more."""

    def check(t: Any) -> None:
        n = len(rows)
        if _n_rows(t) != n:
            raise CorruptArtifact("teacher outputs do not match the student's training rows")
        stored = t if isinstance(t, dict) else {"": t}
        if not all(torch.isfinite(v.float()).all() for v in stored.values()):
            raise CorruptArtifact("teacher outputs contain NaN/inf")
        probe = torch.linspace(0, n - 1, min(n, 32)).long()
        fresh = _cpu_rows(outputs(rows[probe.to(rows.device)]))
        fresh = fresh if isinstance(fresh, dict) else {"": fresh}
        for k, v in fresh.items():
            if not v.is_floating_point():
                continue  # ids of near-tied top-k entries may swap between batch sizes
            old = stored[k][probe].float()
            tol = rtol * (1 + float(v.float().abs().max()))
            if v.shape != old.shape or not torch.allclose(v.float(), old, rtol=rtol, atol=tol):
                raise CorruptArtifact("teacher outputs differ from the teacher's outputs now")

    return check


def _student_report(p: Pipeline, distiller: Distiller, res: FitResult, ref: Any) -> dict[str, Any]:
    """The distilled student's test numbers (its last epoch's too)."""
    rt, student = p.cfg.runtime, distiller.student
    scores = p._test_scores(student, res)  # leaves the selected weights loaded
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
        "val_size": len(p.data.y_val),
        "test_size": len(p.data.y_test),
        "num_classes": p.data.num_classes,
    }
    return {**sizes, **({"source": p.data.extra} if p.data.extra else {})}


def _baseline_report(p: Pipeline, baseline: nn.Module, ref: Any) -> dict[str, Any]:
    rt = p.cfg.runtime
    return {
        **p.reports["baseline"].as_dict(),
        **p.task.compare(baseline, p.data, ref, rt.eval_batch_size, rt.amp),
    }


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


def _baseline_child(container: dict[str, Any], run_dir: str, result: Any) -> None:
    """aside's second process (spawn imports this module and calls it by name)."""
    aside.run_child(container, run_dir, result, Pipeline)


def _baseline_and_student(p: Pipeline) -> tuple[nn.Module | None, Distiller, FitResult]:
    """The baseline (if asked for) and the distilled student: one after the other, or side by
    side in two processes (kdrun.experiments.aside)."""
    if not (p.cfg.baseline and aside.wanted(p)):
        baseline = p.baseline() if p.cfg.baseline else None
        return (baseline, *p.distill())
    job = p.aside_job = aside.start(p, _baseline_child)
    p.thread_budget -= 1  # the child has one of them (until it exits: Pipeline._thread_back)
    torch.set_num_threads(p.thread_budget)
    try:
        distiller, res = p.distill()
    except BaseException:
        aside.stop(job)
        raise
    finally:
        p.aside_job = None
        p.thread_budget += 1 if job.reclaimed_at is None else 0
        torch.set_num_threads(p.thread_budget)
    return aside.finish(p, job), distiller, res


@register_kind("distill")
def run_pipeline(cfg: DictConfig, run_dir: Path, reporter, should_stop=None) -> dict[str, Any]:
    """Train everything one job needs and return its metrics (without run bookkeeping)."""
    device = dist_.current().place(resolve_device(cfg.device))  # cuda:LOCAL_RANK under DDP
    threads = set_threads(cfg.runtime.num_threads)
    configure_backends(cfg.runtime.deterministic, device)
    p = Pipeline(cfg, run_dir, device, reporter)
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
        "threads": {"job": threads, **p.stage_threads},  # runtime.num_threads resolved
        # what each stage's thread governor did after starting at the count in "threads"
        "threads_governor": {stage: g.summary() for stage, g in p.governors.items()},
        "baseline_aside": p.baseline_aside,  # trained in a second process: how it went
    }
    if baseline is not None:
        metrics["baseline"] = _baseline_report(p, baseline, ref)
        key, sign = p.task.headline, 1.0 if p.task.higher_is_better else -1.0
        metrics["kd_gain"] = sign * (student_rep[key] - metrics["baseline"][key])
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
