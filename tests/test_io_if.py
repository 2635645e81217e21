"""DeepFloyd IF (the public Imagen-style cascade) -> t2i: tiny random diffusers IF UNets (stage I and the
stage II super-resolution UNet) built offline compute the same eps as the converted t2i UNets, and a tiny
IFPipeline generates the same image as t2i's sampler over the converted UNet given the same noise."""

from __future__ import annotations

import pytest
import torch

from t2i.io.diffusers_unet import from_diffusers, unet_config_from_diffusers
from t2i.nn.unet import UNet

pytestmark = pytest.mark.usefixtures("one_thread")
diffusers = pytest.importorskip("diffusers")

# diffusers' own tiny IF test components (tests/pipelines/deepfloyd_if), 16 px
IF_UNET = dict(layers_per_block=1, block_out_channels=[32, 64],
               down_block_types=["ResnetDownsampleBlock2D", "SimpleCrossAttnDownBlock2D"],
               mid_block_type="UNetMidBlock2DSimpleCrossAttn",
               up_block_types=["SimpleCrossAttnUpBlock2D", "ResnetUpsampleBlock2D"], in_channels=3, out_channels=6,
               cross_attention_dim=32, encoder_hid_dim=32, attention_head_dim=8, addition_embed_type="text",
               addition_embed_type_num_heads=2, cross_attention_norm="group_norm", resnet_time_scale_shift="scale_shift",
               act_fn="gelu", sample_size=16)
IF_SR_UNET = {**IF_UNET, "layers_per_block": [1, 2], "in_channels": 6, "class_embed_type": "timestep",
              "mid_block_scale_factor": 1.414, "time_embedding_act_fn": "gelu", "resnet_skip_time_act": True,
              "resnet_out_scale_factor": 1.414, "sample_size": 32}


def tiny_if_unet(config: dict, seed: int = 0):
    torch.manual_seed(seed)
    unet = diffusers.UNet2DConditionModel(**config).eval()
    with torch.no_grad():  # zero-initialised layers would hide mistakes: make every tensor count
        for p in unet.parameters():
            p.add_(torch.randn_like(p) * 0.1)
    return unet


@pytest.mark.parametrize("stage", ["I", "II"])
def test_if_unet_matches_diffusers(stage):
    theirs = tiny_if_unet(IF_UNET if stage == "I" else IF_SR_UNET)
    cfg = unet_config_from_diffusers(dict(theirs.config))
    assert cfg.act == "gelu" and cfg.resblock_updown and cfg.attention_block == "adm" and cfg.text_pool_heads == 2
    ours = UNet(cfg).eval()
    ours.load_state_dict(from_diffusers(theirs.state_dict(), cfg))  # strict: every tensor mapped
    g = torch.Generator().manual_seed(1)
    size = 16 if stage == "I" else 32
    x, ctx = torch.randn(2, cfg.in_channels, size, size, generator=g), torch.randn(2, 7, 32, generator=g)
    t = torch.tensor([10, 700])
    extra = {} if stage == "I" else {"class_labels": torch.tensor([250, 100])}
    with torch.no_grad():
        ref = theirs(x, t, encoder_hidden_states=ctx, **extra).sample
        out = ours(x, t.float(), context=ctx, aug_level=extra["class_labels"].float() if extra else None)
    err = (out - ref).abs().max().item()
    print(f"IF stage {stage} UNet: max |t2i - diffusers| = {err:.2e}")
    assert err <= 1e-4


def ddim_clipping():
    """A DDIM scheduler clipping x0 (IF's thresholding at sample_max_value 1)."""
    scheduler = diffusers.DDIMScheduler(beta_schedule="squaredcos_cap_v2", thresholding=True, sample_max_value=1.0,
                                        dynamic_thresholding_ratio=0.95, prediction_type="epsilon")
    scheduler.register_to_config(variance_type="fixed_small")  # IFPipeline reads it from any scheduler
    return scheduler


def if_ddpm():
    """IF-I-XL's own scheduler_config: DDPM with the learned variance, thresholding capped at 1.5."""
    return diffusers.DDPMScheduler(beta_schedule="squaredcos_cap_v2", variance_type="learned_range", thresholding=True,
                                   sample_max_value=1.5, dynamic_thresholding_ratio=0.95, clip_sample=True,
                                   prediction_type="epsilon")


def if_stage_one(tmp_path, dtype, scheduler):
    """(t2i's image, IFPipeline's image): stage I with prompt embeddings given (the pipeline needs no tokenizer
    for them), the given scheduler, 5 steps, w = 4, same noise."""
    from t2i.io.diffusers_if import if_sampling, learned_variance, load_if_unet
    from t2i.systems.stage import Guidance, StageRun, sample_stage, stage_denoiser

    unet = tiny_if_unet(IF_UNET)
    unet.save_pretrained(tmp_path / "unet", safe_serialization=True)
    pipe = diffusers.IFPipeline(tokenizer=None, text_encoder=None, unet=unet.to(dtype), scheduler=scheduler,
                                safety_checker=None, feature_extractor=None, watermarker=None,
                                requires_safety_checker=False)
    pipe.set_progress_bar_config(disable=True)
    g = torch.Generator().manual_seed(3)
    embeds, negative = (torch.randn(1, 7, 32, generator=g).to(dtype) for _ in range(2))
    theirs = pipe(prompt_embeds=embeds, negative_prompt_embeds=negative, num_inference_steps=5, guidance_scale=4.0,
                  height=16, width=16, generator=torch.Generator().manual_seed(7), output_type="pt").images

    d = {"_class_name": type(scheduler).__name__, **scheduler.config}
    ours = load_if_unet(tmp_path / "unet", learned_variance(d)).eval().to(dtype)
    assert ours.config.out_channels == (6 if learned_variance(d) else 3)  # the learned-variance half kept or dropped
    schedule, prediction, settings, threshold = if_sampling(d, steps=5, guidance=4.0)
    den = stage_denoiser(ours, schedule.build(), prediction, Guidance(4.0, {"context": negative}, None, threshold), [],
                         learned_variance=learned_variance(d))
    run = StageRun((1, 3, 16, 16), settings, {"context": embeds}, dtype=dtype)
    with torch.no_grad():
        return sample_stage(den, run, torch.Generator().manual_seed(7)), theirs


@pytest.mark.parametrize("dtype,tol", [(torch.float64, 1e-4), (torch.float32, 1e-3)])
@pytest.mark.parametrize("scheduler", ["ddim_clipping", "if_ddpm"])
def test_if_stage_one_pipeline_matches_t2i(tmp_path, dtype, tol, scheduler):
    """IFPipeline (stage I) and t2i over the converted UNet give the same image from the same noise: DDIM clipping
    x0, and IF's own DDPM (learned variance, the conditional branch's; dynamic thresholding capped at 1.5). In
    float64 the sampling paths agree to the schedule's float32 rounding in diffusers (3e-5); in float32 the UNets'
    1e-5 rounding differences grow over the 5 guided steps (to 3e-4), hence the looser float32 tolerance."""
    scheduler = globals()[scheduler]()
    if dtype == torch.float64 and isinstance(scheduler, diffusers.DDPMScheduler):
        # diffusers keeps its tables in float32; the learned variance's log(beta_tilde) magnifies their rounding
        # to 2.9e-4 in the image, so in float64 it steps over t2i's float64 cosine table (then 6e-6)
        from t2i.diffusion.config import ScheduleConfig
        scheduler.alphas_cumprod = ScheduleConfig.named("cosine").build().alphas_cumprod.double()
    mine, theirs = if_stage_one(tmp_path, dtype, scheduler)
    err = (mine - theirs).abs().max().item()
    print(f"IF stage I pipeline ({dtype}, {type(scheduler).__name__}, 5 steps, w=4): max |t2i - diffusers| = {err:.2e}")
    assert err <= tol and theirs.std() > 0.05 and (theirs.abs() < 0.999).float().mean() > 0.5


def test_if_sampling_maps_the_real_scheduler_configs():
    from t2i.io.diffusers_if import if_sampling, learned_variance

    d = {"_class_name": "DDPMScheduler", **if_ddpm().config}
    _, prediction, settings, threshold = if_sampling(d, steps=20)
    assert learned_variance(d) and prediction == "eps" and settings.sampler == "ddpm"
    assert threshold == settings.threshold == "dynamic:0.95:1.5"
    d = {"_class_name": "DDIMScheduler", "thresholding": True, "sample_max_value": 1.0}
    assert if_sampling(d)[3] == "static" and not learned_variance(d)


class GivenEmbeddings(torch.nn.Module):
    """A text encoder stand-in that returns fixed prompt embeddings (the T5 part is tested on its own)."""

    def __init__(self, table: dict):
        super().__init__()
        self.table = table

    def forward(self, prompts):
        tokens = torch.cat([self.table[p] for p in prompts])
        return tokens[:, 0], tokens, torch.ones(tokens.shape[:2], dtype=torch.bool)


@pytest.mark.parametrize("dtype,tol", [(torch.float64, 1e-4), (torch.float32, 1e-3)])
def test_if_stage_two_pipeline_matches_t2i(tmp_path, dtype, tol):
    """IFSuperResolutionPipeline (16 -> 32 px, noise level 250, DDIM clipping x0, 4 steps, w = 4) and a t2i pixel
    stage over the converted SR UNet (upsample_first: IF enlarges, then augments) give the same image."""
    from t2i.encoders.registry import TextConfig
    from t2i.io.diffusers_if import if_sampling, load_if_unet
    from t2i.systems.pixel_stage import PixelStage, PixelStageConfig, StagePlan
    from t2i.systems.request import GenerationRequest

    unet = tiny_if_unet(IF_SR_UNET, seed=1)
    unet.save_pretrained(tmp_path / "unet", safe_serialization=True)
    scheduler = diffusers.DDIMScheduler(beta_schedule="squaredcos_cap_v2", thresholding=True, sample_max_value=1.0,
                                        prediction_type="epsilon")
    scheduler.register_to_config(variance_type="fixed_small")
    pipe = diffusers.IFSuperResolutionPipeline(
        tokenizer=None, text_encoder=None, unet=unet.to(dtype), scheduler=scheduler, safety_checker=None,
        image_noising_scheduler=diffusers.DDPMScheduler(beta_schedule="squaredcos_cap_v2"), feature_extractor=None,
        watermarker=None, requires_safety_checker=False)
    pipe.set_progress_bar_config(disable=True)
    g = torch.Generator().manual_seed(3)
    embeds, negative = (torch.randn(1, 7, 32, generator=g).to(dtype) for _ in range(2))
    lowres = (torch.rand(1, 3, 16, 16, generator=g) * 2 - 1).to(dtype)
    theirs = pipe(image=lowres, prompt_embeds=embeds, negative_prompt_embeds=negative, num_inference_steps=4,
                  guidance_scale=4.0, noise_level=250, height=32, width=32, generator=torch.Generator().manual_seed(7),
                  output_type="pt").images

    schedule, prediction, settings, _ = if_sampling({"_class_name": "DDIMScheduler", **scheduler.config},
                                                    steps=4, guidance=4.0)
    ours = load_if_unet(tmp_path / "unet").eval().to(dtype)
    config = PixelStageConfig(unet=ours.config, text=TextConfig(context_mask=False), schedule=schedule,
                              prediction=prediction, sampling=settings, sample_size=32, lowres_size=16,
                              lowres_noise=250 / 999, upsample_first=True)
    stage = PixelStage(config, ours, GivenEmbeddings({"a prompt": embeds, "": negative}))
    with torch.no_grad():
        mine = stage.sample(GenerationRequest(("a prompt",)), StagePlan(settings, 4.0, None, (32, 32), lowres=lowres),
                            torch.Generator().manual_seed(7), None)
    err = (mine - theirs).abs().max().item()
    print(f"IF stage II pipeline ({dtype}, DDIM, 4 steps, w=4, noise level 250): max |t2i - diffusers| = {err:.2e}")
    assert err <= tol and theirs.std() > 0.05 and (theirs.abs() < 0.999).float().mean() > 0.5


def test_if_stage_one_with_t5_matches_t2i(tmp_path):
    """IFPipeline encoding the prompt and the empty negative prompt with its T5 (a tiny random T5EncoderModel and a
    word-level tokenizer, 77 tokens, padding states kept, no mask into the UNet) = a t2i pixel stage whose 't5'
    text encoder reads the same folder (context_mask off), same noise, float64. transformers' T5LayerNorm takes its
    variance in float32, so the embeddings differ by 5e-7 and the 4 guided steps of this random UNet grow that to
    1e-4: the embeddings are checked at 1e-6, the image at 2e-4."""
    pytest.importorskip("tokenizers")
    from test_encoders_t5 import _word_tokenizer_json, tiny_hf_t5

    from t2i.encoders.registry import TextConfig, build_text_encoder, encode_prompts
    from t2i.io.diffusers_if import if_sampling, load_if_unet
    from t2i.systems.pixel_stage import PixelStage, PixelStageConfig, StagePlan
    from t2i.systems.request import GenerationRequest

    transformers, _, t5 = tiny_hf_t5("gated-gelu")
    t5.save_pretrained(tmp_path / "text_encoder")
    _word_tokenizer_json(tmp_path / "text_encoder" / "tokenizer.json", ["a", "red", "circle", "blue", "star"])
    tokenizer = transformers.PreTrainedTokenizerFast(tokenizer_file=str(tmp_path / "text_encoder" / "tokenizer.json"),
                                                     pad_token="<pad>", eos_token="</s>", unk_token="<unk>")
    unet = tiny_if_unet(IF_UNET)
    unet.save_pretrained(tmp_path / "unet", safe_serialization=True)
    scheduler = diffusers.DDIMScheduler(beta_schedule="squaredcos_cap_v2", thresholding=True, sample_max_value=1.0)
    scheduler.register_to_config(variance_type="fixed_small")
    pipe = diffusers.IFPipeline(tokenizer=tokenizer, text_encoder=t5.double(), unet=unet.double(), scheduler=scheduler,
                                safety_checker=None, feature_extractor=None, watermarker=None,
                                requires_safety_checker=False)
    pipe.set_progress_bar_config(disable=True)
    theirs = pipe("a red circle", num_inference_steps=4, guidance_scale=4.0, height=16, width=16, clean_caption=False,
                  generator=torch.Generator().manual_seed(7), output_type="pt").images

    schedule, prediction, settings, _ = if_sampling({"_class_name": "DDIMScheduler", **scheduler.config},
                                                    steps=4, guidance=4.0)
    text = TextConfig(kind="t5", encoder={"folder": str(tmp_path / "text_encoder"), "max_length": 77},
                      context_mask=False)
    ours = load_if_unet(tmp_path / "unet").eval().double()
    config = PixelStageConfig(unet=ours.config, text=text, schedule=schedule, prediction=prediction,
                              sampling=settings, sample_size=16)
    stage = PixelStage(config, ours, build_text_encoder(text).double())
    embeds, negative = pipe.encode_prompt("a red circle", True, device="cpu", clean_caption=False)
    ctx = encode_prompts(text, stage.text_encoder, ["a red circle", ""])["context"]
    assert (ctx - torch.cat([embeds, negative])).abs().max() <= 1e-6 and ctx.shape == (2, 77, 32)
    with torch.no_grad():
        mine = stage.sample(GenerationRequest(("a red circle",)), StagePlan(settings, 4.0, None, (16, 16)),
                            torch.Generator().manual_seed(7), None)
    err = (mine - theirs).abs().max().item()
    print(f"IF stage I pipeline with T5 (float64, DDIM, 4 steps, w=4): max |t2i - diffusers| = {err:.2e}")
    assert err <= 2e-4 and theirs.std() > 0.05


def write_if_folders(one, two):
    """Tiny random DeepFloyd IF folders as IFPipeline / IFSuperResolutionPipeline.save_pretrained write them (IF-I
    with its T5 and the fast tokenizer's tokenizer.json in text_encoder/, its DDPM with the learned variance; IF-II
    capped at 1.0, its image noising scheduler) -> (t5, tokenizer, unet, sr_unet, sr_scheduler, noising)."""
    pytest.importorskip("tokenizers")
    from test_encoders_t5 import _word_tokenizer_json, tiny_hf_t5

    transformers, _, t5 = tiny_hf_t5("gated-gelu")
    unet, sr_unet = tiny_if_unet(IF_UNET), tiny_if_unet(IF_SR_UNET, seed=1)
    sr_scheduler = diffusers.DDPMScheduler(**{**if_ddpm().config, "sample_max_value": 1.0})
    noising = diffusers.DDPMScheduler(beta_schedule="squaredcos_cap_v2")
    none = dict(tokenizer=None, safety_checker=None, feature_extractor=None, watermarker=None,
                requires_safety_checker=False)
    diffusers.IFPipeline(text_encoder=t5, unet=unet, scheduler=if_ddpm(), **none).save_pretrained(one)
    diffusers.IFSuperResolutionPipeline(text_encoder=None, unet=sr_unet, scheduler=sr_scheduler,
                                        image_noising_scheduler=noising, **none).save_pretrained(two)
    _word_tokenizer_json(one / "text_encoder" / "tokenizer.json", ["a", "red", "circle", "blue", "star"])
    tokenizer = transformers.PreTrainedTokenizerFast(tokenizer_file=str(one / "text_encoder" / "tokenizer.json"),
                                                     pad_token="<pad>", eos_token="</s>", unk_token="<unk>")
    return t5, tokenizer, unet, sr_unet, sr_scheduler, noising


def test_convert_if_cascade_matches_the_if_pipelines(tmp_path):
    """convert_if(stage I folder, stage II folder) -> a t2i Imagen whose cascade equals IFPipeline then
    IFSuperResolutionPipeline with their own DDPM schedulers (learned variance; thresholding capped at 1.5 for
    stage I, 1.0 for stage II), the T5 prompt encoding, one generator drawn through both, float64."""
    from t2i.encoders.registry import encode_prompts
    from t2i.io.diffusers_if import convert_if
    from t2i.systems.request import GenerationRequest

    one, two = tmp_path / "IF-I", tmp_path / "IF-II"
    t5, tokenizer, unet, sr_unet, sr_scheduler, noising = write_if_folders(one, two)
    system = convert_if(one, two, steps=(4, 3), guidance=(4.0, 3.0)).double()
    assert [s.config.learned_variance for s in system.stages] == [True, True]
    g = torch.Generator().manual_seed(7)
    with torch.no_grad():
        mine = system.run(GenerationRequest(("a red circle",)), None, g)
        base = convert_if(one, steps=(4, 3), guidance=(4.0, 3.0)).double()
        mine_low = base.run(GenerationRequest(("a red circle",)), None, torch.Generator().manual_seed(7))

    table = system.stages[0].schedule.alphas_cumprod.double()  # float64 tables (see the stage I test)
    pipe = diffusers.IFPipeline(tokenizer=tokenizer, text_encoder=t5.double(), unet=unet.double(),
                                scheduler=if_ddpm(), safety_checker=None, feature_extractor=None, watermarker=None,
                                requires_safety_checker=False)
    sr_pipe = diffusers.IFSuperResolutionPipeline(
        tokenizer=None, text_encoder=None, unet=sr_unet.double(), scheduler=sr_scheduler, safety_checker=None,
        image_noising_scheduler=noising, feature_extractor=None, watermarker=None, requires_safety_checker=False)
    for p in (pipe, sr_pipe):
        p.set_progress_bar_config(disable=True)
        p.scheduler.alphas_cumprod = table
    noising.alphas_cumprod = table
    embeds, negative = pipe.encode_prompt("a red circle", True, device="cpu", clean_caption=False)
    ctx = encode_prompts(system.config.base.text, system.text_encoder, ["a red circle", ""])["context"]
    assert (ctx - torch.cat([embeds, negative])).abs().max() <= 1e-6  # transformers' T5LayerNorm: float32 variance
    embeds, negative = ctx.chunk(2)  # so the pipelines get t2i's (a random SR UNet grows 5e-7 to 2e-3)
    g = torch.Generator().manual_seed(7)
    low = pipe(prompt_embeds=embeds, negative_prompt_embeds=negative, num_inference_steps=4, guidance_scale=4.0,
               height=16, width=16, generator=g, output_type="pt").images
    theirs = sr_pipe(image=low, prompt_embeds=embeds, negative_prompt_embeds=negative, num_inference_steps=3,
                     guidance_scale=3.0, noise_level=250, height=32, width=32, generator=g, output_type="pt").images
    err_low = (mine_low - (low / 2 + 0.5).clamp(0, 1)).abs().max().item()
    err = (mine - (theirs / 2 + 0.5).clamp(0, 1)).abs().max().item()
    print(f"convert_if (float64, DDPM learned variance, 4 + 3 steps): stage I {err_low:.2e}, cascade {err:.2e}")
    # stage II's random UNet (weights + N(0, 0.1)) grows stage I's 1e-5 difference ~40x
    assert mine.shape == (1, 3, 32, 32) and err_low <= 1e-4 and err <= 5e-4 and theirs.std() > 0.05
