"""Named views of one example: the teacher and the student may read different forms of it.

A data set's own view is ``full`` (or, for a data set that holds each example in several
forms, the first of its named views: ``RawData.views``). Every image data set also has the
derived view ``low_res``: its images area-downsampled by ``dataset.low_res_factor`` (28x28
-> 7x7 at 4). Every view holds the same rows in the same order, so a teacher's outputs on its
view pair with the student's inputs on another by row index (the teacher-output cache).
"""

from __future__ import annotations

import dataclasses
from typing import Any

import torch
import torch.nn.functional as F

from kdrun.data.bundle import DataBundle
from kdrun.data.registry import DATASETS
from kdrun.errors import ConfigError

OWN = "full"
LOW_RES = "low_res"


def _is_image(bundle: Any) -> bool:
    x = getattr(bundle, "x_train", None)
    return (
        isinstance(x, torch.Tensor)
        and x.dim() == 4
        and x.is_floating_point()
        and min(x.shape[2:]) > 1
    )


def view_names(bundle: Any) -> list[str]:
    """The views ``bundle`` (as loaded) offers, its own first."""
    if not isinstance(bundle, DataBundle):
        return []
    names = [bundle.view, *bundle.named_views]
    return names + ([LOW_RES] if _is_image(bundle) else [])


def check_view(name: str, names: list[str], role: str, dataset: str) -> None:
    """``role``.view=``name`` is one of ``names``, or a one-line error listing them."""
    if name not in names:
        offer = ", ".join(names) if names else f"none: dataset={dataset} has no views"
        raise ConfigError(
            f"{role}.view={name} is not a view of dataset={dataset}; choose one of: {offer}"
        )


def resolve(bundle: Any, name: str | None, role: str, dataset: str) -> str:
    """The view ``name`` (None: the data set's own) of ``role``'s model, checked."""
    names = view_names(bundle)
    if name is None:
        return names[0] if names else OWN
    check_view(name, names, role, dataset)
    return name


def own_view(dataset_cfg: Any, name: str | None) -> bool:
    """Whether ``name`` is certainly the data set's own view (None, or ``full`` on a data set
    without named views): then a store key holds no view, as before views existed."""
    if name is None:
        return True
    spec = DATASETS.get(str(dataset_cfg.name))
    named = spec.views if spec is not None else ()
    return name == (named[0] if named else OWN)


def view_identity(dataset_cfg: Any, name: str | None) -> dict[str, Any] | None:
    """What a store key holds of a model's view: None for the data set's own, else its name
    and, for a derived view, what derives it."""
    if own_view(dataset_cfg, name):
        return None
    ident: dict[str, Any] = {"name": name}
    if name == LOW_RES:
        ident["factor"] = int(dataset_cfg.low_res_factor)
    return ident


def _low_res(bundle: DataBundle, factor: int) -> dict[str, torch.Tensor]:
    """Area downsampling (the mean of each factor x factor block). Pooling the normalised
    pixels equals normalising the pooled ones (the map is affine per channel), so the
    bundle's mean and std still describe the raw pixels."""
    h, w = bundle.in_shape[1:]
    if factor < 2 or h % factor or w % factor:
        divisors = [f for f in range(2, min(h, w) + 1) if h % f == 0 and w % f == 0]
        raise ConfigError(
            f"dataset.low_res_factor={factor} does not divide the {h}x{w} images of "
            f"{bundle.name}; use one of: {', '.join(map(str, divisors))}"
        )
    return {k: F.avg_pool2d(getattr(bundle, k), factor) for k in ("x_train", "x_val", "x_test")}


def select(bundle: Any, name: str, dataset_cfg: Any) -> Any:
    """``bundle`` as seen through view ``name`` (from ``resolve``): the same rows, labels and
    index sets, other inputs. The own view is ``bundle`` itself."""
    if name == bundle.view:
        return bundle
    extra = dict(bundle.extra)
    if name == LOW_RES:
        factor = int(dataset_cfg.low_res_factor)
        tensors: dict[str, torch.Tensor] = _low_res(bundle, factor)
        extra["view"] = {"name": name, "factor": factor}  # what an exported model is fed
    else:
        tensors = dict(bundle.named_views[name])
        extra["view"] = {"name": name}
    return dataclasses.replace(bundle, view=name, named_views={}, extra=extra, **tensors)
