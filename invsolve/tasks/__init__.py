"""Problem builders for ``invsolve reconstruct`` and ``invsolve evaluate``.

A *task* turns the ``problem:`` section of a config into a :class:`Problem`: the operator, the measurement and
(when known) the ground truth. Each task registers its option defaults and what each option accepts
(:class:`~invsolve.samplers.knobs.Knob`); :func:`check_options` validates a ``problem:`` section before anything is
built. Every built-in task module is imported here, by name, so that a missing or misspelt module fails at import.
"""
from . import blackbox, ct, imaging, mri, ns  # noqa: F401  (importing registers them)
from .registry import Problem, TaskSpec, available_tasks, build_problem, check_options, get_task, register_task

__all__ = ["Problem", "TaskSpec", "available_tasks", "build_problem", "check_options", "get_task", "register_task"]
