"""diffusers' `UnCLIPTextProjModel` (Karlo's text_proj/, Ramesh et al. 2022 sec. 2.1) -> the conditioning tensors
of t2i's `EmbeddingDecoder`: its two time-embedding Linears fused into the UNet's pooled projection over
[image embedding, text embedding] (the decoder's class embedding is diffusers' "identity")."""

from __future__ import annotations

import torch

from t2i.io.keymap import from_layout, renames

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
