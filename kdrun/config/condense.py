"""Typed options of ``kdrun experiment=condense`` (the ``condense`` config group).

Defaults and their sources are in conf/condense/{dm,dc}.yaml; the dataclass only fixes the
keys and types, so a misspelled ``condense.*`` key or a wrong type fails before any work.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass
class CondenseConfig:
    method: str = "dm"  # dm | dc (kdrun.condense.CONDENSERS)
    ipc: int = 10  # synthetic images per class
    iterations: int = 1000  # image updates (dm) / outer iterations over fresh nets (dc)
    lr_img: float = 1.0  # SGD on the pixels
    momentum: float = 0.5
    batch_real: int = 256  # real images per class per matching step
    init: str = "real"  # real | noise
    dsa: bool = True  # differentiable Siamese augmentation while matching
    dsa_strategy: str = "color_crop_cutout_flip_scale_rotate"
    net: str = "convnet3"  # the randomly initialised network that matching uses
    net_width: int = 128
    outer_loop: int = 0  # dc: image updates per fresh net; 0 = DC's choice for this ipc
    inner_loop: int = 0  # dc: net epochs on the synthetic set between them; 0 = DC's choice
    lr_net: float = 0.01  # dc: the matching net's SGD lr
    batch_train: int = 256  # dc: the matching net's batch on the synthetic set
    soft_labels: bool = False  # also evaluate with the teacher's soft labels at T (KD loss)
    eval_seeds: int = 5  # evaluation nets per set (mean ± std)
    eval_epochs: int = 300  # epochs of each evaluation net on its small set
    eval_lr: float = 0.01  # SGD, momentum 0.9, wd 5e-4, x0.1 at half (DC's evaluate_synset)
    eval_batch: int = 256
    eval_dsa: bool = True  # DSA (per image) while training the evaluation nets
    full_data: bool = True  # also train the evaluation net on the full training split
    checkpoint_every: int = 25  # iterations between resumable checkpoints
