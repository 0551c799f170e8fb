"""Gaussian diffusion: noise schedules, samplers (DDPM, DDIM, DPM-Solver++) and the method."""

from segflow.methods.diffusion.method import Diffusion
from segflow.methods.diffusion.samplers import (
    SAMPLERS,
    SPACINGS,
    DPMSolverPP2M,
    StepNoise,
    ddim_step,
    ddpm_step,
    step_grid,
)
from segflow.methods.diffusion.schedule import NoiseSchedule, make_betas, target_of, x0_eps_of

__all__ = ["SAMPLERS", "SPACINGS", "DPMSolverPP2M", "Diffusion", "NoiseSchedule", "ddim_step", "ddpm_step",
           "StepNoise", "make_betas", "step_grid", "target_of", "x0_eps_of"]
