"""diffusers' `UnCLIPTextProjModel` (Karlo's text_proj/, Ramesh et al. 2022 sec. 2.1) -> the conditioning tensors
of t2i's `EmbeddingDecoder`: its two time-embedding Linears fused into the UNet's pooled projection over
[image embedding, text embedding] (the decoder's class embedding is diffusers' "identity")."""

from __future__ import annotations

import dataclasses
import os
from pathlib import Path

import torch

from t2i.io.diffusers_unet import _weights_name, from_diffusers, unet_config_from_diffusers
from t2i.io.keymap import from_layout, renames
from t2i.io.weights import load_into, read_model_folder
from t2i.nn.unclip_decoder import DecoderConfig, EmbeddingDecoder

TEXT_PROJ = ("to_tokens", "clip_extra_context_tokens_proj"), ("proj_text", "encoder_hidden_states_proj"), \
    ("text_norm", "text_encoder_hidden_states_norm")


def decoder_conditioning_from_text_proj(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """UnCLIPTextProjModel tensors -> EmbeddingDecoder tensors (null, to_tokens, proj_text, text_norm, unet.pooled_proj)."""
    image, text = "clip_image_embeddings_project_to_time_embeddings", "embedding_proj"
    table = [row for ours, theirs in TEXT_PROJ for row in renames(ours, theirs)]
    rest = {k: v for k, v in state.items() if not k.startswith((image + ".", text + "."))}
    rest.pop("learned_classifier_free_guidance_embeddings", None)
    out = from_layout(table, rest, where="UnCLIPTextProjModel")
    try:
        out["unet.pooled_proj.weight"] = torch.cat([state[f"{image}.weight"], state[f"{text}.weight"]], dim=1)
        out["unet.pooled_proj.bias"] = state[f"{image}.bias"] + state[f"{text}.bias"]  # one Linear over [e, p]
        out["null"] = state["learned_classifier_free_guidance_embeddings"]
    except KeyError as e:
        raise ValueError(f"UnCLIPTextProjModel: missing tensor {e}") from None
    return out


def load_unclip_decoder(decoder_folder: str | os.PathLike, text_proj_folder: str | os.PathLike) -> EmbeddingDecoder:
    """Karlo's decoder/ (a UNet2DConditionModel whose class embedding is "identity": the text_proj's time
    embedding added as is) and text_proj/ folders -> one t2i EmbeddingDecoder, its UNet's pooled projection
    taking the text_proj's Linears; a learned-variance output (out_channels 6) is kept for t2i's DDPM."""
    d, unet_state = read_model_folder(decoder_folder, _weights_name(Path(decoder_folder)))
    p, proj_state = read_model_folder(text_proj_folder, _weights_name(Path(text_proj_folder)))
    if d.get("class_embed_type") != "identity":
        raise ValueError(f"{decoder_folder}: an unCLIP decoder adds the text_proj's embedding as is "
                         f"(class_embed_type 'identity'), not {d.get('class_embed_type')!r}")
    e = int(p["clip_embeddings_dim"])
    plain = unet_config_from_diffusers({**d, "class_embed_type": None})  # the UNet's own tensors
    unet = dataclasses.replace(plain, pooled_dim=2 * e)  # + a pooled projection over [image, text] embeddings
    decoder = EmbeddingDecoder(DecoderConfig(unet, embed_dim=e, extra_tokens=int(p["clip_extra_context_tokens"]),
                                             token_dim=e, text_dim=e))
    state = {**{f"unet.{k}": v for k, v in from_diffusers(unet_state, plain).items()},
             **decoder_conditioning_from_text_proj(proj_state)}
    load_into(decoder, state, where=f"{decoder_folder} + {text_proj_folder}")
    return decoder.eval()
