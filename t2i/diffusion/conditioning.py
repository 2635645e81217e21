"""Image conditioning that enters a network as extra input channels (through `ConcatInputs`):
a noise-augmented low-resolution image for super-resolution stages, and the mask + masked image
for inpainting. Training stages and systems build these tensors here, so both see the same channels.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from t2i.diffusion.denoisers import append_dims


def noise_augment(x: torch.Tensor, sigma: torch.Tensor, noise: torch.Tensor) -> torch.Tensor:
    """Noise conditioning augmentation (Ho et al. 2022, "Cascaded Diffusion Models", sec. 4.3): the
    forward process applied to a conditioning image at per-sample sigma (B,), returned in VP form,
    (x + sigma eps) / sqrt(1 + sigma^2) = sqrt(a) x + sqrt(1 - a) eps."""
    s = append_dims(sigma.to(x), x.ndim)
    return (x + s * noise.to(x)) / (s**2 + 1).sqrt()


def lowres_condition(lowres: torch.Tensor, size: tuple[int, int], sigma: torch.Tensor,
                     noise: torch.Tensor) -> torch.Tensor:
    """A super-resolution stage's extra channels: the low-res image (B, C, h, w) in [-1, 1],
    noise-augmented at sigma (B,), upsampled bilinearly to size = (H, W) (ADM's SuperResModel)."""
    return F.interpolate(noise_augment(lowres, sigma, noise), size=tuple(size), mode="bilinear",
                         align_corners=False)  # (B, C, H, W)


def upsampled_lowres(lowres: torch.Tensor, size: tuple[int, int], sigma: torch.Tensor,
                     noise: torch.Tensor) -> torch.Tensor:
    """`lowres_condition` in DeepFloyd IF's order: enlarged first (bilinear, corners aligned), then
    noise-augmented at full size with noise (B, C, H, W) (diffusers' IFSuperResolutionPipeline)."""
    return noise_augment(F.interpolate(lowres, size=tuple(size), mode="bilinear", align_corners=True), sigma, noise)


def inpaint_condition(image: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """An inpainting model's extra channels (GLIDE sec. 3.2): the mask (B, 1, H, W), 1 = repaint,
    then the image with the repainted region erased (B, C, H, W) -> (B, 1 + C, H, W)."""
    mask = mask.to(image)
    return torch.cat([mask, image * (1 - mask)], dim=1)
