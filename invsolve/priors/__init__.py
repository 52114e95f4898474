"""Diffusion priors behind one denoiser contract (see :mod:`invsolve.priors.base`)."""
from .base import Prior
from .diffusers_prior import DiffusersPrior, load_diffusers_prior
from .registry import WEIGHTS_DIR, available_priors, load_prior, prior_dir, register_loader

__all__ = ["Prior", "DiffusersPrior", "load_diffusers_prior", "load_prior", "available_priors", "prior_dir",
           "register_loader", "WEIGHTS_DIR"]
