"""Every YAML composes onto the typed schema; typos and bad values are rejected up front."""

from __future__ import annotations

from pathlib import Path

import pytest
from hydra import compose, initialize_config_dir
from hydra.core.global_hydra import GlobalHydra
from omegaconf import OmegaConf

import kdrun.cli  # noqa: F401  (registers the schema)
from kdrun.cli import precheck
from kdrun.config import config_dir
from kdrun.data import DATASETS
from kdrun.errors import ConfigError
from kdrun.experiments import validate
from kdrun.methods import LM_METHODS, METHODS
from kdrun.methods.kg import KG_METHODS
from kdrun.models import MODEL_INPUTS

CONF = Path(config_dir())
GROUPS = ["dataset", "teacher", "student", "method", "experiment"]


def options(group: str) -> list[str]:
    return sorted(p.stem for p in (CONF / group).glob("*.yaml"))


def compose_cfg(*overrides: str):
    GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        return compose(config_name="config", overrides=list(overrides))


def test_config_dir_is_the_checkout_conf():
    assert (CONF / "config.yaml").is_file()


def test_defaults():
    cfg = compose_cfg()
    assert cfg.T == 4 and cfg.alpha == 0.9 and cfg.device == "auto"
    assert cfg.dataset.name == "digits" and cfg.method.name == "kd"
    assert cfg.teacher.train.epochs >= 1 and cfg.student.train.epochs >= 1
    validate(cfg)


def test_the_default_job_is_the_quickstart_recipe():
    """Hinton's MLP teacher; on digits the students see 3% of the labels (the KD gain then
    stands out of the noise: README); the command line and other recipes override it."""
    cfg = compose_cfg()
    assert cfg.experiment == "quickstart" and cfg.teacher.name == "mlp"
    assert cfg.dataset.train_fraction == 0.03 and cfg.student.train.epochs == 300
    assert cfg.dataset.unlabelled_transfer == "auto" and cfg.student.train.steps_per_epoch == 5
    card = compose_cfg("teacher=resnet18", "student=mlp", "T=4")
    assert card.teacher.name == "resnet18" and card.dataset.train_fraction == 0.03
    assert compose_cfg("dataset=fashion_mnist").dataset.train_fraction == 1.0
    assert compose_cfg("dataset.train_fraction=1").dataset.train_fraction == 1.0
    smoke = compose_cfg("experiment=smoke")
    assert smoke.teacher.name == "cnn" and smoke.dataset.train_fraction == 1.0


def _scale_pairs() -> list[tuple[str, str, str]]:
    """(scale, experiment, dataset): conf/scale/E_D.yaml is loaded for experiment=E dataset=D."""
    pairs = []
    for scale in options("scale"):
        for e in options("experiment"):
            d = scale.removeprefix(e + "_")
            if d != scale and d in options("dataset"):
                pairs.append((scale, e, d))
    return pairs


def test_every_scale_file_names_an_experiment_and_a_data_set():
    assert sorted(s for s, _, _ in _scale_pairs()) == options("scale")


@pytest.mark.parametrize("scale,experiment,dataset", _scale_pairs(), ids=lambda x: str(x))
def test_every_scale_file_composes_over_its_experiment(scale, experiment, dataset):
    cfg = compose_cfg(f"experiment={experiment}", f"dataset={dataset}")
    validate(compose_cfg(f"experiment={experiment}", f"dataset={dataset}"))  # resolves autos
    sizes = OmegaConf.to_container(OmegaConf.load(CONF / "scale" / f"{scale}.yaml"))

    def leaves(d: dict, prefix: str = ""):
        for k, v in d.items():
            yield from leaves(v, f"{prefix}{k}.") if isinstance(v, dict) else [(prefix + k, v)]

    for key, value in leaves(sizes):  # every size of the file is in force
        assert OmegaConf.select(cfg, key) == value, key


@pytest.mark.parametrize(
    "group,option", [(g, o) for g in GROUPS for o in options(g)], ids=lambda x: str(x)
)
def test_every_yaml_composes_and_validates(group, option):
    # methods of the language-model task only: composed with a text corpus
    lm_only = group == "method" and option in LM_METHODS and option not in METHODS
    text_data = group == "dataset" and DATASETS[option].task == "lm"
    token_model = group in ("teacher", "student") and MODEL_INPUTS.get(option) == "tokens"
    extra = ["dataset=pystdlib"] if lm_only or token_model else []
    if lm_only or text_data or token_model:  # the other roles read tokens too
        extra += [f"{r}=gpt" for r in ("teacher", "student") if r != group]
    elif group == "method":  # feature methods need a conv teacher; the default job's is an MLP
        extra += ["teacher=cnn"]
    # knowledge graphs (task kg): their methods and models with a graph, their graphs with
    # their models
    kg_only = group == "method" and option in KG_METHODS and option not in METHODS
    kg_model = group in ("teacher", "student") and MODEL_INPUTS.get(option) == "triples"
    if kg_only or kg_model or (group == "dataset" and DATASETS[option].task == "kg"):
        extra = ([] if group == "dataset" else ["dataset=umls"]) + [
            f"{r}=rotate" for r in ("teacher", "student") if r != group
        ]
    cfg = compose_cfg(f"{group}={option}", *extra)
    validate(cfg)
    if group in ("dataset", "method"):
        assert cfg[group].name == option
    if group in ("teacher", "student"):
        assert cfg[group].name in option  # e.g. teacher/resnet32x4.yaml names resnet32x4


def test_teacher_and_student_recipes_are_separate():
    cfg = compose_cfg("teacher.train.lr=0.5", "student.train.epochs=3")
    assert cfg.teacher.train.lr == 0.5 and cfg.student.train.lr != 0.5
    assert cfg.student.train.epochs == 3 and cfg.teacher.train.epochs != 3


def test_smoke_combines_with_other_groups():
    cfg = compose_cfg("experiment=smoke", "dataset=fashion_mnist", "teacher=resnet18")
    assert cfg.dataset.name == "fashion_mnist" and cfg.teacher.name == "resnet18"
    assert cfg.teacher.train.epochs <= 2 and cfg.student.train.epochs <= 2


@pytest.mark.parametrize(
    "override,words",
    [
        ("tacher.train.epochs=1", ["tacher"]),
        ("student.train.epoch=1", ["epoch"]),
        ("T=hot", ["hot", "T"]),
        ("student.train.epochs=1.5", ["epochs"]),
        ("dataset=imagenet", ["dataset/imagenet", "digits"]),
        ("teacher=vit", ["teacher/vit", "cnn"]),
        ("method=magic", ["method/magic", "kd"]),
    ],
)
def test_composition_errors_are_one_line_and_name_the_key(override, words):
    err = precheck([override])
    assert err is not None and "\n" not in err
    for w in words:
        assert w in err


def test_precheck_checks_each_value_of_a_sweep():
    assert precheck(["-m", "T=1,2,4", "alpha=0.1,0.9"]) is None
    err = precheck(["-m", "T=1,two,4"])
    assert err is not None and "two" in err


@pytest.mark.parametrize(
    "override,match",
    [
        ("T=0", "T must be > 0"),
        ("T=-2", "T must be > 0"),
        ("alpha=1.5", r"alpha must be in \[0, 1\]"),
        ("alpha=-0.1", r"alpha must be in \[0, 1\]"),
        ("teacher.train.epochs=0", "teacher.train.epochs must be >= 1"),
        ("student.train.batch_size=0", "student.train.batch_size must be >= 1"),
        ("student.train.lr=0", "student.train.lr must be > 0"),
        ("teacher.train.optimizer=lion", "choose one of: sgd, adam, adamw"),
        ("student.train.schedule=linear", "choose one of: constant, cosine, step"),
        ("teacher.name=vit", "unknown teacher model 'vit'; choose one of:.*mlp"),
        ("dataset.name=imagenet", "unknown dataset 'imagenet'; choose one of:.*digits"),
        ("method.name=magic", "unknown method 'magic'; choose one of:.*kd"),
        ("dataset.train_fraction=0", r"train_fraction must be in \(0, 1\]"),
        ("dataset.train_fraction=1.5", r"train_fraction must be in \(0, 1\]"),
        ("dataset.omit_classes=[3,10]", r"class\(es\) \[10\] out of range for digits"),
        ("dataset.omit_classes=[0,1,2,3,4,5,6,7,8,9]", "omits every class"),
        ("runtime.amp=fp8", "choose one of: auto, bf16, bf16_force, fp16, off"),
        ("runtime.num_threads=fast", "runtime.num_threads must be auto, adaptive or a count"),
    ],
)
def test_semantic_validation(override, match):
    cfg = compose_cfg(override)
    with pytest.raises(ConfigError, match=match):
        validate(cfg)


@pytest.mark.parametrize("setting", ["auto", "adaptive", "0", "3"])
def test_thread_settings_validate(setting):
    validate(compose_cfg(f"runtime.num_threads={setting}"))


def test_structured_schema_rejects_wrong_types_in_yaml(tmp_path):
    from kdrun.config import KdrunConfig

    schema = OmegaConf.structured(KdrunConfig)
    with pytest.raises(Exception, match="epochs"):
        OmegaConf.merge(schema, {"student": {"train": {"epochs": "many"}}})
    with pytest.raises(Exception, match="unknown_key"):
        OmegaConf.merge(schema, {"unknown_key": 1})
