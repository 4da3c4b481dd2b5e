"""mixtune.mixing: stage-2 task mixing, difficulty curriculum, gradient modulation, sampler, log.

Plain seeded Python objects with JSON ``state_dict()`` / ``load_state_dict()``; no torch in their
logic except the style-gradient EMA, which works on the gradients in place. The trainer builds them from flat arguments (see :func:`make_policy`).
"""

from mixtune.mixing.base import MixingPolicy, project_bounded
from mixtune.mixing.baselines import DBLPolicy, Exp3Policy, StaticPolicy, UniformPolicy
from mixtune.mixing.curriculum import Curriculum
from mixtune.mixing.factory import POLICIES, make_policy
from mixtune.mixing.heat import HeatController, HeatTracker
from mixtune.mixing.log import MixingLog, make_record
from mixtune.mixing.modulation import AdaptiveModulation, GroupModulation, make_modulation
from mixtune.mixing.sampler import MixtureSampler

__all__ = [
    "AdaptiveModulation", "Curriculum", "DBLPolicy", "Exp3Policy", "GroupModulation", "HeatController",
    "HeatTracker", "MixingLog", "MixingPolicy", "MixtureSampler", "POLICIES", "StaticPolicy",
    "UniformPolicy", "make_modulation", "make_policy", "make_record", "project_bounded",
]
