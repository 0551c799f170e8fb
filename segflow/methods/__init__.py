"""Methods: training objectives with matching samplers (no Lightning, no Hydra)."""

from segflow.methods.base import GenerativeMethod, Method, Prediction
from segflow.methods.diffusion import Diffusion
from segflow.methods.flow import FlowMatching, PriorFlowMatching
from segflow.methods.supervised import Supervised

__all__ = ["Diffusion", "FlowMatching", "GenerativeMethod", "Method", "Prediction", "PriorFlowMatching",
           "Supervised"]
