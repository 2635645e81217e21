"""A tiny random diffusers Versatile Diffusion built offline (image_unet, text_unet UNetFlatConditionModel, VAE,
CLIP text and vision towers with projections) converted into t2i gives the same images: text -> image
(VersatileDiffusionTextToImagePipeline, the text UNet's attention swapped into the image UNet) and image
variation (VersatileDiffusionImageVariationPipeline), given the same noise; every flow of the network matches
the diffusers module that computes it (the dual flow: DualTransformer2DModel)."""

import copy

import numpy as np
import pytest
import torch

diffusers = pytest.importorskip("diffusers")
transformers = pytest.importorskip("transformers")
tokenizers = pytest.importorskip("tokenizers")

from diffusers.pipelines.deprecated.versatile_diffusion import (  # noqa: E402
    VersatileDiffusionImageVariationPipeline,
    VersatileDiffusionTextToImagePipeline,
)
from diffusers.models.transformers.dual_transformer_2d import DualTransformer2DModel  # noqa: E402
from diffusers.pipelines.deprecated.versatile_diffusion.modeling_text_unet import UNetFlatConditionModel  # noqa: E402

from conftest import SD_CORPUS, SD_SCHEDULER, write_tiny_clip_bpe  # noqa: E402
from t2i.encoders.clip_tokenizer import CLIPTokenizer  # noqa: E402
from t2i.encoders.registry import TokenizedTextEncoder  # noqa: E402
from t2i.io.clip_text import clip_config_from_transformers, from_transformers  # noqa: E402
from t2i.io.diffusers_pipeline import sampling_from_scheduler  # noqa: E402
from t2i.io.diffusers_vae import from_diffusers as vae_from_diffusers, vae_config_from_diffusers  # noqa: E402
from t2i.io.diffusers_vd import multiflow_from_diffusers, vit_from_transformers  # noqa: E402
from t2i.nn.autoencoder import AutoencoderKL  # noqa: E402
from t2i.nn.multiflow import Flow, token_context  # noqa: E402
from t2i.nn.transformer import TextTransformer  # noqa: E402
from t2i.systems.stage import Guidance, StageRun, sample_stage, stage_denoiser  # noqa: E402

pytestmark = [pytest.mark.usefixtures("one_thread"), pytest.mark.filterwarnings("ignore::UserWarning"),
              pytest.mark.filterwarnings("ignore::FutureWarning")]

SIZE, STEPS, GUIDANCE, SEED = 16, 4, 5.0, 7
PROMPT = "a red circle to the left of a blue square"
TEXT_DIM, CONTEXT = 24, 16  # the text latent's width; CLIP's projection width (the contexts' width)
UNET = dict(block_out_channels=(32, 64), layers_per_block=1, cross_attention_dim=CONTEXT, attention_head_dim=4,
            norm_num_groups=8)


def _noisy(*modules):
    with torch.no_grad():  # fresh diffusers models zero some layers: noise everywhere so no mapping error hides
        for p in (p for m in modules for p in m.parameters()):
            p.add_(torch.randn_like(p) * 0.05)


@pytest.fixture(scope="module")
def vd(tmp_path_factory):
    """The tiny random VD parts, in float32 (images agree to ~4e-6 so; float64 gives ~1e-7)."""
    bpe = write_tiny_clip_bpe(tmp_path_factory.mktemp("vd") / "bpe", SD_CORPUS, max_length=12)
    tok = transformers.CLIPTokenizer(vocab=str(bpe / "vocab.json"), merges=str(bpe / "merges.txt"), model_max_length=12)
    torch.manual_seed(0)
    text = transformers.CLIPTextModelWithProjection(transformers.CLIPTextConfig(
        vocab_size=len(tok), hidden_size=32, num_hidden_layers=2, num_attention_heads=4, intermediate_size=37,
        max_position_embeddings=12, bos_token_id=0, eos_token_id=1, pad_token_id=1, projection_dim=CONTEXT))
    vision = transformers.CLIPVisionModelWithProjection(transformers.CLIPVisionConfig(
        hidden_size=32, num_hidden_layers=2, num_attention_heads=4, intermediate_size=37, image_size=SIZE,
        patch_size=4, projection_dim=CONTEXT))
    processor = transformers.CLIPImageProcessor(size={"shortest_edge": SIZE}, crop_size={"height": SIZE, "width": SIZE})
    image_unet = diffusers.UNet2DConditionModel(
        sample_size=SIZE // 2, in_channels=4, out_channels=4, down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"),
        up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"), **UNET)
    text_unet = UNetFlatConditionModel(
        sample_size=1, in_channels=[TEXT_DIM, 1, 1], out_channels=[TEXT_DIM, 1, 1],
        down_block_types=("CrossAttnDownBlockFlat", "DownBlockFlat"), up_block_types=("UpBlockFlat", "CrossAttnUpBlockFlat"),
        **UNET)
    vae = diffusers.AutoencoderKL(block_out_channels=(32, 64), down_block_types=("DownEncoderBlock2D",) * 2,
                                  up_block_types=("UpDecoderBlock2D",) * 2, latent_channels=4, norm_num_groups=8,
                                  layers_per_block=1)
    _noisy(image_unet, text_unet, vae)
    text_unet.time_embedding.load_state_dict(image_unet.time_embedding.state_dict())  # shared in VD's checkpoint
    parts = dict(tokenizer=tok, text_encoder=text, image_encoder=vision, image_feature_extractor=processor,
                 image_unet=image_unet, text_unet=text_unet, vae=vae, bpe=bpe)
    for m in (text, vision, image_unet, text_unet, vae):
        m.eval()
    return parts


def _copies(vd, *names):
    return {n: copy.deepcopy(vd[n]) for n in names}


def _scheduler():
    return diffusers.DDIMScheduler(**SD_SCHEDULER)


def _t2i(vd):
    """The t2i parts: the multi-flow network, the VAE, CLIP text and vision towers, the sampler settings."""
    net = multiflow_from_diffusers(vd["image_unet"], vd["text_unet"]).eval()
    vae = AutoencoderKL(vae_config_from_diffusers(dict(vd["vae"].config)))
    vae.load_state_dict(vae_from_diffusers(vd["vae"].state_dict(), vae.config))
    text = TextTransformer(clip_config_from_transformers(vd["text_encoder"].config.to_dict(), with_projection=True))
    text.load_state_dict(from_transformers(vd["text_encoder"].state_dict(), text.config))
    encoder = TokenizedTextEncoder(CLIPTokenizer.from_folder(vd["bpe"]), text)
    vit = vit_from_transformers(vd["image_encoder"])
    plan = sampling_from_scheduler({**dict(_scheduler().config), "_class_name": "DDIMScheduler"}, steps=STEPS,
                                   guidance=GUIDANCE)
    return net, vae.eval(), encoder.eval(), vit, plan


def _text_context(encoder, prompts):
    pooled, tokens, _ = encoder(prompts)
    return token_context(encoder.transformer.proj(tokens), pooled)  # (B, L, E)


def _image_context(vit, pixels):
    pooled, tokens = vit(pixels)
    return token_context(vit.proj(tokens), pooled)  # (B, 1 + N, E)


def _sample(parts, flow, cond, uncond):
    net, vae, _, _, (schedule, prediction, settings) = parts
    view = net.flow(flow)
    den = stage_denoiser(view, schedule.build(), prediction, Guidance(GUIDANCE, {"context": uncond}), [])
    run = StageRun((1, 4, SIZE // 2, SIZE // 2), settings, {"context": cond})
    with torch.no_grad():
        latents = sample_stage(den, run, torch.Generator().manual_seed(SEED))
        image = (vae.decode(vae.unscale(latents)) / 2 + 0.5).clamp(0, 1)
    return image.permute(0, 2, 3, 1).numpy()  # (B, H, W, 3)


def _check(theirs, ours, tol=1e-4):
    diff = float(np.abs(theirs - ours).max())
    print(f"max abs pixel difference {diff:.2e}")
    assert diff <= tol
    assert theirs.std() > 0.05  # a real image


def _image():
    g = np.random.default_rng(0)
    a = (g.random((SIZE, SIZE, 3)) * 255).astype(np.uint8)
    a[4:12, 2:9] = (220, 40, 40)
    from PIL import Image
    return Image.fromarray(a)


def test_text_to_image_matches_diffusers(vd):
    ours = _t2i(vd)
    pipe = VersatileDiffusionTextToImagePipeline(scheduler=_scheduler(), **_copies(
        vd, "tokenizer", "text_encoder", "image_unet", "text_unet", "vae"))
    pipe.set_progress_bar_config(disable=True)
    theirs = pipe(PROMPT, height=SIZE, width=SIZE, num_inference_steps=STEPS, guidance_scale=GUIDANCE,
                  generator=torch.Generator().manual_seed(SEED), output_type="np").images
    encoder = ours[2]
    with torch.no_grad():
        cond, uncond = _text_context(encoder, [PROMPT]), _text_context(encoder, [""])
    _check(theirs, _sample(ours, Flow("image", "text"), cond, uncond))
    other = _sample(ours, Flow("image", "image"), cond, uncond)  # the image context's layers: another image
    assert np.abs(other - theirs).max() > 1e-2


def test_image_variation_matches_diffusers(vd):
    ours = _t2i(vd)
    pipe = VersatileDiffusionImageVariationPipeline(scheduler=_scheduler(), **_copies(
        vd, "image_feature_extractor", "image_encoder", "image_unet", "vae"))
    pipe.set_progress_bar_config(disable=True)
    theirs = pipe(_image(), height=SIZE, width=SIZE, num_inference_steps=STEPS, guidance_scale=GUIDANCE,
                  generator=torch.Generator().manual_seed(SEED), output_type="np").images
    processor = vd["image_feature_extractor"]
    pixels = processor(images=_image(), return_tensors="pt").pixel_values
    gray = processor(images=[np.zeros((512, 512, 3)) + 0.5], return_tensors="pt").pixel_values  # VD's negative
    with torch.no_grad():
        cond, uncond = _image_context(ours[3], pixels), _image_context(ours[3], gray)
    _check(theirs, _sample(ours, Flow("image", "image"), cond, uncond))


def test_every_flow_matches_the_diffusers_module_that_computes_it(vd):
    """image/image: image_unet; text/text: text_unet; image/text and text/image: the UNets with their
    Transformer2DModels swapped (the text-to-image pipeline's swap); dual: DualTransformer2DModel."""
    net = _t2i(vd)[0]
    g = torch.Generator().manual_seed(1)
    x, v = torch.randn(2, 4, 8, 8, generator=g), torch.randn(2, TEXT_DIM, generator=g)
    text_ctx, image_ctx = torch.randn(2, 12, CONTEXT, generator=g), torch.randn(2, 17, CONTEXT, generator=g)
    t = torch.tensor([10.0, 500.0])
    parts = _copies(vd, "image_unet", "text_unet")
    img, txt = parts["image_unet"], parts["text_unet"]

    def flat(ctx):
        return txt(v[:, :, None, None], t, encoder_hidden_states=ctx).sample[:, :, 0, 0]

    with torch.no_grad():
        outs = {"image/image": (img(x, t, encoder_hidden_states=image_ctx).sample,
                                net(x, t, flow=Flow("image", "image"), context=image_ctx)),
                "text/text": (flat(text_ctx), net(v, t, flow=Flow("text", "text"), context=text_ctx))}
        VersatileDiffusionTextToImagePipeline._swap_unet_attention_blocks(type("P", (), parts)())
        outs["image/text"] = (img(x, t, encoder_hidden_states=text_ctx).sample,
                              net(x, t, flow=Flow("image", "text"), context=text_ctx))
        outs["text/image"] = (flat(image_ctx), net(v, t, flow=Flow("text", "image"), context=image_ctx))
        # dual: diffusers 0.42 cannot run VersatileDiffusionDualGuidedPipeline (its UNet blocks pass
        # encoder_attention_mask, which DualTransformer2DModel.forward does not take): one slot is compared
        text_layer, image_layer = img.down_blocks[0].attentions[0], txt.down_blocks[0].attentions[0]  # still swapped
        dual = DualTransformer2DModel(num_attention_heads=4, attention_head_dim=8, in_channels=32,
                                      norm_num_groups=8, cross_attention_dim=CONTEXT)
        dual.transformers[0], dual.transformers[1] = image_layer, text_layer
        dual.mix_ratio, dual.condition_lengths, dual.transformer_index_for_condition = 0.3, [12, 17], [1, 0]
        h = torch.randn(2, 32, 8, 8, generator=g)
        both = torch.cat([text_ctx, image_ctx], dim=1)
        mixed = net.flow(Flow.dual("image", 0.3, 12)).down[0].attn
        outs["dual slot"] = (dual(h, both, return_dict=False)[0], mixed(h, both))
        for mix, alone in ((0.0, "image/image"), (1.0, "image/text")):  # the ends of the mix are the single flows
            outs[f"image/dual {mix}"] = (outs[alone][0], net(x, t, flow=Flow.dual("image", mix, 12), context=both))
    for name, (theirs, ours) in outs.items():
        diff = float((theirs - ours).abs().max())
        print(f"{name}: max abs difference {diff:.1e} (output scale {float(theirs.abs().max()):.2f})")
        # float32 round-off: the same weights through differently shaped matmuls (diffusers' flat text UNet runs
        # its linear layers on (B, C, 1, 1) maps) agree bit for bit on AVX-512 and to 6.6e-7 on an AVX2-only CPU
        assert diff <= 1e-5, name
    assert (outs["image/text"][0] - outs["image/image"][0]).abs().max() > 1e-2  # the context layers matter


def test_folder_loads_like_the_modules(vd, tmp_path):
    """image_unet/ and text_unet/ folders (as save_pretrained writes them) give the same network."""
    from t2i.io.diffusers_vd import load_diffusers_vd_unets

    for name in ("image_unet", "text_unet"):
        vd[name].save_pretrained(tmp_path / name, safe_serialization=True)
    a, b = load_diffusers_vd_unets(tmp_path), multiflow_from_diffusers(vd["image_unet"], vd["text_unet"])
    sa, sb = a.state_dict(), b.state_dict()
    assert sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa)
    bad = dict(vd["text_unet"].config, block_out_channels=[32, 32])
    with pytest.raises(ValueError, match="differ from image_unet"):
        from t2i.io.diffusers_vd import vd_config_from_diffusers
        vd_config_from_diffusers(dict(vd["image_unet"].config), bad)
