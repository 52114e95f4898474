"""Old import paths keep working for one release, each with a DeprecationWarning naming the new place."""
from __future__ import annotations

import importlib

import pytest

MOVED = [  # (old module, name, new module, new name)
    ("invsolve.operators.sampling", "Inpainting", "invsolve.operators.inpainting", "Inpainting"),
    ("invsolve.operators.sampling", "random_mask", "invsolve.operators.inpainting", "random_mask"),
    ("invsolve.operators.sampling", "box_mask", "invsolve.operators.inpainting", "box_mask"),
    ("invsolve.operators.sampling", "SuperResolution", "invsolve.operators.resolution", "SuperResolution"),
    ("invsolve.operators.sampling", "bicubic_matrix", "invsolve.operators.resolution", "bicubic_matrix"),
    ("invsolve.samplers.classical", "adjoint", "invsolve.solvers.linear", "adjoint"),
    ("invsolve.samplers.classical", "cg_sense", "invsolve.solvers.linear", "cg_sense"),
    ("invsolve.samplers.classical", "fbp", "invsolve.solvers.linear", "fbp"),
    ("invsolve.samplers.tv", "tv", "invsolve.solvers.tv", "tv"),
    ("invsolve.samplers.tv", "grad2d", "invsolve.solvers.tv", "grad2d"),
    ("invsolve.samplers.tv", "grad2d_adjoint", "invsolve.solvers.tv", "grad2d_adjoint"),
    ("invsolve.samplers.tv", "tv_norm", "invsolve.solvers.tv", "tv_norm"),
    ("invsolve.samplers.wiener", "wiener", "invsolve.solvers.wiener", "wiener"),
    ("invsolve.samplers.wiener", "noise_sigma_mad", "invsolve.solvers.wiener", "noise_sigma_mad"),
    ("invsolve.samplers.wiener", "pinv", "invsolve.solvers.linear", "pseudo_inverse"),
    ("invsolve.samplers.dds", "data_consistency", "invsolve.samplers.consistency", "cg_solve"),
    ("invsolve.samplers.ddnm", "lin_from_prior", "invsolve.samplers.steps", "lin_from_prior"),
    ("invsolve.samplers.ddnm", "lin_to_prior", "invsolve.samplers.steps", "lin_to_prior"),
    ("invsolve.samplers.dps", "ancestral_coefficients", "invsolve.samplers.steps", "ancestral_coefficients"),
    ("invsolve.samplers.dps", "residual_norm", "invsolve.samplers.steps", "residual_norm"),
    ("invsolve.samplers.dps", "norm_grad", "invsolve.samplers.steps", "residual_gradient"),
    ("invsolve.samplers.psld", "residual", "invsolve.samplers.steps", "residual_norm"),
]


@pytest.mark.parametrize("old,name,new,new_name", MOVED, ids=[f"{o}.{n}" for o, n, _, _ in MOVED])
def test_old_path_warns_and_gives_the_same_object(old, name, new, new_name):
    module = importlib.import_module(old)
    with pytest.warns(DeprecationWarning, match=rf"{old}\.{name} is deprecated .*use {new}\.{new_name}"):
        obj = getattr(module, name)
    assert obj is getattr(importlib.import_module(new), new_name)


def test_from_import_of_an_old_path_warns():
    with pytest.warns(DeprecationWarning, match="invsolve.operators.sampling.Inpainting"):
        from invsolve.operators.sampling import Inpainting
    from invsolve.operators import Inpainting as new

    assert Inpainting is new


def test_unknown_names_are_still_attribute_errors():
    import invsolve.samplers.tv as old

    with pytest.raises(AttributeError, match="no attribute 'nothing'"):
        old.nothing  # noqa: B018


def test_the_moved_classical_methods_are_registered_under_their_names():
    from invsolve import solvers
    from invsolve.samplers import get_sampler

    assert get_sampler("tv").fn is solvers.tv.tv and get_sampler("wiener").fn is solvers.wiener.wiener
    assert get_sampler("pinv").fn is solvers.pseudo_inverse and get_sampler("cg").fn is solvers.cg_sense
