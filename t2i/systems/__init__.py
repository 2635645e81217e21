"""Floor 4: one short file per system, composition only (which encoder, networks, stages, guidance).
A system joins by `@register("name")` (t2i.systems.system): `t2i.load`, the CLI and the contract test
find it in `SYSTEMS`."""

from t2i.diffusion.config import SamplingConfig, ScheduleConfig
from t2i.systems.base import TextConfig
from t2i.systems.cascade import Cascade, CascadeConfig, StageConfig
from t2i.systems.controlnet import ControlNetSystem, ControlNetSystemConfig
from t2i.systems.glide import GLIDE, GLIDEConfig, GLIDEStageConfig
from t2i.systems.imagen import Imagen, ImagenConfig
from t2i.systems.ldm import LDM, LDMConfig
from t2i.systems.request import CAPABILITIES, GenerationRequest
from t2i.systems.system import REGISTRY, System, SystemBase, register
from t2i.systems.unclip import UnCLIP
from t2i.systems.unclip_config import UnCLIPConfig
from t2i.systems.vd import VersatileDiffusion
from t2i.systems.vd_config import VDConfig

SYSTEMS = REGISTRY  # system.json's "system" -> the class that loads that folder

__all__ = ["CAPABILITIES", "Cascade", "CascadeConfig", "StageConfig", "ControlNetSystem", "ControlNetSystemConfig", "GLIDE", "GLIDEConfig", "GLIDEStageConfig", "GenerationRequest", "Imagen", "ImagenConfig", "LDM", "LDMConfig",
           "REGISTRY", "SYSTEMS", "SamplingConfig", "ScheduleConfig", "System", "SystemBase", "TextConfig",
           "UnCLIP", "UnCLIPConfig", "VDConfig", "VersatileDiffusion", "register"]
