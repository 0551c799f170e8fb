"""Gaussian diffusion: noise schedules, samplers (DDPM, DDIM, DPM-Solver++) and the method."""

from segflow.methods.diffusion import samplers, schedule
from segflow.methods.diffusion.method import Diffusion

# The public names of the two submodules, re-exported.
SAMPLERS, SPACINGS, DPMSolverPP2M = samplers.SAMPLERS, samplers.SPACINGS, samplers.DPMSolverPP2M
ddim_step, ddpm_step, step_grid = samplers.ddim_step, samplers.ddpm_step, samplers.step_grid
NoiseSchedule, make_betas = schedule.NoiseSchedule, schedule.make_betas
rescale_zero_terminal_snr = schedule.rescale_zero_terminal_snr
target_of, x0_eps_of = schedule.target_of, schedule.x0_eps_of
StepNoise = samplers.StepNoise

__all__ = ["SAMPLERS", "SPACINGS", "DPMSolverPP2M", "Diffusion", "NoiseSchedule", "ddim_step", "ddpm_step",
           "StepNoise", "make_betas", "rescale_zero_terminal_snr", "step_grid", "target_of", "x0_eps_of"]
