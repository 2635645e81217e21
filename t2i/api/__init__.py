"""The Python API, one job a module: loading (`t2i.load`), file output, conversion, guides, and turning
a `t2i train` run into a system. Every public name is importable from `t2i.api`."""

from __future__ import annotations

from t2i.api.conversion import CONVERT_DTYPES, CONVERT_FORMATS, convert
from t2i.api.files import check_writable, generate_files, open_image, output_paths, output_plan
from t2i.api.guides import guide_from_training_run, guide_kind, load_guide
from t2i.api.inpainting import add_inpainting, with_inpainting
from t2i.api.loading import check_device, inpaint_generator, load, model_generator
from t2i.api.runs import (SAMPLE_LOWRES_NOISE, imagen_from_training_runs, is_training_run, system_from_training_run,
                          system_from_training_runs)
from t2i.io.weights import PICKLE_SUFFIXES, WEIGHTS_DIR, shipped_weights, system_folder

__all__ = ["add_inpainting", "with_inpainting", "CONVERT_DTYPES", "CONVERT_FORMATS", "PICKLE_SUFFIXES", "SAMPLE_LOWRES_NOISE", "WEIGHTS_DIR", "check_device",
           "check_writable", "output_plan", "convert",
           "generate_files", "guide_from_training_run", "guide_kind", "imagen_from_training_runs", "inpaint_generator", "is_training_run", "load",
           "load_guide", "model_generator", "open_image", "output_paths", "shipped_weights", "system_from_training_run",
           "system_from_training_runs", "system_folder"]
