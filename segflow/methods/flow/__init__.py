"""Conditional flow matching: the probability path, ODE solvers and the method."""

from segflow.methods.flow import path, solvers
from segflow.methods.flow.method import FlowMatching
from segflow.methods.flow.prior import PriorFlowMatching

SOLVERS, solve, dopri5 = solvers.SOLVERS, solvers.solve, solvers.dopri5

__all__ = ["SOLVERS", "FlowMatching", "PriorFlowMatching", "dopri5", "path", "solve", "solvers"]
