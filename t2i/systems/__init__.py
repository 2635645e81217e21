"""Floor 4: one short file per system, composition only (which encoder, networks, stages, guidance)."""

from t2i.systems.base import SamplingConfig, ScheduleConfig, TextConfig
from t2i.systems.glide import GLIDE, GLIDEConfig, GLIDEStageConfig
from t2i.systems.ldm import LDM, LDMConfig

SYSTEMS = {"ldm": LDM, "glide": GLIDE}  # system.json's "system" -> the class that loads that folder

__all__ = ["GLIDE", "GLIDEConfig", "GLIDEStageConfig", "LDM", "LDMConfig", "SYSTEMS", "SamplingConfig",
           "ScheduleConfig", "TextConfig"]
