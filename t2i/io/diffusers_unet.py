"""diffusers `UNet2DConditionModel` <-> t2i `UNet`: config translation and an explicit key map.

Covers the Stable Diffusion 1.x and 2.x layouts (1x1-conv or linear transformer projections,
heads per model or per level), ADM scale-shift resblocks, res blocks per model or per level, the class /
projection embeddings, the augmentation-level embedding (class_embed_type="timestep", DeepFloyd IF's
stage II noise level), and DeepFloyd IF's UNets (reading): res blocks that resample, "simple" attention with
the group-normed text joining the keys/values, the text projection and the attention-pooled text embedding.
diffusers calls the number of heads `attention_head_dim` in these configs (a known naming quirk);
it is read and written here exactly as diffusers interprets it.
"""

from __future__ import annotations

import os
from pathlib import Path
from dataclasses import dataclass
from typing import Any, Callable

import torch

from t2i.io.keymap import Rename, from_layout, renames, to_layout
from t2i.io.weights import load_model_folder, write_model_folder
from t2i.nn.unet import UNet, UNetConfig

WEIGHTS_NAME = "diffusion_pytorch_model.safetensors"
_CROSS_DOWN, _PLAIN_DOWN = "CrossAttnDownBlock2D", "DownBlock2D"
_CROSS_UP, _PLAIN_UP = "CrossAttnUpBlock2D", "UpBlock2D"
_MID = "UNetMidBlock2DCrossAttn"

# diffusers options whose value must be exactly this for the t2i UNet to compute the same function
_REQUIRED = {
    "center_input_sample": False,
    "flip_sin_to_cos": True,
    "freq_shift": 0,
    "only_cross_attention": False,
    "downsample_padding": 1,
    "dual_cross_attention": False,
    "addition_time_embed_dim": None,
    "time_embedding_type": "positional",
    "timestep_post_act": None,
    "time_cond_proj_dim": None,
    "conv_in_kernel": 3,
    "conv_out_kernel": 3,
    "attention_type": "default",
    "class_embeddings_concat": False,
    "mid_block_only_cross_attention": None,
    "reverse_transformer_layers_per_block": None,
}
_IF_DOWN, _IF_CROSS_DOWN = "ResnetDownsampleBlock2D", "SimpleCrossAttnDownBlock2D"  # DeepFloyd IF's blocks
_IF_UP, _IF_CROSS_UP, _IF_MID = "ResnetUpsampleBlock2D", "SimpleCrossAttnUpBlock2D", "UNetMidBlock2DSimpleCrossAttn"
_FAMILIES = {  # (plain down, cross down, plain up, cross up, mid): SD's transformer UNet or IF's ADM-style one
    "transformer": (_PLAIN_DOWN, _CROSS_DOWN, _PLAIN_UP, _CROSS_UP, _MID),
    "adm": (_IF_DOWN, _IF_CROSS_DOWN, _IF_UP, _IF_CROSS_UP, _IF_MID),
}


def _if_options(d: dict[str, Any]) -> dict[str, Any]:
    """UNetConfig fields of the options DeepFloyd IF sets (act, resampling res blocks, output scale, text
    projection, group-normed context, attention-pooled text); refuses the combinations t2i lacks."""
    act = {"swish": "silu"}.get(d.get("act_fn", "silu"), d.get("act_fn", "silu"))
    if act not in ("silu", "gelu"):
        raise ValueError(f"unsupported diffusers UNet act_fn {act!r} (silu or gelu)")
    # an activation of the summed embedding and none before each res block's projection is the same function
    time_act, skip = d.get("time_embedding_act_fn"), bool(d.get("resnet_skip_time_act", False))
    if (time_act, skip) not in ((None, False), (d.get("act_fn", "silu"), True)):
        raise ValueError(f"unsupported diffusers UNet time_embedding_act_fn={time_act!r} with "
                         f"resnet_skip_time_act={skip} (t2i: none and False, or act_fn and True)")
    out_scale = float(d.get("resnet_out_scale_factor", 1.0))
    if float(d.get("mid_block_scale_factor", 1)) != out_scale:
        raise ValueError("unsupported diffusers UNet mid_block_scale_factor != resnet_out_scale_factor")
    hid, hid_type = d.get("encoder_hid_dim"), d.get("encoder_hid_dim_type")
    if hid_type not in (None, "text_proj") or hid_type is not None and hid is None:
        raise ValueError(f"unsupported diffusers UNet encoder_hid_dim_type {hid_type!r} (only 'text_proj')")
    add, norm = d.get("addition_embed_type"), d.get("cross_attention_norm")
    if add not in (None, "text") or norm not in (None, "group_norm"):
        raise ValueError(f"unsupported diffusers UNet addition_embed_type={add!r} / cross_attention_norm={norm!r} "
                         "(None or 'text' / None or 'group_norm')")
    return dict(act=act, res_out_scale=out_scale, context_in_dim=hid,
                text_pool_heads=d.get("addition_embed_type_num_heads", 64) if add == "text" else None,
                context_norm_groups=d.get("cross_attention_norm_num_groups", 32) if norm else None)


def unet_config_from_diffusers(d: dict[str, Any]) -> UNetConfig:
    """A diffusers UNet2DConditionModel config dict (config.json) -> UNetConfig; refuses what t2i lacks."""
    for key, want in _REQUIRED.items():
        got = d.get(key, want)
        if got != want and not (key == "mid_block_only_cross_attention" and got is False):
            raise ValueError(f"unsupported diffusers UNet option {key}={got!r} (t2i supports only {want!r})")
    channels = tuple(d.get("block_out_channels", (320, 640, 1280, 1280)))
    n = len(channels)
    down = tuple(d.get("down_block_types", (_CROSS_DOWN,) * (n - 1) + (_PLAIN_DOWN,)))
    up = tuple(d.get("up_block_types", (_PLAIN_UP,) + (_CROSS_UP,) * (n - 1)))
    family = next((f for f, b in _FAMILIES.items() if set(down) <= set(b[:2]) and set(up) <= set(b[2:4])), None)
    if len(down) != n or len(up) != n or family is None:
        raise ValueError(f"unsupported diffusers UNet blocks: down={down}, up={up}")
    _, cross_down, _, cross_up, mid_type = _FAMILIES[family]
    levels = tuple(i for i, b in enumerate(down) if b == cross_down)
    if tuple(i for i, b in enumerate(reversed(up)) if b == cross_up) != levels:
        raise ValueError(f"diffusers UNet up blocks {up} do not mirror the down blocks {down}")
    mid = d.get("mid_block_type", _MID)
    if mid != mid_type:
        raise ValueError(f"unsupported diffusers UNet mid_block_type {mid!r} with these blocks (only {mid_type!r})")
    layers = d.get("layers_per_block", 2)
    depth = d.get("transformer_layers_per_block", 1)
    if isinstance(depth, (list, tuple)):
        if len(set(depth)) != 1:
            raise ValueError(f"per-level transformer_layers_per_block {depth} is not supported")
        depth = depth[0]
    layers = tuple(layers) if isinstance(layers, (list, tuple)) else layers
    if not isinstance(d.get("cross_attention_dim", 1280), int):
        raise ValueError("per-level cross_attention_dim is not supported")
    heads = d.get("num_attention_heads") or d.get("attention_head_dim", 8)  # the diffusers quirk
    heads = tuple(heads) if isinstance(heads, (list, tuple)) else int(heads)
    if family == "adm" and not isinstance(heads, int):
        raise ValueError("per-level attention_head_dim is not supported for IF's simple-attention blocks")
    cls_type = d.get("class_embed_type")
    num_classes = d.get("num_class_embeds") if cls_type is None else None
    pooled_dim = None
    if cls_type == "projection":
        pooled_dim = d.get("projection_class_embeddings_input_dim")
    elif cls_type not in (None, "timestep"):
        raise ValueError(f"unsupported diffusers UNet class_embed_type {cls_type!r} (None, 'projection' or 'timestep')")
    shift = d.get("resnet_time_scale_shift", "default")
    if shift not in ("default", "scale_shift"):
        raise ValueError(f"unsupported diffusers UNet resnet_time_scale_shift {shift!r}")
    return UNetConfig(
        in_channels=d.get("in_channels", 4),
        out_channels=d.get("out_channels", 4),
        block_channels=channels,
        num_res_blocks=layers,
        attention_levels=levels,
        mid_attention=True,
        num_heads=heads if family == "transformer" else None,
        head_dim=None if family == "transformer" else heads,  # IF's blocks read attention_head_dim as a width
        transformer_depth=int(depth),
        attention_block=family,
        resblock_updown=family == "adm",
        context_dim=d.get("cross_attention_dim", 1280),
        time_embed_dim=d.get("time_embedding_dim"),
        scale_shift=shift == "scale_shift",
        pooled_dim=pooled_dim,
        pooled_mlp=pooled_dim is not None,
        num_classes=num_classes,
        aug_level_embed=cls_type == "timestep",
        norm_groups=d.get("norm_num_groups", 32),
        norm_eps=d.get("norm_eps", 1e-5),
        dropout=d.get("dropout", 0.0),
        **_if_options(d),
    )


def _check_exportable(cfg: UNetConfig) -> None:
    if cfg.attention_block != "transformer" and not cfg.resblock_updown:
        raise ValueError("diffusers UNet2DConditionModel has ADM/GLIDE attention blocks (attention_block='adm') "
                         "only in DeepFloyd IF's layout (resblock_updown)")
    if not cfg.mid_attention:
        raise ValueError("diffusers UNetMidBlock2DCrossAttn always has attention: mid_attention=False cannot be exported")
    if cfg.context_dim is None:
        raise ValueError("diffusers UNet2DConditionModel always cross-attends: the t2i UNet needs a context_dim")
    if cfg.pooled_dim is not None and not cfg.pooled_mlp:
        raise ValueError("diffusers projects pooled vectors with an MLP only: set pooled_mlp=True to export")
    if cfg.aug_level_embed and (cfg.pooled_dim is not None or cfg.num_classes is not None):
        raise ValueError("diffusers has one class embedding: aug_level_embed with pooled_dim / num_classes cannot "
                         "be exported")
    if cfg.resample_first or cfg.skip_scale != 1:
        raise ValueError("diffusers UNet2DConditionModel has no Efficient UNet layout (resample_first, skip_scale)")
    if cfg.position_encoding:
        raise ValueError("diffusers' transformer blocks have no pixel position encoding: position_encoding=True "
                         "cannot be exported")


def unet_config_to_diffusers(
    cfg: UNetConfig, *, linear_projection: bool = False, sample_size: int = 64
) -> dict[str, Any]:
    """UNetConfig -> the kwargs / config.json of a diffusers UNet2DConditionModel (SD's layout)."""
    _check_exportable(cfg)
    if cfg.attention_block != "transformer" or cfg.act != "silu" or cfg.res_out_scale != 1 or any(
            (cfg.context_in_dim, cfg.context_norm_groups, cfg.text_pool_heads)):
        raise ValueError("writing DeepFloyd IF's diffusers UNet config is not supported (reading is)")
    n = len(cfg.block_channels)
    heads = [cfg.heads_at(i)[0] for i in range(n)] if cfg.head_dim is not None else cfg.num_heads
    return {
        "_class_name": "UNet2DConditionModel",
        "sample_size": sample_size,
        "in_channels": cfg.in_channels,
        "out_channels": cfg.out_channels,
        "down_block_types": [_CROSS_DOWN if i in cfg.attention_levels else _PLAIN_DOWN for i in range(n)],
        "mid_block_type": _MID,
        "up_block_types": [_CROSS_UP if i in cfg.attention_levels else _PLAIN_UP for i in reversed(range(n))],
        "block_out_channels": list(cfg.block_channels),
        "layers_per_block": list(cfg.num_res_blocks) if isinstance(cfg.num_res_blocks, tuple) else cfg.num_res_blocks,
        "transformer_layers_per_block": cfg.transformer_depth,
        "cross_attention_dim": cfg.context_dim,
        "attention_head_dim": list(heads) if isinstance(heads, (list, tuple)) else heads,  # heads: diffusers' quirk
        "use_linear_projection": linear_projection,
        "norm_num_groups": cfg.norm_groups,
        "norm_eps": cfg.norm_eps,
        "dropout": cfg.dropout,
        "time_embedding_dim": cfg.time_embed_dim,
        "resnet_time_scale_shift": "scale_shift" if cfg.scale_shift else "default",
        "class_embed_type": "projection" if cfg.pooled_dim is not None else "timestep" if cfg.aug_level_embed else None,
        "projection_class_embeddings_input_dim": cfg.pooled_dim,
        "num_class_embeds": cfg.num_classes,
        "flip_sin_to_cos": True,
        "freq_shift": 0,
    }


def _resblock(ours: str, theirs: str, has_skip: bool) -> list[Rename]:
    rows = []
    for a, b in (("norm1", "norm1"), ("conv1", "conv1"), ("emb_proj", "time_emb_proj"), ("norm2", "norm2"), ("conv2", "conv2")):
        rows += renames(f"{ours}.{a}", f"{theirs}.{b}")
    return rows + (renames(f"{ours}.skip", f"{theirs}.conv_shortcut") if has_skip else [])


def _simple_attention(ours: str, theirs: str, context_norm: bool) -> list[Rename]:
    """DeepFloyd IF's and Karlo's attention (diffusers AttnAddedKVProcessor) <-> t2i's ADM/GLIDE AttentionBlock;
    IF GroupNorms the context first (cross_attention_norm="group_norm"), Karlo's decoder does not."""
    rows = renames(f"{ours}.norm", f"{theirs}.group_norm")
    rows += renames(f"{ours}.context_norm", f"{theirs}.norm_cross") if context_norm else []
    rows += renames(f"{ours}.attn.to_qkv", (f"{theirs}.to_q", f"{theirs}.to_k", f"{theirs}.to_v"))
    rows += renames(f"{ours}.attn.to_context_kv", (f"{theirs}.add_k_proj", f"{theirs}.add_v_proj"))
    return rows + renames(f"{ours}.attn.to_out", f"{theirs}.to_out.0")


def _if_embeddings(cfg: UNetConfig) -> list[Rename]:
    """The text projection and the attention-pooled text embedding (DeepFloyd IF), where the config has them."""
    rows = renames("context_proj", "encoder_hid_proj") if cfg.context_in_dim else []
    if cfg.text_pool_heads:
        rows += [Rename("text_pool.pool.positional_embedding", ("add_embedding.pool.positional_embedding",), False)]
        for part in ("norm1", "pool.q_proj", "pool.k_proj", "pool.v_proj", "proj", "norm2"):
            rows += renames(f"text_pool.{part}", f"add_embedding.{part}")
    return rows


def _transformer(ours: str, theirs: str, depth: int, conv_proj: bool) -> list[Rename]:
    """LDM spatial transformer; the per-block names are the same in diffusers and the original layout."""
    rows = renames(f"{ours}.norm", f"{theirs}.norm")
    rows += renames(f"{ours}.proj_in", f"{theirs}.proj_in", conv1x1=conv_proj)
    for d in range(depth):
        o, t = f"{ours}.blocks.{d}", f"{theirs}.transformer_blocks.{d}"
        for n in ("norm1", "norm2", "norm3"):
            rows += renames(f"{o}.{n}", f"{t}.{n}")
        rows += renames(f"{o}.attn1.to_qkv", (f"{t}.attn1.to_q", f"{t}.attn1.to_k", f"{t}.attn1.to_v"), ("weight",))
        rows += renames(f"{o}.attn1.to_out", f"{t}.attn1.to_out.0")
        rows += renames(f"{o}.attn2.to_q", f"{t}.attn2.to_q", ("weight",))
        rows += renames(f"{o}.attn2.to_kv", (f"{t}.attn2.to_k", f"{t}.attn2.to_v"), ("weight",))
        rows += renames(f"{o}.attn2.to_out", f"{t}.attn2.to_out.0")
        rows += renames(f"{o}.ff.proj", f"{t}.ff.net.0.proj")
        rows += renames(f"{o}.ff.out", f"{t}.ff.net.2")
    return rows + renames(f"{ours}.proj_out", f"{theirs}.proj_out", conv1x1=conv_proj)


def diffusers_table(cfg: UNetConfig, *, linear_projection: bool = False) -> list[Rename]:
    """Every t2i UNet tensor and its diffusers name(s), for this config.

    `linear_projection` only matters when writing diffusers tensors (SD2's Linear vs SD1's 1x1
    conv transformer projections); reading accepts either.
    """
    _check_exportable(cfg)
    conv = not linear_projection
    ch, n = cfg.block_channels, len(cfg.block_channels)

    def attention(ours: str, theirs: str) -> list[Rename]:
        if cfg.attention_block == "adm":
            return _simple_attention(ours, theirs, cfg.context_norm_groups is not None)
        return _transformer(ours, theirs, cfg.transformer_depth, conv)

    rows = renames("time_embed.linear_1", "time_embedding.linear_1") + renames("time_embed.linear_2", "time_embedding.linear_2")
    rows += _if_embeddings(cfg)
    if cfg.num_classes is not None:
        rows += renames("class_embed", "class_embedding", ("weight",))
    for ours, on in (("pooled_proj", cfg.pooled_dim is not None), ("aug_embed", cfg.aug_level_embed)):
        if on:  # one class embedding in diffusers: a projection of pooled, or the timestep-embedded level
            rows += renames(f"{ours}.linear_1", "class_embedding.linear_1")
            rows += renames(f"{ours}.linear_2", "class_embedding.linear_2")
    rows += renames("conv_in", "conv_in")
    k, prev = 0, ch[0]
    for level in range(n):
        for j in range(cfg.res_blocks_at(level)):
            rows += _resblock(f"down.{k}.res", f"down_blocks.{level}.resnets.{j}", prev != ch[level])
            if level in cfg.attention_levels:
                rows += attention(f"down.{k}.attn", f"down_blocks.{level}.attentions.{j}")
            k, prev = k + 1, ch[level]
        if level != n - 1 and cfg.resblock_updown:
            rows += _resblock(f"down.{k}.res", f"down_blocks.{level}.downsamplers.0", False)
            k += 1
        elif level != n - 1:
            rows += renames(f"down.{k}.down.conv", f"down_blocks.{level}.downsamplers.0.conv")
            k += 1
    rows += _resblock("mid.res1", "mid_block.resnets.0", False)
    rows += attention("mid.attn", "mid_block.attentions.0")
    rows += _resblock("mid.res2", "mid_block.resnets.1", False)
    k = 0
    for i, level in enumerate(reversed(range(n))):
        nrb = cfg.res_blocks_at(level)
        for j in range(nrb + 1):
            rows += _resblock(f"up.{k}.res", f"up_blocks.{i}.resnets.{j}", True)
            if level in cfg.attention_levels:
                rows += attention(f"up.{k}.attn", f"up_blocks.{i}.attentions.{j}")
            if level != 0 and j == nrb and cfg.resblock_updown:
                rows += _resblock(f"up.{k}.res_up", f"up_blocks.{i}.upsamplers.0", False)
            elif level != 0 and j == nrb:
                rows += renames(f"up.{k}.up.conv", f"up_blocks.{i}.upsamplers.0.conv")
            k += 1
    return rows + renames("norm_out", "conv_norm_out") + renames("conv_out", "conv_out")


def expected_shapes(cfg: UNetConfig) -> dict[str, torch.Size]:
    """t2i tensor name -> shape for this config (built on the meta device: no memory, no init)."""
    with torch.device("meta"):
        return {k: v.shape for k, v in UNet(cfg).state_dict().items()}


@dataclass(frozen=True)
class UNetLayout:
    """A public layout of the t2i UNet's tensors, as a rename table (config, *, linear_projection) -> renames:
    `read` maps its tensors to t2i's (names every misfit), `write` maps t2i's to it."""

    table: Callable[..., list[Rename]]
    name: str

    def read(self, state: dict[str, torch.Tensor], config: UNetConfig) -> dict[str, torch.Tensor]:
        return from_layout(self.table(config), state, expected=expected_shapes(config), where=self.name)

    def write(self, state: dict[str, torch.Tensor], config: UNetConfig, *,
              linear_projection: bool = False) -> dict[str, torch.Tensor]:
        return to_layout(self.table(config, linear_projection=linear_projection), state, where="t2i UNet")


DIFFUSERS_LAYOUT = UNetLayout(diffusers_table, "diffusers UNet")
from_diffusers = DIFFUSERS_LAYOUT.read  # diffusers UNet2DConditionModel state dict -> t2i UNet state dict
to_diffusers = DIFFUSERS_LAYOUT.write  # t2i UNet state dict -> diffusers UNet2DConditionModel state dict


def uses_linear_projection(diffusers_config: dict[str, Any]) -> bool:
    """Whether a diffusers UNet config stores transformer projections as Linear (SD2) rather than 1x1 conv (SD1)."""
    return bool(diffusers_config.get("use_linear_projection", False))


def _weights_name(folder: Path) -> str:
    """The folder's safetensors weights; a pickle-only folder yields its .bin so loading refuses it by name."""
    if not (folder / WEIGHTS_NAME).exists() and (folder / "diffusion_pytorch_model.bin").exists():
        return "diffusion_pytorch_model.bin"
    return WEIGHTS_NAME


def load_diffusers_unet(folder: str | os.PathLike) -> UNet:
    """Build a t2i UNet from a diffusers `unet/` folder (config.json + safetensors weights)."""
    return load_model_folder(folder, _weights_name(Path(folder)), lambda c: UNet(unet_config_from_diffusers(c)),
                             from_diffusers)


def save_diffusers_unet(
    model: UNet, folder: str | os.PathLike, *, linear_projection: bool = False, sample_size: int = 64
) -> Path:
    """Write a t2i UNet as a diffusers `unet/` folder that UNet2DConditionModel.from_pretrained reads."""
    d = unet_config_to_diffusers(model.config, linear_projection=linear_projection, sample_size=sample_size)
    state = to_diffusers(model.state_dict(), model.config, linear_projection=linear_projection)
    return write_model_folder(folder, d, state, WEIGHTS_NAME)
