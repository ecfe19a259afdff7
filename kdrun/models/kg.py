"""Knowledge-graph embedding models: PyKEEN's RotatE, ComplEx and TransE behind kdrun's model
interface (the ``kg`` extra).

``teacher=rotate teacher.dim=500`` builds PyKEEN's model with ``embedding_dim=dim`` (RotatE
and ComplEx: ``dim`` complex numbers per entity) and ``teacher.kwargs`` passed on. A model
reads queries (entity, relation id in PyKEEN's inverse numbering; kdrun.data.kg) and returns
the score of every entity as the answer: the candidates are its output columns, like classes.
PyKEEN keeps some parameters on a constraint set (RotatE's relations on the unit circle,
TransE's entities on the unit sphere) with ``post_parameter_update`` after each optimiser
step; kdrun's loop has no such hook, so ``forward`` applies it before it scores in training
(i.e. after the previous step) and ``constrained`` before every evaluation.
"""

from __future__ import annotations

import logging
from typing import Any

import torch
from torch import nn

from kdrun.errors import ConfigError
from kdrun.models.registry import register_model

KG_MODELS = {"rotate": "RotatE", "complex": "ComplEx", "transe": "TransE"}


def quiet_pykeen() -> None:
    """PyKEEN logs each model it builds and each evaluation's time, torch_max_mem warns on
    each CPU evaluation: kdrun's own lines say what happened. Set at each use: Hydra's logging
    setup, which runs after these modules are imported, resets the levels."""
    logging.getLogger("pykeen").setLevel(logging.WARNING)
    logging.getLogger("torch_max_mem").setLevel(logging.ERROR)


def _pykeen():
    try:
        import pykeen.models as models
        from pykeen.triples import CoreTriplesFactory
        from pykeen.utils import NoRandomSeedNecessary
    except ImportError:
        raise ConfigError("knowledge-graph models need PyKEEN; pip install 'kdrun[kg]'") from None
    quiet_pykeen()  # after the import: importing PyKEEN sets its own levels
    return models, CoreTriplesFactory, NoRandomSeedNecessary


class KGEModel(nn.Module):
    """A PyKEEN model (``kge``) scoring all entities for a batch of (entity, relation) queries."""

    kd_stages: list[str] = []  # feature methods do not apply: there are no stages
    kd_head = None

    def __init__(self, kge: nn.Module, name: str, dim: int) -> None:
        super().__init__()
        self.kge, self.kind, self.dim = kge, name, dim

    def constrained(self) -> KGEModel:
        with torch.no_grad():
            self.kge.post_parameter_update()
        return self

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.training and torch.is_grad_enabled():
            self.constrained()
        return self.kge.score_t(x.long())

    def triple_scores(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """The score of each query's answer ``y`` (B,), as ``forward(x)[i, y[i]]``."""
        return self.kge.score_hrt(torch.cat([x.long(), y.long()[:, None]], 1)).squeeze(-1)

    def entity_vectors(self, ids: torch.Tensor) -> torch.Tensor:
        """Real (B, k) entity embeddings (complex ones as [real parts, imaginary parts])."""
        e = self.kge.entity_representations[0](indices=ids.long())
        if e.is_complex():
            e = torch.cat([e.real, e.imag], -1)
        return e.reshape(len(ids), -1)


def build_kg_model(cfg: Any, num_entities: int, num_relations: int, triples: torch.Tensor):
    """PyKEEN's model ``cfg.name`` at ``cfg.dim`` for this graph (``triples``: training ids)."""
    models, factory, no_seed = _pykeen()
    if cfg.name not in KG_MODELS:
        raise ConfigError(f"unknown KG model '{cfg.name}'; choose one of: {', '.join(KG_MODELS)}")
    dim = int(cfg.get("dim") or 0)
    if dim < 1:
        raise ConfigError(f"{cfg.name} needs an embedding dimension >= 1; set e.g. student.dim=16")
    tf = factory.create(
        mapped_triples=triples,
        num_entities=num_entities,
        num_relations=num_relations,
        create_inverse_triples=True,  # head queries are tail queries of inverse relations
    )
    kwargs = dict(cfg.get("kwargs") or {})
    if cfg.name == "complex":  # its default L_p regulariser needs PyKEEN's own loop to collect
        kwargs.setdefault("regularizer", None)
    # the seed is kdrun's (torch.manual_seed before the build): PyKEEN must not reseed
    kge = getattr(models, KG_MODELS[cfg.name])(
        triples_factory=tf, embedding_dim=dim, random_seed=no_seed, **kwargs
    )
    return KGEModel(kge, cfg.name, dim).constrained()


def _builder(name: str):
    @register_model(name, inputs="triples")
    def build(cfg, in_shape, num_classes, data=None):
        if data is None or not hasattr(data, "triples"):
            raise ConfigError(f"{name} is a knowledge-graph model; use it with dataset=umls etc.")
        return build_kg_model(cfg, num_classes, data.num_relations, data.triples["train"])

    return build


for _name in KG_MODELS:
    _builder(_name)
