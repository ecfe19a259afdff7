"""Knowledge graphs for link prediction: (head, relation, tail) triples in three TSV files.

``dataset=nations|kinships|umls`` read the benchmark files that ship inside PyKEEN's wheel
(``pykeen/datasets/NAME/{train,valid,test}.txt``: no download); ``dataset=kg
dataset.path=DIR`` reads the user's own ``DIR/{train,valid,test}.txt``. One triple a line,
three tab-separated labels. Entities and relations are numbered in sorted label order from
the training file (PyKEEN's convention); an entity or relation of valid/test that training
never saw has no embedding, so it is refused, naming the file and line.

A *sample* is a query: each triple (h, r, t) gives the tail query (h, r) -> t and the head
query (t, r^-1) -> h. ``x`` holds (entity, relation id) pairs in PyKEEN's inverse-relation
numbering (relation r is 2r, its inverse 2r + 1), ``y`` the answer; a model scores every
entity for a query, so candidates are the columns of its output, as classes are for images.
Rows ``[0, n)`` are the tail queries of triples ``0..n-1``, rows ``[n, 2n)`` their head
queries. ``triples`` keeps each split's (n, 3) id triples for PyKEEN's filtered evaluator.
"""

from __future__ import annotations

import hashlib
import importlib.util
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from kdrun.data.bundle import DataBundle
from kdrun.data.registry import DATASETS, register_dataset
from kdrun.errors import DataError

SPLITS = ("train", "valid", "test")
BENCHMARKS = ("nations", "kinships", "umls")


@dataclass
class KGData(DataBundle):
    """A DataBundle of queries plus what link prediction needs beside them."""

    triples: dict[str, torch.Tensor] = field(default_factory=dict)  # split -> (n, 3) ids
    num_relations: int = 0  # without inverses
    relation_names: list[str] = field(default_factory=list)

    @property
    def in_shape(self) -> tuple[int, ...]:
        return (2,)


def pykeen_dataset_dir(name: str) -> Path:
    """Where PyKEEN's wheel keeps a benchmark's files (found without importing pykeen)."""
    spec = importlib.util.find_spec("pykeen")
    if spec is None or spec.origin is None:
        raise DataError(f"dataset={name} reads PyKEEN's packaged files; pip install 'kdrun[kg]'")
    return Path(spec.origin).parent / "datasets" / name


def read_triples(path: Path) -> list[tuple[str, str, str]]:
    """The (head, relation, tail) label triples of one TSV file; a bad line fails naming it."""
    if not path.is_file():
        raise DataError(f"{path} does not exist; a knowledge graph needs {', '.join(SPLITS)}.txt")
    out = []
    for n, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
        if not line.strip():
            continue
        parts = line.rstrip("\n").split("\t")
        if len(parts) != 3 or not all(p.strip() for p in parts):
            raise DataError(
                f"{path}:{n} has {len([p for p in parts if p.strip()])} tab-separated fields, "
                f"not 3 (head, relation, tail); fix or remove that line"
            )
        out.append((parts[0].strip(), parts[1].strip(), parts[2].strip()))
    if not out:
        raise DataError(f"{path} holds no triples; give one 'head<TAB>relation<TAB>tail' a line")
    return out


def _ids(
    rows: list[tuple[str, str, str]], ent: dict[str, int], rel: dict[str, int], path: Path
) -> torch.Tensor:
    out = np.empty((len(rows), 3), dtype=np.int64)
    for i, (h, r, t) in enumerate(rows):
        for label, table, what in ((h, ent, "entity"), (r, rel, "relation"), (t, ent, "entity")):
            if label not in table:
                raise DataError(
                    f"{path}: {what} '{label}' (triple {i + 1}) never occurs in the training "
                    f"triples, so it has no embedding; remove that triple or add it to train.txt"
                )
        out[i] = (ent[h], rel[r], ent[t])
    return torch.from_numpy(out)


def queries(triples: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Tail queries (h, 2r) -> t, then head queries (t, 2r + 1) -> h, of (n, 3) id triples."""
    h, r, t = triples.unbind(1)
    x = torch.cat([torch.stack([h, 2 * r], 1), torch.stack([t, 2 * r + 1], 1)])
    return x, torch.cat([t, h])


def _files_dir(cfg) -> Path:
    if cfg.name in BENCHMARKS:
        return pykeen_dataset_dir(cfg.name)
    if not cfg.path:
        raise DataError("dataset=kg needs dataset.path=DIR holding train.txt, valid.txt, test.txt")
    return Path(cfg.path).expanduser()


def _refuse_image_options(cfg) -> None:
    """Options of image data sets that mean nothing here fail instead of being ignored."""
    for key, neutral in (
        ("train_fraction", 1.0),
        ("omit_classes", []),
        ("keep_classes", []),
        ("limit_train", 0),
        ("limit_test", 0),
        ("augment", False),
    ):
        value = cfg.get(key, neutral)
        if (list(value) if isinstance(neutral, list) else value) != neutral:
            raise DataError(
                f"dataset.{key} is not supported for knowledge graphs (dataset={cfg.name}); "
                f"drop it (use dataset=kg dataset.path=DIR with fewer triples instead)"
            )


def load_kg_data(cfg) -> KGData:
    """The three splits of a knowledge graph as queries, with the id triples beside them."""
    if cfg.name not in DATASETS or DATASETS[cfg.name].task != "kg":
        names = sorted(k for k, v in DATASETS.items() if v.task == "kg")
        raise DataError(f"unknown knowledge graph '{cfg.name}'; choose one of: {', '.join(names)}")
    _refuse_image_options(cfg)
    root = _files_dir(cfg)
    rows = {s: read_triples(root / f"{s}.txt") for s in SPLITS}
    entities = sorted({e for h, _, t in rows["train"] for e in (h, t)})
    relations = sorted({r for _, r, _ in rows["train"]})
    ent = {e: i for i, e in enumerate(entities)}
    rel = {r: i for i, r in enumerate(relations)}
    triples = {s: _ids(rows[s], ent, rel, root / f"{s}.txt") for s in SPLITS}
    (x_tr, y_tr), (x_va, y_va), (x_te, y_te) = (queries(triples[s]) for s in SPLITS)
    digest = hashlib.sha256()
    for s in SPLITS:
        digest.update((root / f"{s}.txt").read_bytes())
    zero = torch.zeros(1)
    return KGData(
        name=cfg.name,
        x_train=x_tr,
        y_train=y_tr,
        x_val=x_va,
        y_val=y_va,
        x_test=x_te,
        y_test=y_te,
        num_classes=len(entities),
        class_names=entities,
        mean=zero,
        std=zero,
        student_idx=torch.arange(len(y_tr)),
        student_val_idx=torch.arange(len(y_va)),
        extra={
            "content": digest.hexdigest(),  # the files' bytes: store keys follow the data
            "entities": len(entities),
            "relations": len(relations),
            "triples": {s: len(triples[s]) for s in SPLITS},
        },
        triples=triples,
        num_relations=len(relations),
        relation_names=relations,
    )


def _kg_dataset(name: str):
    return register_dataset(name, num_classes=0, class_names=[], task="kg")


for _name in (*BENCHMARKS, "kg"):
    _kg_dataset(_name)(load_kg_data)
