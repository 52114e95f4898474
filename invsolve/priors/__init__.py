"""Diffusion priors behind one denoiser contract (see :mod:`invsolve.priors.base`)."""
from .adapters import GrayToRGB, PadPrior, ResizePrior, RGBToGray
from .adm import ADMConfig, ADMPrior, ADMUNet  # importing it registers the "adm" loader
from .base import Prior
from .diffusers_prior import DiffusersPrior, load_diffusers_prior
from .flow import FlowPrior
from .latent import LatentPrior, load_latent_prior  # importing it registers the "latent" loader
from .registry import WEIGHTS_DIR, available_priors, load_prior, prior_dir, register_loader
from .ve import DenoiserPrior, EDMPrior, VEPrior

__all__ = ["Prior", "DiffusersPrior", "load_diffusers_prior", "load_prior", "available_priors", "prior_dir",
           "register_loader", "WEIGHTS_DIR", "ADMConfig", "ADMPrior", "ADMUNet", "DenoiserPrior", "EDMPrior",
           "VEPrior", "PadPrior", "ResizePrior", "GrayToRGB", "RGBToGray", "LatentPrior", "load_latent_prior",
           "FlowPrior"]
