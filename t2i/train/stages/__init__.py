"""Stage kinds; importing this package registers them in STAGES."""

from t2i.train.stages import (autoencoder, classifier, clip, controlnet, diffusion, prior, text_vae,  # noqa: F401
                              unclip_decoder, vd)  # (registration)
from t2i.train.stages.base import Stage, image_grid

__all__ = ["Stage", "image_grid"]
