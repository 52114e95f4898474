"""invsolve: imaging inverse problems with diffusion priors.

>>> import invsolve as inv
>>> res = inv.solve(y, op, prior="mri-brain", sampler="dds", steps=50)   # doctest: +SKIP
"""
from . import operators, samplers
from .api import Result, solve
from .errors import InvsolveError
from .priors import Prior, available_priors, load_prior
from .samplers import available_samplers

__version__ = "0.1.0"
__all__ = ["solve", "Result", "load_prior", "available_priors", "available_samplers", "operators", "samplers",
           "Prior", "InvsolveError", "__version__"]
