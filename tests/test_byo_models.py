"""Models from outside kdrun (torchvision, timm, transformers, custom): built, loaded safely,
their stages found; every bad input is one line. All offline: tiny models from configs."""

from __future__ import annotations

import os
import pickle
import sys
from pathlib import Path
from urllib.error import URLError

import pytest
import torch
from omegaconf import OmegaConf

from kdrun.errors import CheckpointError, ConfigError
from kdrun.models import external as em
from tests.byo_util import write_user_module


def node(role: str = "teacher", **kw):
    """A model config as the run sees it: a node named teacher/student of the root config."""
    return OmegaConf.create({role: kw})[role]


def one_line(e: pytest.ExceptionInfo) -> str:
    text = str(e.value)
    assert "\n" not in text and text, text
    return text


@pytest.fixture(autouse=True)
def _threads():
    torch.set_num_threads(1)


def test_torchvision_stages_head_and_gray_input():
    m = em.torchvision_model(node(name="torchvision", arch="resnet18"), (1, 28, 28), 10)
    # the last module of each resolution; the global average pool is not a stage
    assert m.kd_stages == ["relu", "layer1", "layer2", "layer3", "layer4"][: len(m.kd_stages)]
    assert "avgpool" not in m.kd_stages and m.kd_head == "fc" and m.kd_kind == "spatial"
    assert m(torch.zeros(2, 1, 28, 28)).shape == (2, 10)  # gray repeated into RGB


def test_weights_round_trip_pt_and_safetensors(tmp_path):
    from safetensors.torch import save_file

    src = em.torchvision_model(node(name="torchvision", arch="resnet18"), (3, 16, 16), 4).eval()
    state = src.state_dict()
    torch.save(state, tmp_path / "t.pt")
    save_file({k: v.contiguous() for k, v in state.items()}, tmp_path / "t.safetensors")
    x = torch.randn(3, 3, 16, 16)
    for f in ("t.pt", "t.safetensors"):
        cfg = node(name="torchvision", arch="resnet18", weights=str(tmp_path / f))
        m = em.torchvision_model(cfg, (3, 16, 16), 4).eval()
        assert torch.equal(m(x), src(x)), f
        assert em.is_pretrained(cfg)


def test_class_count_mismatch_is_one_line_unless_resized(tmp_path):
    src = em.torchvision_model(node(name="torchvision", arch="resnet18"), (3, 16, 16), 4)
    torch.save(src.state_dict(), tmp_path / "t.pt")
    cfg = node(name="torchvision", arch="resnet18", weights=str(tmp_path / "t.pt"))
    with pytest.raises(ConfigError) as e:
        em.torchvision_model(cfg, (3, 16, 16), 7)
    msg = one_line(e)
    assert "4 classes" in msg and "has 7" in msg and "teacher.num_classes_from_data=true" in msg
    cfg.num_classes_from_data = True
    m = em.torchvision_model(cfg, (3, 16, 16), 7)
    assert m.fc.out_features == 7
    assert torch.equal(m.layer1[0].conv1.weight, src.layer1[0].conv1.weight)  # body kept


def test_booby_trapped_pickle_runs_nothing(tmp_path):
    marker = tmp_path / "pwned"

    class Trap:
        def __reduce__(self):
            return (os.system, (f"touch {marker}",))

    with open(tmp_path / "evil.pt", "wb") as f:
        pickle.dump({"fc.weight": Trap()}, f)
    cfg = node(name="torchvision", arch="resnet18", weights=str(tmp_path / "evil.pt"))
    with pytest.raises(CheckpointError) as e:
        em.torchvision_model(cfg, (3, 16, 16), 4)
    assert ".safetensors" in one_line(e) and "never runs code" in one_line(e)
    assert not marker.exists()


def test_bad_weight_files_one_line(tmp_path):
    (tmp_path / "junk.pt").write_bytes(b"not a torch file")
    (tmp_path / "w.bin").write_bytes(b"x")
    (tmp_path / "junk.safetensors").write_bytes(b"x")
    for f, err in (
        ("nope.pt", CheckpointError),
        ("junk.pt", CheckpointError),
        ("w.bin", ConfigError),
        ("junk.safetensors", CheckpointError),
    ):
        with pytest.raises(err) as e:
            em.load_state_file(tmp_path / f, "teacher.weights")
        assert "teacher.weights=" in one_line(e)
    other = em.torchvision_model(node(name="torchvision", arch="resnet18"), (3, 16, 16), 4)
    torch.save(other.state_dict(), tmp_path / "r18.pt")
    with pytest.raises(CheckpointError) as e:
        em.torchvision_model(
            node(name="torchvision", arch="resnet34", weights=str(tmp_path / "r18.pt")),
            (3, 16, 16),
            4,
        )
    assert "does not fit" in one_line(e)
    with pytest.raises(ConfigError) as e:
        em.torchvision_model(node(name="torchvision", arch="resnet_nope"), (3, 16, 16), 4)
    assert "unknown torchvision arch" in one_line(e)


def test_default_weights_offline_says_where_to_put_the_file(monkeypatch, tmp_path):
    def offline(*_a, **_k):
        raise URLError("no network")

    monkeypatch.setattr(em, "download_state", offline)
    monkeypatch.setenv("TORCH_HOME", str(tmp_path))
    with pytest.raises(CheckpointError) as e:
        em.torchvision_model(
            node(name="torchvision", arch="resnet18", weights="DEFAULT"), (3, 32, 32), 1000
        )
    msg = one_line(e)
    assert "put it at" in msg and str(tmp_path) in msg and "resnet18" in msg


def test_custom_module_outside_the_package(tmp_path, monkeypatch):
    monkeypatch.syspath_prepend(str(write_user_module(tmp_path / "user")))
    cfg = node(name="custom", _target_="usernets.TinyNet", width=4)
    m = em.custom_model(cfg, (1, 12, 12), 5)
    assert m.fc.out_features == 5 and m.body[0].in_channels == 1 and m.body[0].out_channels == 4
    assert m.kd_stages == ["body.1", "body"] and m.kd_head == "fc"
    with pytest.raises(ConfigError) as e:
        em.custom_model(node(name="custom", _target_="usernets.Nope"), (1, 12, 12), 5)
    assert "cannot be imported" in one_line(e)
    with pytest.raises(ConfigError) as e:
        em.custom_model(node(name="custom", _target_="usernets.TinyNet", bogus=1), (1, 8, 8), 5)
    assert "could not be built" in one_line(e)
    sys.modules.pop("usernets", None)


def test_vit_has_no_spatial_stages():
    cfg = node(
        name="custom",
        _target_="torchvision.models.VisionTransformer",
        image_size=16,
        patch_size=8,
        num_layers=1,
        num_heads=2,
        hidden_dim=8,
        mlp_dim=16,
    )
    m = em.custom_model(cfg, (3, 16, 16), 3)
    assert m.kd_kind == "tokens" and m.kd_stages == [] and m.kd_head == "heads.head"
    with pytest.raises(ConfigError) as e:  # a fixed-size model fed another size
        em.custom_model(cfg, (3, 24, 24), 3)
    assert "dataset.image_size" in one_line(e)


def test_timm_tiny_model_saved_and_loaded(tmp_path):
    timm = pytest.importorskip("timm")
    src = timm.create_model("resnet10t", num_classes=3, pretrained=False).eval()
    torch.save(src.state_dict(), tmp_path / "t.pth")
    cfg = node(name="timm", arch="resnet10t", weights=str(tmp_path / "t.pth"))
    m = em.timm_model(cfg, (3, 32, 32), 3).eval()
    x = torch.randn(2, 3, 32, 32)
    assert torch.equal(m(x), src(x)) and m.kd_head == "fc" and len(m.kd_stages) >= 3
    pre = em.preprocessing(cfg)
    pc = timm.models.get_pretrained_cfg("resnet10t")  # timm's own numbers for its weights
    assert pre.image_size == tuple(pc.input_size[-2:]) and pre.mean == list(pc.mean)
    with pytest.raises(ConfigError) as e:
        em.timm_model(cfg, (3, 32, 32), 5)
    assert "3 classes" in one_line(e)


def _tiny_hf(d: Path, labels: int = 3) -> Path:
    tf = pytest.importorskip("transformers")
    conf = tf.ViTConfig(
        image_size=16,
        patch_size=8,
        hidden_size=16,
        num_hidden_layers=1,
        num_attention_heads=2,
        intermediate_size=32,
        num_labels=labels,
    )
    tf.ViTForImageClassification(conf).save_pretrained(d)
    tf.ViTImageProcessor(
        size={"height": 16, "width": 16}, image_mean=[0.5] * 3, image_std=[0.25] * 3
    ).save_pretrained(d)
    return d


def test_hf_tiny_vit_from_a_local_dir(tmp_path):
    d = _tiny_hf(tmp_path / "vit")
    cfg = node(name="hf", path=str(d))
    m = em.hf_model(cfg, (3, 16, 16), 3)
    assert m(torch.zeros(2, 3, 16, 16)).shape == (2, 3) and m.kd_kind == "tokens"
    assert m.kd_head == "model.classifier"
    pre = em.preprocessing(cfg)
    assert pre.image_size == (16, 16) and pre.mean == [0.5] * 3 and pre.std == [0.25] * 3
    with pytest.raises(ConfigError) as e:
        em.hf_model(cfg, (3, 16, 16), 5)
    assert "3 classes" in one_line(e) and "has 5" in one_line(e)
    cfg.num_classes_from_data = True
    assert em.hf_model(cfg, (3, 16, 16), 5)(torch.zeros(1, 3, 16, 16)).shape == (1, 5)
    with pytest.raises(ConfigError):
        em.hf_model(node(name="hf", path=str(tmp_path / "missing")), (3, 16, 16), 3)


def test_every_schema_field_of_a_model_is_kdruns_not_a_constructor_argument():
    """A custom module receives the user's own keys; every ModelConfig field is kdrun's. A
    field added to the schema and not to KDRUN_KEYS would reach every custom constructor."""
    import dataclasses

    from kdrun.config import ModelConfig

    assert {f.name for f in dataclasses.fields(ModelConfig)} <= em.KDRUN_KEYS
