"""Store keys by construction (kdrun.experiments.keys): every schema field changes the keys
that read it or is on the reviewed list; the issue's cases (other root, replaced files,
other columns, edited user code) all give other keys."""

from __future__ import annotations

import copy
import dataclasses
import shutil
import sys
import time
import typing
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from omegaconf import OmegaConf
from torch import nn

from kdrun.config import DatasetConfig
from kdrun.config.schema import KdrunConfig
from kdrun.data import load_data
from kdrun.experiments.keys import (
    KIND_NEVER,
    SCHEME,
    baseline_key,
    checkpoint_key,
    condensed_key,
    excluded,
    model_key,
    pretrained_key,
    store_notice,
    teacher_logits_key,
    teacher_reference_key,
    teacher_samples_key,
)
from kdrun.store import ArtifactStore, content_key
from kdrun.store.fingerprint import data_fingerprint

FP = "files:0123"


@pytest.fixture(autouse=True)
def digest_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("KDRUN_DIGEST_CACHE", str(tmp_path / "digests.json"))


def base_cfg() -> dict:
    cfg = OmegaConf.structured(KdrunConfig)
    cfg.dataset.name, cfg.teacher.name, cfg.student.name = "digits", "mlp", "mlp"
    return OmegaConf.to_container(cfg, resolve=True, throw_on_missing=False)


def all_keys(c: dict) -> dict[str, str]:
    """Every kind's key, the keys composed as the pipeline composes them."""
    cfg = OmegaConf.create(c)
    teacher = model_key(cfg, cfg.teacher, cfg.teacher_seed, FP)
    tk = f"teacher:{content_key(teacher)}"
    specs = {
        "teacher": teacher,
        "distilled": model_key(cfg, cfg.teacher, cfg.seed, FP, teacher_keys=[tk]),
        "baseline": baseline_key(cfg, cfg.student, FP),
        "teacher_logits": teacher_logits_key(cfg, [tk], {"outputs": "logits"}, FP),
        "teacher_test_logits": teacher_reference_key(cfg, tk, FP),
        "teacher_samples": teacher_samples_key(cfg, tk, SimpleNamespace(prompt_tokens=8), FP),
        "synthetic": condensed_key(cfg, FP),
    }
    assert all(s["scheme"] == SCHEME for s in specs.values())
    return {k: content_key(s) for k, s in specs.items()}


def leaves(cls: type, prefix: str = "") -> list[str]:
    """Dotted paths of every field of a schema dataclass, recursively."""
    hints = typing.get_type_hints(cls)
    out = []
    for f in dataclasses.fields(cls):
        path = prefix + f.name
        t = hints[f.name]
        out += leaves(t, path + ".") if dataclasses.is_dataclass(t) else [path]
    return out


def changed(value):
    if isinstance(value, bool):
        return not value
    if isinstance(value, (int, float)):
        return value + 1
    if isinstance(value, str):
        return value + "_w"
    if isinstance(value, list):
        return [*value, value[-1] if value else 1]
    if isinstance(value, dict):
        return {**value, "_walk": 1}
    return "w"  # None


def perturbed(c: dict, path: str) -> dict:

    out = copy.deepcopy(c)
    *parents, leaf = path.split(".")
    node = out
    for p in parents:
        node = node[p]
    node[leaf] = changed(node[leaf])
    return out


def covered(path: str, table: dict[str, str]) -> bool:
    return any(path == k or path.startswith(k + ".") for k in table)


def test_every_schema_field_changes_the_key_or_is_reviewed():
    base = base_cfg()
    before = all_keys(base)
    fields = leaves(KdrunConfig)
    assert len(fields) > 80 and "dataset.label_column" in fields and "teacher.train.lr" in fields
    wrong = []
    for path in fields:
        after = all_keys(perturbed(base, path))
        for kind in KIND_NEVER:
            skip = excluded(kind)
            moved = after[kind] != before[kind]
            if covered(path, skip) and moved:
                wrong.append(f"{kind}: {path} is on the reviewed list but changes the key")
            elif not covered(path, skip) and not moved:
                wrong.append(f"{kind}: {path} changes no key and is not on the reviewed list")
    assert not wrong, "\n".join(wrong)
    # every reason is one line that says something
    for kind in KIND_NEVER:
        assert all(10 < len(why) < 160 and "\n" not in why for why in excluded(kind).values())


def test_the_reviewed_list_names_only_schema_fields():
    fields = leaves(KdrunConfig)
    for kind in KIND_NEVER:
        for path in excluded(kind):
            assert any(f == path or f.startswith(path + ".") for f in fields), path


# --------------------------------------------------------------------------- the cases


def _write_idx(path: Path, arr: np.ndarray) -> None:
    header = bytes([0, 0, 8, arr.ndim]) + b"".join(int(d).to_bytes(4, "big") for d in arr.shape)
    path.write_bytes(header + arr.astype(np.uint8).tobytes())


def _mnist(d: Path, n: int, seed: int) -> Path:
    rng = np.random.default_rng(seed)
    d.mkdir(parents=True, exist_ok=True)
    for stem, m in (("train", n), ("t10k", 20)):
        _write_idx(d / f"{stem}-images-idx3-ubyte", rng.integers(0, 256, (m, 28, 28)))
        _write_idx(d / f"{stem}-labels-idx1-ubyte", np.arange(m) % 10)
    return d


def _keys_for(c: dict) -> dict[str, str]:
    cfg = OmegaConf.create(c)
    ds_cfg = OmegaConf.merge(OmegaConf.structured(DatasetConfig), c["dataset"])
    fp = data_fingerprint(load_data(ds_cfg))
    teacher = model_key(cfg, cfg.teacher, cfg.teacher_seed, fp)
    tk = f"teacher:{content_key(teacher)}"
    return {
        "teacher": content_key(teacher),
        "baseline": content_key(baseline_key(cfg, cfg.student, fp)),
        "logits": content_key(teacher_logits_key(cfg, [tk], {"outputs": "logits"}, fp)),
        "test_logits": content_key(teacher_reference_key(cfg, tk, fp)),
    }


def _differ(a: dict[str, str], b: dict[str, str]) -> bool:
    return all(a[k] != b[k] for k in a)


def test_a_other_root_other_keys_same_content_same_keys(tmp_path):
    c = base_cfg()
    c["dataset"]["name"] = "mnist"
    c["dataset"]["root"] = str(_mnist(tmp_path / "A", 40, seed=0))
    a = _keys_for(c)
    c["dataset"]["root"] = str(_mnist(tmp_path / "B", 80, seed=1))
    assert _differ(a, _keys_for(c))
    shutil.copytree(tmp_path / "A", tmp_path / "A2")  # the same bytes elsewhere: shared
    c["dataset"]["root"] = str(tmp_path / "A2")
    assert _keys_for(c) == a


def test_b_same_root_with_files_replaced_other_keys(tmp_path):
    c = base_cfg()
    c["dataset"]["name"] = "mnist"
    c["dataset"]["root"] = str(_mnist(tmp_path / "A", 40, seed=0))
    a = _keys_for(c)
    time.sleep(0.05)  # past the kernel's timestamp tick
    _mnist(tmp_path / "A", 40, seed=7)  # same names and sizes, other images
    assert _differ(a, _keys_for(c))


def test_c_hf_label_and_image_columns_are_in_the_keys():
    c = base_cfg()
    c["dataset"].update(name="hf", path="/data/hf")
    before = all_keys(c)
    for col, value in (("label_column", "shifted"), ("image_column", "img")):
        d = base_cfg()
        d["dataset"].update(name="hf", path="/data/hf", **{col: value})
        after = all_keys(d)
        assert all(after[k] != before[k] for k in before), col


def test_d_custom_module_edited_under_the_same_import_path(tmp_path, monkeypatch):
    src = tmp_path / "mynet_keys_test.py"
    body = (
        "import torch.nn as nn\n\n"
        "class Net(nn.Module):\n"
        "    def __init__(self):\n"
        "        super().__init__()\n"
        "        self.f = nn.Sequential(nn.Flatten(), nn.Linear(64, 10), nn.{act}())\n\n"
        "    def forward(self, x):\n"
        "        return self.f(x)\n"
    )
    src.write_text(body.format(act="ReLU"))
    monkeypatch.syspath_prepend(str(tmp_path))
    c = base_cfg()
    c["teacher"].update(name="custom", _target_="mynet_keys_test.Net")
    first = all_keys(c)
    spec = model_key(OmegaConf.create(c), OmegaConf.create(c["teacher"]), 0, FP)
    assert spec["model"]["code"]["object"] == "mynet_keys_test.Net"
    time.sleep(0.05)
    src.write_text(body.format(act="Sigmoid"))  # same shapes, same import path
    second = all_keys(c)
    assert second["teacher"] != first["teacher"]
    assert second["teacher_logits"] != first["teacher_logits"]
    assert second["baseline"] == first["baseline"]  # the baseline never sees the teacher
    sys.modules.pop("mynet_keys_test", None)


def test_a_plugin_model_is_keyed_by_its_distribution_and_source(monkeypatch):
    from kdrun.experiments import keys
    from kdrun.models.registry import MODELS

    def build(cfg, in_shape, num_classes):  # a builder from outside kdrun
        return nn.Linear(4, num_classes)

    build.__module__ = "tests.test_keys"
    monkeypatch.setitem(MODELS, "plugin_net", build)
    monkeypatch.setattr(keys, "_distribution", lambda m: "kdrun-toy==1.2")
    c = base_cfg()
    c["teacher"]["name"] = "plugin_net"
    code = model_key(OmegaConf.create(c), OmegaConf.create(c["teacher"]), 0, FP)["model"]["code"]
    assert code["distribution"] == "kdrun-toy==1.2" and code["source"]
    monkeypatch.setattr(keys, "_distribution", lambda m: "kdrun-toy==1.3")
    again = model_key(OmegaConf.create(c), OmegaConf.create(c["teacher"]), 0, FP)
    assert again["model"]["code"] != code


def test_pretrained_and_checkpoint_teachers_are_keyed_by_content(tmp_path):
    c = OmegaConf.create(base_cfg())
    c.teacher.pretrained = True
    a, b = nn.Linear(3, 2), nn.Linear(3, 2)
    assert content_key(pretrained_key(c.teacher, a)) != content_key(pretrained_key(c.teacher, b))
    f = tmp_path / "t.pt"
    torch.save(a.state_dict(), f)
    g = tmp_path / "copy.pt"
    shutil.copy(f, g)
    assert checkpoint_key(f) == checkpoint_key(g)
    torch.save(b.state_dict(), g)
    assert checkpoint_key(f) != checkpoint_key(g)


# --------------------------------------------------------------------------- old stores


def test_an_old_store_is_named_once_and_its_entries_never_match(tmp_path):
    store = ArtifactStore(tmp_path / "store")
    old_spec = {"role": "teacher", "model": {"name": "mlp"}, "data": {"name": "digits"}}
    store.get_or_build("teacher", old_spec, lambda d: ({"w": torch.zeros(1)}, {}))
    notice = store_notice(tmp_path / "store")
    assert notice and "earlier kdrun version" in notice and "\n" not in notice
    assert store_notice(tmp_path / "store") is None  # said once
    new = model_key(OmegaConf.create(base_cfg()), OmegaConf.create(base_cfg()["teacher"]), 0, FP)
    assert not store.has("teacher", new)
    assert store_notice(tmp_path / "fresh") is None  # a new store: nothing to say
    assert store_notice(tmp_path / "fresh") is None


def test_the_synthetic_key_leaves_out_exactly_the_evaluation_options():
    from kdrun.experiments.condense import EVAL_ONLY

    skip = [k.split(".", 1)[1] for k in KIND_NEVER["synthetic"] if k.startswith("condense.")]
    assert sorted(skip) == sorted(EVAL_ONLY)


def test_entries_copied_from_a_current_store_raise_no_notice(tmp_path):
    """A new store holding only current-scheme entries (e.g. a teacher copied in) is no old
    store, though it has no SCHEME marker yet."""
    store = ArtifactStore(tmp_path / "store")
    new = model_key(OmegaConf.create(base_cfg()), OmegaConf.create(base_cfg()["teacher"]), 0, FP)
    store.get_or_build("teacher", new, lambda d: ({"w": torch.zeros(1)}, {}))
    assert store_notice(tmp_path / "store") is None
