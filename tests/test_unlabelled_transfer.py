"""dataset.unlabelled_transfer: the distilled student learns the teacher's soft targets on the
whole transfer set and the hard labels on the labelled fraction only (labels -100 elsewhere);
the baseline keeps the labelled rows; methods that use labels beyond the CE refuse it."""

from __future__ import annotations

import copy
import csv
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from hydra import compose, initialize_config_dir
from hydra.core.global_hydra import GlobalHydra
from omegaconf import OmegaConf

from kdrun.config import DatasetConfig, config_dir, register_configs
from kdrun.data import UNLABELLED, load_data
from kdrun.errors import ConfigError
from kdrun.experiments import validate
from kdrun.methods import METHODS
from kdrun.methods.base import transfer_rows
from kdrun.methods.lm_losses import IGNORE
from kdrun.methods.losses import hard_ce, kd_loss
from tests.conftest import read_json

CONF = Path(config_dir())
register_configs()


def ds(**kw):
    return OmegaConf.structured(DatasetConfig(**kw))


def compose_cfg(*overrides: str):
    GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        return compose(config_name="config", overrides=list(overrides))


# ---- the CE helper ----------------------------------------------------------------------
def test_hard_ce_equals_cross_entropy_when_every_row_is_labelled():
    g = torch.Generator().manual_seed(0)
    z, y = torch.randn(8, 10, generator=g), torch.randint(0, 10, (8,), generator=g)
    assert torch.equal(hard_ce(z, y), F.cross_entropy(z, y))  # bit for bit


def test_hard_ce_ignores_unlabelled_rows():
    assert UNLABELLED == IGNORE == -100  # torch's ignore_index
    g = torch.Generator().manual_seed(1)
    z, y = torch.randn(6, 10, generator=g), torch.randint(0, 10, (6,), generator=g)
    y_part = y.clone()
    y_part[[1, 3, 4]] = UNLABELLED
    keep = y_part != UNLABELLED
    assert torch.allclose(hard_ce(z, y_part), F.cross_entropy(z[keep], y[keep]))
    zg = z.clone().requires_grad_(True)
    hard_ce(zg, y_part).backward()
    assert torch.count_nonzero(zg.grad[~keep]) == 0  # an unlabelled row gets no CE gradient
    assert torch.count_nonzero(zg.grad[keep]) > 0


def test_hard_ce_of_a_batch_without_labels_is_zero_with_zero_gradient():
    z = torch.randn(5, 10, requires_grad=True)
    y = torch.full((5,), UNLABELLED)
    loss = hard_ce(z, y)
    assert loss.item() == 0.0  # not NaN
    loss.backward()
    assert torch.equal(z.grad, torch.zeros_like(z))
    parts = kd_loss(torch.randn(5, 10), torch.randn(5, 10), y, T=4.0, alpha=0.9)
    assert parts["hard"].item() == 0.0 and torch.isfinite(parts["soft"])


# ---- the data path ----------------------------------------------------------------------
def test_the_student_view_holds_every_transfer_image_the_baseline_the_labelled_ones():
    d = load_data(ds(name="digits", train_fraction=0.03, unlabelled_transfer=True))
    plain = load_data(ds(name="digits", train_fraction=0.03))
    # the baseline's rows (and the teacher's data) are those of a run without the option
    assert torch.equal(d.student_idx, plain.student_idx) and len(d.student_idx) == 39
    assert torch.equal(d.y_train, plain.y_train) and plain.unlabelled_idx is None
    view = d.transfer_view()
    assert torch.equal(view.student_idx, torch.arange(len(d.y_train)))  # every image
    assert transfer_rows(d) == len(d.y_train) == 1294
    labelled = torch.zeros(len(d.y_train), dtype=torch.bool)
    labelled[d.student_idx] = True
    assert torch.equal(view.y_train[labelled], d.y_train[labelled])
    assert (view.y_train[~labelled] == UNLABELLED).all()
    assert (d.y_train >= 0).all()  # the run's own labels are untouched
    again = load_data(ds(name="digits", train_fraction=0.03, unlabelled_transfer=True))
    assert torch.equal(again.unlabelled_idx, d.unlabelled_idx)  # a fixed subset


def test_unlabelled_rows_respect_the_class_filter_and_full_data_is_a_no_op():
    d = load_data(ds(name="digits", train_fraction=0.1, omit_classes=[3], unlabelled_transfer=True))
    assert not (d.y_train[d.unlabelled_idx] == 3).any()  # an omitted class stays omitted
    full = load_data(ds(name="digits", unlabelled_transfer=True))
    assert full.unlabelled_idx is None and full.transfer_view() is full


# ---- config ----------------------------------------------------------------------------
def test_the_default_recipe_keeps_the_rest_of_the_transfer_set_unlabelled():
    cfg = compose_cfg()
    assert cfg.dataset.unlabelled_transfer == "auto" and cfg.dataset.train_fraction == 0.03
    validate(cfg)
    assert cfg.dataset.unlabelled_transfer == "on"  # kd learns from unlabelled images
    validate(compose_cfg("dataset.train_fraction=1"))  # a documented no-op: every row labelled


def test_a_condensation_job_refuses_it_and_auto_turns_it_off():
    with pytest.raises(ConfigError, match="kind=condense does not read"):
        validate(
            compose_cfg(
                "experiment=condense",
                "dataset.unlabelled_transfer=on",
                "dataset.train_fraction=0.1",
            )
        )
    cfg = compose_cfg(
        "experiment=condense", "dataset.unlabelled_transfer=auto", "dataset.train_fraction=0.1"
    )
    validate(cfg)
    assert cfg.dataset.unlabelled_transfer == "off"


@pytest.mark.parametrize("typed", ["true", "on", "True"])
def test_true_reads_as_on(typed):
    cfg = compose_cfg(f"dataset.unlabelled_transfer={typed}")
    validate(cfg)
    assert cfg.dataset.unlabelled_transfer == "on"


def test_an_unknown_value_is_refused():
    with pytest.raises(ConfigError, match="choose one of: auto, on, off"):
        validate(compose_cfg("dataset.unlabelled_transfer=maybe"))


@pytest.mark.parametrize("method", ["dkd", "crd", "nkd", "ctkd", "takd", "multi_teacher"])
def test_a_method_that_needs_every_label_refuses_it(method):
    """Asked for explicitly, refused in one line; the default recipe's ``auto`` turns it off
    for such a method, so ``kdrun method=dkd`` runs on the 39 labelled images."""
    with pytest.raises(ConfigError, match="dataset.unlabelled_transfer=auto or off"):
        validate(compose_cfg(f"method={method}", "dataset.unlabelled_transfer=on"))
    validate(compose_cfg(f"method={method}", "dataset.unlabelled_transfer=false"))
    cfg = compose_cfg(f"method={method}")
    validate(cfg)
    assert cfg.dataset.unlabelled_transfer == "off"


def test_only_reviewed_methods_accept_unlabelled_images():
    accepting = {n for n, m in METHODS.items() if m.accepts_unlabelled}
    logit = {"kd", "gd", "dist", "mlkd", "dml", "data_free"}
    assert accepting == logit | {"at", "fitnet", "rkd", "sp", "reviewkd"}


# ---- end to end ------------------------------------------------------------------------
@pytest.mark.slow
def test_distilled_student_on_unlabelled_images_beats_the_baseline(run_kdrun, tmp_path):
    """The default recipe, shortened: the distilled student learns from every transfer image,
    the baseline from the 39 labelled ones, and the paired test says KD helps."""
    r = run_kdrun(
        "teacher.train.epochs=10",
        "student.train.epochs=100",
        "analysis.full_data_epochs=2",
        run_dir=tmp_path / "run",
    )
    assert r.returncode == 0, r.stderr
    m = read_json(tmp_path / "run" / "metrics.json")
    assert m["data"]["student_train_size"] == 39
    assert m["data"]["student_unlabelled_size"] == 1294 - 39
    assert m["data"]["unlabelled_transfer"] == "on"  # the recipe's auto, resolved for kd
    assert m["student"]["train_images_seen"] == 1294
    assert m["baseline"].get("train_images_seen", 39) == 39
    assert m["small_data"]["unlabelled_size"] == 1294 - 39
    assert m["evidence"]["verdict"] == "KD helps" and m["evidence"]["kd_gain_p"] < 0.05
    assert m["student"]["test_acc"] > m["baseline"]["test_acc"]
    # train_acc scores the labelled rows only: ~1 here, where counting the unlabelled rows
    # (labels -100, never predicted) as errors would keep it under 39 / 1294
    with open(tmp_path / "run" / "history.csv") as f:
        last = [r for r in csv.DictReader(f) if r["stage"] == "student"][-1]
    assert float(last["train_acc"]) > 0.5


# ---- store keys ------------------------------------------------------------------------
def test_the_option_retrains_no_teacher_or_baseline_but_recomputes_teacher_logits():
    from tests.test_keys import all_keys, base_cfg

    base = base_cfg()
    base["dataset"]["train_fraction"] = 0.03
    on = copy.deepcopy(base)
    on["dataset"]["unlabelled_transfer"] = True
    before, after = all_keys(base), all_keys(on)
    assert after["teacher"] == before["teacher"]
    assert after["baseline"] == before["baseline"]  # it learns from the labelled rows only
    assert after["teacher_logits"] != before["teacher_logits"]  # rows for every image now
