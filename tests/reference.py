"""Kept for test modules that import ``reference``: the reference lives in rnnfast.reference."""
from rnnfast.reference import *  # noqa: F401,F403
from rnnfast.reference import ACT, run_direction, run_layer  # noqa: F401
