"""Models: the generic backbone (encoder -> residual blocks -> decoder) and the certified DeepSSM."""

from ssm_lab.models.deep_ssm import DeepSSM, TaskDeepSSM

__all__ = ["DeepSSM", "TaskDeepSSM"]
