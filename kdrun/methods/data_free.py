"""Data-free (zero-shot) distillation: the student learns from a teacher and a generator only.

A generator is trained against the frozen teacher with DAFL's losses (one-hot, activation,
information entropy; Chen et al. 2019) and optionally DeepInversion's BatchNorm-statistics
matching (``bn_weight``; Yin et al. 2020). With ``adversarial=true`` the generator instead
maximises the student-teacher divergence (ZSKT, Micaelli & Storkey 2019; DFAD, Fang et al.
2019), the student minimising it. The student is distilled with the run's KD loss (T, alpha;
the "hard" labels are the teacher's arg-max) on generated images and never sees a real one:
the training loop iterates over an empty placeholder set of ``steps_per_epoch`` x batch rows.

The generator has its own Adam optimiser (DAFL: lr_G 0.2 on MNIST), stepped inside the
forward pass; its state is part of the distiller's state dict, so the loop's checkpoints
resume it too.
"""

from __future__ import annotations

import copy
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from kdrun.data import DataBundle
from kdrun.data.images import save_class_grid
from kdrun.errors import ConfigError
from kdrun.methods.base import Distiller, MethodOptions, register_method
from kdrun.methods.data_free_losses import (
    BNStatistics,
    activation_loss,
    information_entropy_loss,
    one_hot_loss,
)
from kdrun.methods.losses import kd_loss, kl_soft
from kdrun.models import build_model
from kdrun.models.generator import Generator

_BN = nn.modules.batchnorm._BatchNorm
log = logging.getLogger("kdrun")

# Every this many student steps, check that the generator is alive (a host sync on a GPU,
# hence not every step). With DAFL's lr_G 0.2 a generator can saturate its tanh everywhere:
# then every image is the same constant, the final BatchNorm maps it to 0, no gradient comes
# back, and the student unlearns on blank images (MNIST LeNet-5, seed 1, 50 epochs: from 95%
# to 47.5% after the generator died in epoch 20). A dead generator is re-initialised.
ALIVE_CHECK_EVERY = 20


@dataclass
class DataFreeOptions(MethodOptions):
    """Defaults: DAFL's MNIST recipe (huawei-noah DAFL README: --lr_G 0.2 --latent_dim 100
    --oh 1 --ie 5 --a 0.1; 120 iterations per epoch); DeepInversion off by default."""

    name: str = "data_free"
    latent_dim: int = 100
    generator_width: int = 128
    generator_lr: float = 0.2
    steps_per_epoch: int = 120  # generated batches per student epoch
    oh_weight: float = 1.0
    activation_weight: float = 0.1
    ie_weight: float = 5.0
    bn_weight: float = 0.0  # DeepInversion; needs BatchNorm layers in the teacher
    adversarial: bool = False
    student_steps: int = 1  # adversarial: student updates per generator update (DFAD: 5)
    grid_per_class: int = 8  # generated images per class in the PNG grid


class _Features:
    """The teacher's classifier input, captured on each forward (DAFL's f_T)."""

    def __init__(self, net: nn.Module) -> None:
        self.value: torch.Tensor | None = None
        net.get_submodule(net.kd_head).register_forward_pre_hook(self._hook)

    def _hook(self, _m: nn.Module, args: tuple) -> None:
        self.value = args[0]


@register_method("data_free")
class DataFree(Distiller):
    Options = DataFreeOptions
    cacheable = False  # every batch is new: nothing to cache
    accepts_unlabelled = True  # it never reads the real transfer set (transfer_set: its own)
    stage_labels = {"baseline": "baseline (real data)", "student": "distilled (data-free)"}

    def __init__(
        self,
        student: nn.Module,
        teacher: nn.Module,
        generator: Generator,
        opts: DataFreeOptions,
        T: float,
        alpha: float,
        seed: int = 0,
    ) -> None:
        super().__init__(student, teacher)
        self.generator, self.opts, self.T, self.alpha = generator, opts, T, alpha
        self.g_opt = torch.optim.Adam(generator.parameters(), lr=opts.generator_lr)
        self.seed = seed
        self.z_gen = torch.Generator().manual_seed(seed)
        self.features = _Features(self.teacher)
        self.bn = BNStatistics(self.teacher) if opts.bn_weight > 0 else None
        self.steps = 0  # student updates (each on a freshly generated batch)
        self.generator_updates = 0
        self.samples_seen = 0  # generated images the student trained on
        self.teacher_labels = torch.zeros(0, dtype=torch.long)  # the last batch's (train_acc)
        self.generator_restarts = 0  # re-initialised after dying (ALIVE_CHECK_EVERY)

    @classmethod
    def check_config(cls, cfg) -> None:
        opts = cls.options(cfg.method)
        for key in ("latent_dim", "generator_width", "steps_per_epoch", "student_steps"):
            if getattr(opts, key) < 1:
                raise ConfigError(f"method.{key} must be >= 1 (got {getattr(opts, key)})")
        if opts.generator_lr <= 0:
            raise ConfigError(f"method.generator_lr must be > 0 (got {opts.generator_lr})")

    @classmethod
    def build(cls, cfg, ctx) -> DataFree:
        opts = cls.options(cfg.method)
        shape = tuple(ctx.data.in_shape)
        if len(shape) != 3 or min(shape[1:]) < 4:
            raise ConfigError(
                f"method=data_free generates images, but dataset={cfg.dataset.name} has inputs "
                f"of shape {shape}, not (C, H, W) images; use an image data set or another method"
            )
        # checked on an untrained instance, before the teacher is trained
        probe = build_model(cfg.teacher, shape, ctx.data.num_classes)
        if opts.bn_weight > 0 and not any(isinstance(m, _BN) for m in probe.modules()):
            raise ConfigError(
                f"method.bn_weight={opts.bn_weight} matches BatchNorm statistics, but "
                f"teacher={cfg.teacher.name} has no BatchNorm layer; set method.bn_weight=0"
            )
        teacher = ctx.teacher()
        student = ctx.new_student()
        torch.manual_seed(cfg.seed + 2)  # the generator's own init, apart from the student's
        gen = Generator(shape, opts.latent_dim, opts.generator_width)
        return cls(student, teacher, gen, opts, cfg.T, cfg.alpha, cfg.seed)

    def trainable_parameters(self) -> list[nn.Parameter]:
        """The student's: the generator has its own optimiser."""
        return [p for p in self.student.parameters() if p.requires_grad]

    def generator_losses(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        """The generator's weighted losses on a generated batch ``x`` (graph kept to G)."""
        o = self.opts
        if self.bn is not None:
            self.bn.reset()
        t = self.teacher(x)
        if o.adversarial:  # maximise what the student still gets wrong
            parts = {"gen_adv": -kl_soft(self.student(x), t, self.T)}
        else:
            parts = {
                "gen_oh": o.oh_weight * one_hot_loss(t),
                "gen_act": o.activation_weight * activation_loss(self.features.value),
                "gen_ie": o.ie_weight * information_entropy_loss(t),
            }
        if self.bn is not None:
            parts["gen_bn"] = o.bn_weight * self.bn.loss()
        return parts

    def generator_step(self, n: int) -> dict[str, torch.Tensor]:
        self.student.requires_grad_(False)  # the adversarial term must not move the student
        try:
            parts = self.generator_losses(self.generator(self.generator.sample(n, self.z_gen)))
            self.g_opt.zero_grad(set_to_none=True)
            sum(parts.values()).backward()
            self.g_opt.step()
            self.g_opt.zero_grad(set_to_none=True)  # nothing of this step lingers
            self.generator_updates += 1
        finally:
            self.student.requires_grad_(True)
        return {k: v.detach() for k, v in parts.items()}

    def forward(self, x, y, idx, teacher_out):
        """``x`` is the placeholder batch (no pixels): only its size is used."""
        n = len(idx)
        self.samples_seen += n
        logged: dict[str, torch.Tensor] = {}
        if not self.opts.adversarial or self.steps % max(1, self.opts.student_steps) == 0:
            logged = self.generator_step(n)
        self.steps += 1
        with torch.no_grad():
            images = self.generator(self.generator.sample(n, self.z_gen))
            t = self.teacher(images)
        if self.steps % ALIVE_CHECK_EVERY == 0 and not images.abs().amax() > 1e-4:
            self.restart_generator()
        logits = self.student(images)
        self.teacher_labels = t.argmax(1)
        losses = kd_loss(logits, t, self.teacher_labels, self.T, self.alpha)
        return logits, {**losses, **logged}

    def restart_generator(self) -> None:
        """Re-initialise the generator and its optimiser (it died: every image is one constant)
        from a seed of its own, leaving the global random stream alone."""
        self.generator_restarts += 1
        devices = (
            [self.generator.fc.weight.device.index or 0] if self.generator.fc.weight.is_cuda else []
        )
        with torch.random.fork_rng(devices=devices):
            torch.manual_seed(self.seed * 1000 + self.generator_restarts)
            for m in self.generator.modules():
                if hasattr(m, "reset_parameters"):
                    m.reset_parameters()
        self.g_opt = torch.optim.Adam(self.generator.parameters(), lr=self.opts.generator_lr)
        log.warning(
            "data_free: the generator died at student step %d (every image the same constant); "
            "re-initialised it (restart %d)",
            self.steps,
            self.generator_restarts,
        )

    def accuracy_targets(self, y: torch.Tensor) -> torch.Tensor:
        """train_acc on generated images is agreement with the teacher (``y`` is a stand-in)."""
        return self.teacher_labels

    # the generator's optimiser and step count travel in the state dict (checkpoints)
    def get_extra_state(self) -> dict[str, Any]:
        return {
            "g_opt": self.g_opt.state_dict(),
            "steps": self.steps,
            "generator_updates": self.generator_updates,
            "samples": self.samples_seen,
            "z_gen": self.z_gen.get_state(),
            "restarts": self.generator_restarts,
        }

    def set_extra_state(self, state: dict[str, Any]) -> None:
        self.g_opt.load_state_dict(state["g_opt"])
        self.steps = int(state["steps"])
        self.generator_updates = int(state["generator_updates"])
        self.samples_seen = int(state["samples"])
        self.z_gen.set_state(state["z_gen"])
        self.generator_restarts = int(state.get("restarts", 0))  # absent in older checkpoints

    @torch.no_grad()
    def samples(self, n: int, seed: int = 0) -> torch.Tensor:
        """n generated images from a fixed latent draw, as the student saw them: in training
        mode (batch statistics), on a copy so the generator's running statistics stay put."""
        gen = copy.deepcopy(self.generator).train()
        return gen(gen.sample(n, torch.Generator().manual_seed(seed)))

    # ---- what the pipeline asks of a method that brings its own transfer set ----------
    def transfer_set(self, data: DataBundle, batch_size: int) -> DataBundle:
        """A placeholder training split of ``steps_per_epoch`` x ``batch_size`` rows with no
        pixels and no validation rows (selection would need labelled real data): the loop
        only counts through it while ``forward`` generates the images."""
        n = self.opts.steps_per_epoch * batch_size
        dev = data.y_test.device
        return data.training_split(
            "generated",
            torch.zeros(n, 0, device=dev),
            torch.zeros(n, dtype=torch.long, device=dev),
            x_val=torch.zeros(0, *data.in_shape, device=dev),
        )

    def real_images_seen(self, data: DataBundle) -> int:
        return 0

    def extra_metrics(self, ctx) -> dict[str, Any]:
        """metrics.json ``data_free{...}`` (the pipeline asks every method for extras)."""
        seconds = sum(r["seconds"] for r in ctx.history if r.get("stage") == "student")
        return {"data_free": self.report(ctx.data, ctx.run_dir, seconds)}

    def report(self, data: DataBundle, run_dir: Path, seconds: float) -> dict[str, Any]:
        """``data_free`` metrics and a PNG of generated images sorted by the teacher's class."""
        n_show = self.opts.grid_per_class
        x = self.samples(max(256, 20 * n_show * data.num_classes))
        with torch.no_grad():
            pred = self.teacher(x).argmax(1).cpu()
        pix = x.cpu() * data.std.cpu()[None, :, None, None] + data.mean.cpu()[None, :, None, None]
        save_class_grid(
            pix.clamp(0, 1),
            pred,
            list(data.class_names),
            run_dir / "generated.png",
            n_show,
            "generated images, by the teacher's class",
        )
        counts = torch.bincount(pred, minlength=data.num_classes)
        return {
            "generator_steps": self.generator_updates,
            "generator_restarts": self.generator_restarts,
            "student_steps": self.steps,
            "samples": self.samples_seen,
            "seconds": seconds,
            "teacher_class_share": (counts.float() / len(pred)).tolist(),
            "adversarial": self.opts.adversarial,
        }
