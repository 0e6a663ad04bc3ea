"""The "Adding an estimator" example of docs/estimators.md works as printed."""

from __future__ import annotations

import torch

from tests.conftest import DOCS_ESTIMATORS, docs_estimator_example
from vae_core.estimators import REGISTRY, make_estimator


def test_readme_estimator_registers_and_is_unbiased(monkeypatch):
    from tests.test_estimators import assert_unbiased
    from vae_core.exact import quadrature_elbo, reference_gradient, small_batch, small_vae

    monkeypatch.setattr("vae_core.estimators.base.REGISTRY", dict(REGISTRY))
    namespace: dict[str, object] = {}
    exec(compile(docs_estimator_example(), str(DOCS_ESTIMATORS), "exec"), namespace)
    from vae_core.estimators import base

    name = next(n for n in base.REGISTRY if n not in REGISTRY)
    model, x = small_vae(), small_batch()
    estimator = base.REGISTRY[name](model, kl="mc", n_particles=2)
    reference = reference_gradient(model, lambda: quadrature_elbo(model, x))
    assert_unbiased(estimator, x, reference, seed=9)
    assert name not in REGISTRY and make_estimator("reparam", model).name == "reparam"
    assert torch.isfinite(estimator(x, estimator.sample_noise(len(x))).surrogate)
