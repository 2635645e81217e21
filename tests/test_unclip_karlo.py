"""Karlo (diffusers' UnCLIPPipeline) -> t2i, tiny random parts built offline: the prior and the decoder stages that
t2i samples (t2i's Prior and EmbeddingDecoder over the converted weights; DDPM with UnCLIPScheduler's variances:
"fixed_small_log" for the x0-predicting prior, the decoder's learned one; their clipping) draw the same decoder
image from the same generator as the pipeline, the CLIP text features given to both, float64."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from conftest import SD_CORPUS, write_tiny_clip_bpe

pytestmark = pytest.mark.usefixtures("one_thread")
diffusers = pytest.importorskip("diffusers")
transformers = pytest.importorskip("transformers")
pytest.importorskip("tokenizers")

DECODER = dict(sample_size=16, in_channels=3, out_channels=6, block_out_channels=(32, 64), layers_per_block=1,
               down_block_types=("ResnetDownsampleBlock2D", "SimpleCrossAttnDownBlock2D"),
               up_block_types=("SimpleCrossAttnUpBlock2D", "ResnetUpsampleBlock2D"),
               mid_block_type="UNetMidBlock2DSimpleCrossAttn", cross_attention_dim=32, attention_head_dim=8,
               resnet_time_scale_shift="scale_shift", class_embed_type="identity")
SR = dict(sample_size=32, in_channels=6, out_channels=3, block_out_channels=(32, 64), layers_per_block=1,
          down_block_types=("ResnetDownsampleBlock2D",) * 2, up_block_types=("ResnetUpsampleBlock2D",) * 2)


def _noisy(model, scale=0.1, seed=0):
    torch.manual_seed(seed)
    with torch.no_grad():  # diffusers zero-inits some layers: noise everywhere so no mapping error hides
        for p in model.parameters():
            p.add_(torch.randn_like(p) * scale)
    return model.eval()


def karlo_parts(tmp):
    from diffusers.pipelines.deprecated.unclip.text_proj import UnCLIPTextProjModel

    bpe = write_tiny_clip_bpe(tmp / "bpe", SD_CORPUS)
    tokenizer = transformers.CLIPTokenizer(vocab=str(bpe / "vocab.json"), merges=str(bpe / "merges.txt"),
                                           model_max_length=12)
    torch.manual_seed(0)
    text = transformers.CLIPTextModelWithProjection(transformers.CLIPTextConfig(
        vocab_size=len(tokenizer), hidden_size=32, projection_dim=32, num_hidden_layers=2, num_attention_heads=4,
        intermediate_size=37, max_position_embeddings=12, bos_token_id=0, eos_token_id=1, pad_token_id=1)).eval()
    prior = _noisy(diffusers.PriorTransformer(num_attention_heads=2, attention_head_dim=16, embedding_dim=32,
                                              num_layers=1, num_embeddings=12), 0.3, 1)
    text_proj = _noisy(UnCLIPTextProjModel(clip_extra_context_tokens=4, clip_embeddings_dim=32, time_embed_dim=128,
                                           cross_attention_dim=32), 0.3, 2)
    return dict(tokenizer=tokenizer, text_encoder=text, prior=prior, text_proj=text_proj,
                decoder=_noisy(diffusers.UNet2DConditionModel(**DECODER), 0.1, 3),
                super_res_first=_noisy(diffusers.UNet2DModel(**SR), 0.1, 4),
                super_res_last=_noisy(diffusers.UNet2DModel(**SR), 0.1, 5),
                prior_scheduler=diffusers.UnCLIPScheduler(variance_type="fixed_small_log", prediction_type="sample",
                                                          clip_sample_range=5.0),
                decoder_scheduler=diffusers.UnCLIPScheduler(variance_type="learned_range"),
                super_res_scheduler=diffusers.UnCLIPScheduler(variance_type="fixed_small_log"))


def _float64_tables(scheduler, ac):
    """diffusers' float32 tables put 5e-4 into UnCLIPScheduler's last step (betas[0] vs 1 - alphas_cumprod[0],
    `test_diffusion_learned_variance`): the pipeline steps over t2i's float64 cosine table instead."""
    scheduler.alphas_cumprod, scheduler.one = ac, scheduler.one.double()
    scheduler.alphas = ac / torch.cat([ac.new_ones(1), ac[:-1]])
    scheduler.betas = 1 - scheduler.alphas


def test_karlo_prior_and_decoder_match_unclip_pipeline(tmp_path):
    from t2i.diffusion.config import SamplingConfig, ScheduleConfig
    from t2i.io.diffusers_prior import load_diffusers_prior
    from t2i.io.diffusers_unclip import load_unclip_decoder
    from t2i.systems.stage import Guidance, StageRun, sample_stage, stage_denoiser

    parts = karlo_parts(tmp_path)
    for name in ("prior", "decoder", "text_proj"):
        parts[name].save_pretrained(tmp_path / name)
    pipe = diffusers.UnCLIPPipeline(**parts).to(torch.float64)
    pipe.set_progress_bar_config(disable=True)
    schedule = ScheduleConfig.named("cosine").build()
    for s in (pipe.prior_scheduler, pipe.decoder_scheduler, pipe.super_res_scheduler):
        _float64_tables(s, schedule.alphas_cumprod.double())
    seen = []
    pipe.super_res_first.register_forward_pre_hook(lambda m, a, kw: seen.append(kw["sample"]) and None, with_kwargs=True)
    pipe("a red circle", prior_num_inference_steps=5, decoder_num_inference_steps=5, super_res_num_inference_steps=2,
         prior_guidance_scale=3.0, decoder_guidance_scale=4.0, generator=torch.Generator().manual_seed(7))
    theirs = seen[0][:, 3:]  # the decoder's image, bicubically enlarged: what the SR UNets are given

    ids = parts["tokenizer"](["a red circle", ""], padding="max_length", max_length=12, truncation=True,
                             return_tensors="pt")
    with torch.no_grad():
        out = pipe.text_encoder(ids.input_ids, attention_mask=ids.attention_mask)
    text = [{"context": out.last_hidden_state[i:i + 1], "context_mask": ids.attention_mask[i:i + 1].bool(),
             "pooled": out.text_embeds[i:i + 1]} for i in (0, 1)]  # Karlo: the unnormalised text embedding
    prior = load_diffusers_prior(tmp_path / "prior").double()
    decoder = load_unclip_decoder(tmp_path / "decoder", tmp_path / "text_proj").double()
    assert decoder.config.unet.out_channels == 6  # the learned variance kept
    run = SamplingConfig(sampler="ddpm", steps=5, spacing="linspace", offset=0, round_timesteps=True)
    g = torch.Generator().manual_seed(7)
    with torch.no_grad():
        den = stage_denoiser(prior, schedule, "x0", Guidance(3.0, text[1], None, "static:5"), [])
        embed = prior.denormalize(sample_stage(den, StageRun((1, 32), run, text[0], dtype=torch.float64), g))
        cond, uncond = {**text[0], "image_embed": embed}, {**text[1], "image_embed": decoder.null[None]}
        den = stage_denoiser(decoder, schedule, "eps", Guidance(4.0, uncond, None, "static:1"), [],
                             learned_variance=True)
        small = sample_stage(den, StageRun((1, 3, 16, 16), run, cond, dtype=torch.float64), g).clamp(-1, 1)
    mine = F.interpolate(small, size=[32, 32], mode="bicubic", align_corners=False, antialias=True)
    err = (mine - theirs).abs().max().item()
    print(f"Karlo prior + decoder (float64, 5 + 5 DDPM steps, w = 3 / 4): max |t2i - diffusers| = {err:.2e}")
    assert err <= 1e-4 and theirs.std() > 0.05
