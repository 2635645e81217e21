"""diffusers Versatile Diffusion (image_unet UNet2DConditionModel + text_unet UNetFlatConditionModel) -> t2i
`MultiFlowUNet`: the diffusers UNet key map (t2i.io.diffusers_unet) applied to each UNet, its attention rows
moved to the context layers of the UNet's modality (VD stores image-context attention in image_unet and
text-context attention in text_unet), the rest to that modality's data layers. The one time embedding is
image_unet's (in the VD checkpoint text_unet's is the same; Xu et al. 2023 share it). Also VD's image
encoder, transformers' CLIPVisionModelWithProjection, as a t2i ViT (its context is every projected token)."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import torch

from t2i.io.clip_text import transformers_table
from t2i.io.diffusers_unet import WEIGHTS_NAME, diffusers_table, unet_config_from_diffusers
from t2i.io.keymap import Rename, from_layout, renames
from t2i.io.weights import load_into, read_model_folder
from t2i.nn.transformer import TextTransformerConfig, TransformerConfig
from t2i.nn.vit import ViT, ViTConfig
from t2i.nn.multiflow import MultiFlowConfig, MultiFlowUNet, attention_slots
from t2i.nn.unet import UNet

_FLAT_TO_2D = {"CrossAttnDownBlockFlat": "CrossAttnDownBlock2D", "DownBlockFlat": "DownBlock2D",
               "CrossAttnUpBlockFlat": "CrossAttnUpBlock2D", "UpBlockFlat": "UpBlock2D",
               "UNetMidBlockFlatCrossAttn": "UNetMidBlock2DCrossAttn"}


def _flat_as_2d(d: dict[str, Any]) -> dict[str, Any]:
    """A UNetFlatConditionModel config read as the UNet2DConditionModel config of the same topology."""
    out = dict(d)
    for key in ("down_block_types", "up_block_types"):
        out[key] = [_FLAT_TO_2D.get(b, b) for b in d.get(key, ())]
    out["mid_block_type"] = _FLAT_TO_2D.get(d.get("mid_block_type", "UNetMidBlockFlatCrossAttn"), "?")
    for key in ("in_channels", "out_channels"):
        shape = list(d[key]) if isinstance(d[key], (list, tuple)) else [d[key], 4, 1]
        if shape[1:] != [1, 1]:
            raise ValueError(f"diffusers text_unet {key}={d[key]}: t2i's flat UNet reads a vector ([D, 1, 1])")
        out[key] = shape[0]
    return out


def vd_config_from_diffusers(image: dict[str, Any], text: dict[str, Any]) -> MultiFlowConfig:
    """The two diffusers UNet configs -> MultiFlowConfig; refuses UNets whose levels and slots differ."""
    cfg = MultiFlowConfig(unet_config_from_diffusers(image), text_dim=_flat_as_2d(text)["in_channels"])
    if unet_config_from_diffusers(_flat_as_2d(text)) != cfg.text:
        raise ValueError("diffusers VD: text_unet's levels, res blocks or attention differ from image_unet's")
    return cfg


def _flat_rows(rows: list[Rename]) -> list[Rename]:
    """The image UNet's rows for the flat UNet: its resampling layers are Linears, not modules holding a conv."""
    fix = lambda k: k.replace(".down.conv.", ".down.").replace(".up.conv.", ".up.").replace("samplers.0.conv.", "samplers.0.")  # noqa: E731
    return [Rename(fix(r.ours), tuple(fix(t) for t in r.theirs), r.conv1x1) for r in rows]


def vd_table(config: MultiFlowConfig) -> list[Rename]:
    """Every MultiFlowUNet tensor and its name in the pair {image_unet., text_unet.}."""
    with torch.device("meta"):
        slots = {name: i for i, name in enumerate(attention_slots(UNet(config.image)))}
    rows = []
    for modality, table in (("image", diffusers_table(config.image)), ("text", _flat_rows(diffusers_table(config.text)))):
        for r in table:
            head, _, rest = r.ours.partition(".attn.")
            if r.ours.startswith("time_embed.") and modality == "text":
                continue  # one global time embedding: image_unet's
            if r.ours.startswith("time_embed."):
                ours = r.ours
            elif rest and head in slots:
                ours = f"context.{modality}.{slots[head]}.{rest}"
            else:
                ours = f"data.{modality}.{r.ours}"
            rows.append(Rename(ours, tuple(f"{modality}_unet.{t}" for t in r.theirs), r.conv1x1))
    return rows


def multiflow_from_diffusers(image_unet: Any, text_unet: Any) -> MultiFlowUNet:
    """A MultiFlowUNet from diffusers' image_unet and text_unet modules (or anything with .config, .state_dict())."""
    return _build(dict(image_unet.config), dict(text_unet.config),
                  {**{f"image_unet.{k}": v for k, v in image_unet.state_dict().items()},
                   **{f"text_unet.{k}": v for k, v in text_unet.state_dict().items()}})


def load_diffusers_vd_unets(folder: str | os.PathLike) -> MultiFlowUNet:
    """A MultiFlowUNet from a diffusers VersatileDiffusion pipeline folder (image_unet/, text_unet/)."""
    folder = Path(folder)
    image_cfg, image_state = read_model_folder(folder / "image_unet", WEIGHTS_NAME)
    text_cfg, text_state = read_model_folder(folder / "text_unet", WEIGHTS_NAME)
    return _build(image_cfg, text_cfg, {**{f"image_unet.{k}": v for k, v in image_state.items()},
                                        **{f"text_unet.{k}": v for k, v in text_state.items()}})


def _build(image_cfg: dict[str, Any], text_cfg: dict[str, Any], state: dict[str, torch.Tensor]) -> MultiFlowUNet:
    config = vd_config_from_diffusers(image_cfg, text_cfg)
    model = MultiFlowUNet(config)
    expected = {k: v.shape for k, v in model.state_dict().items()}
    ignore = ("text_unet.time_embedding.linear_1.weight", "text_unet.time_embedding.linear_1.bias",
              "text_unet.time_embedding.linear_2.weight", "text_unet.time_embedding.linear_2.bias")
    load_into(model, from_layout(vd_table(config), state, expected=expected, ignore=ignore, where="diffusers VD"),
              where="diffusers VD")
    return model


def vit_config_from_transformers(d: dict[str, Any]) -> ViTConfig:
    """A transformers CLIPVisionConfig dict -> ViTConfig (projected; VD's image context reads every token)."""
    act = d.get("hidden_act", "quick_gelu")
    if act not in ("quick_gelu", "gelu"):
        raise ValueError(f"unsupported CLIP vision hidden_act {act!r} (quick_gelu or gelu)")
    width = d.get("hidden_size", 768)
    tower = TransformerConfig(width=width, layers=d.get("num_hidden_layers", 12), heads=d.get("num_attention_heads", 12),
                              mlp_dim=d.get("intermediate_size", 3072), activation=act, eps=d.get("layer_norm_eps", 1e-5))
    return ViTConfig(image_size=d.get("image_size", 224), patch_size=d.get("patch_size", 32),
                     in_channels=d.get("num_channels", 3), transformer=tower, proj_dim=d.get("projection_dim", 512))


def vit_table(cfg: ViTConfig) -> list[Rename]:
    """Every t2i ViT tensor and its CLIPVisionModelWithProjection name (the layers as CLIP text's)."""
    p = "vision_model."
    layers = [r for r in transformers_table(TextTransformerConfig(transformer=cfg.transformer), p)
              if r.ours.startswith("transformer.")]
    return [Rename("patch_embedding.weight", (f"{p}embeddings.patch_embedding.weight",)),
            Rename("class_embedding", (f"{p}embeddings.class_embedding",)),
            Rename("position_embedding", (f"{p}embeddings.position_embedding.weight",)),
            *renames("pre_norm", f"{p}pre_layrnorm"), *layers, *renames("final_norm", f"{p}post_layernorm"),
            Rename("proj.weight", ("visual_projection.weight",))]


def vit_from_transformers(model: Any) -> ViT:
    """A t2i ViT from a transformers CLIPVisionModelWithProjection (module with .config and .state_dict())."""
    vit = ViT(vit_config_from_transformers(model.config.to_dict()))
    expected = {k: v.shape for k, v in vit.state_dict().items()}
    state = from_layout(vit_table(vit.config), model.state_dict(), expected=expected, ignore=("position_ids",),
                        where="CLIP vision")
    load_into(vit, state, where="CLIP vision")
    return vit.eval()
