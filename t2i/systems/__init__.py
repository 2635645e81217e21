"""Floor 4: one short file per system, composition only (which encoder, networks, stages, guidance)."""

from t2i.systems.base import SamplingConfig, ScheduleConfig
from t2i.systems.ldm import LDM, LDMConfig, TextConfig

SYSTEMS = {"ldm": LDM}  # system.json's "system" -> the class that loads that folder

__all__ = ["LDM", "LDMConfig", "SYSTEMS", "SamplingConfig", "ScheduleConfig", "TextConfig"]
