"""Public ControlNet checkpoints: a tiny random diffusers ControlNetModel (from_unet of a tiny SD pipeline's UNet,
built offline) converted into a t2i ControlNetSystem gives diffusers' StableDiffusionControlNetPipeline image for
the same noise (max abs pixel difference <= 1e-4); the original single-file layout (lllyasviel's cldm keys) reads
back into identical t2i weights, and diffusers' own single-file converter reads t2i's file as the diffusers model."""

import numpy as np
import pytest
import torch
from PIL import Image

diffusers = pytest.importorskip("diffusers")
pytest.importorskip("transformers")
pytest.importorskip("tokenizers")

from conftest import tiny_sd_components  # noqa: E402
from t2i.io.diffusers_controlnet import (  # noqa: E402
    load_controlnet_single_file,
    load_diffusers_controlnet,
    save_controlnet_single_file,
)
from t2i.io.diffusers_pipeline import load_diffusers_pipeline  # noqa: E402
from t2i.systems import ControlNetSystem  # noqa: E402

pytestmark = [pytest.mark.usefixtures("one_thread"), pytest.mark.filterwarnings("ignore::UserWarning")]

TOL = 1e-4
SIZE, STEPS = 16, 5
PROMPT, NEGATIVE = "a red circle to the left of a blue square", "a green star"


def _noised(module, seed):
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():  # zero convolutions and the hint's last conv start at 0: noise so no mapping error hides
        for p in module.parameters():
            p.add_(torch.randn(p.shape, generator=g) * 0.05)
    return module.eval()


@pytest.fixture(scope="module")
def sd_controlnet(tmp_path_factory):
    """(diffusers ControlNet pipeline, its SD folder, its ControlNetModel folder)."""
    tmp = tmp_path_factory.mktemp("sdcn")
    parts = tiny_sd_components(tmp, SIZE)
    diffusers.StableDiffusionPipeline(**parts).save_pretrained(tmp / "sd", safe_serialization=True)
    cn = _noised(diffusers.ControlNetModel.from_unet(parts["unet"], conditioning_embedding_out_channels=(16, 32)), 1)
    cn.save_pretrained(tmp / "cn", safe_serialization=True)
    pipe = diffusers.StableDiffusionControlNetPipeline(**parts, controlnet=cn)
    pipe.set_progress_bar_config(disable=True)
    return pipe, tmp / "sd", tmp / "cn"


def _control():
    a = np.zeros((SIZE, SIZE, 3), np.uint8)
    a[3:11, 4:13] = 255
    a[6:8, :] = (40, 200, 90)
    return Image.fromarray(a)


@pytest.mark.parametrize("prompt,scale", [(PROMPT, 1.0), (PROMPT, 0.6), ("", 1.0)])
def test_diffusers_controlnet_matches_the_diffusers_pipeline(sd_controlnet, prompt, scale):
    """Same image as StableDiffusionControlNetPipeline; an empty prompt is t2i's guess mode (diffusers'
    guess_mode=True: the control in the conditional branch only, its residuals scaled 0.1 .. 1)."""
    pipe, sd, cn = sd_controlnet
    system = ControlNetSystem.of(load_diffusers_pipeline(sd), {"edges": load_diffusers_controlnet(cn)})
    neg = NEGATIVE if prompt else ""
    theirs = pipe(prompt, image=_control(), negative_prompt=neg, num_inference_steps=STEPS, guidance_scale=5.0,
                  controlnet_conditioning_scale=scale, guess_mode=not prompt, height=SIZE, width=SIZE,
                  output_type="np", generator=torch.Generator().manual_seed(7)).images
    ours = system.sample(prompt, negative_prompt=neg, control=_control(), control_type="edges", control_scale=scale,
                         steps=STEPS, guidance=5.0, seed=7).permute(0, 2, 3, 1).numpy()
    diff = float(np.abs(theirs - ours).max())
    print(f"max abs pixel difference {diff:.2e}")  # shown with -s
    assert theirs.shape == ours.shape and diff <= TOL
    if prompt:  # the control does steer the image: far from the base's own
        base = system.sample(prompt, negative_prompt=neg, steps=STEPS, guidance=5.0, seed=7)
        assert np.abs(base.permute(0, 2, 3, 1).numpy() - ours).max() > 100 * TOL


def test_single_file_layout_reads_back_the_same_weights(sd_controlnet, tmp_path):
    """t2i -> original single file -> t2i gives identical tensors, named under control_model.*."""
    from safetensors import safe_open

    _, sd, cn = sd_controlnet
    net, base = load_diffusers_controlnet(cn), load_diffusers_pipeline(sd)
    path = save_controlnet_single_file(net, tmp_path / "control_tiny.safetensors")
    with safe_open(str(path), "pt") as f:
        keys = set(f.keys())
    assert {"control_model.input_hint_block.0.weight", "control_model.zero_convs.0.0.weight",
            "control_model.middle_block_out.0.bias", "control_model.input_blocks.1.1.proj_in.weight"} <= keys
    back = load_controlnet_single_file(path, base.unet.config)
    assert back.config == net.config
    a, b = net.state_dict(), back.state_dict()
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    with pytest.raises(ValueError, match="not an original-layout ControlNet"):
        load_controlnet_single_file(cn / "diffusion_pytorch_model.safetensors", base.unet.config)


def test_diffusers_single_file_converter_reads_t2is_file(tmp_path):
    """An SD-sized hint encoder (16, 32, 96, 256; diffusers' converter assumes its 8 hint convs): t2i's
    original-layout file, converted by diffusers' own convert_controlnet_checkpoint, is diffusers' model."""
    from diffusers.loaders.single_file_utils import convert_controlnet_checkpoint
    from safetensors.torch import load_file

    torch.manual_seed(0)
    theirs = _noised(diffusers.ControlNetModel(
        block_out_channels=(32, 64), layers_per_block=1, down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"),
        cross_attention_dim=32, attention_head_dim=8, norm_num_groups=8), 2)
    theirs.save_pretrained(tmp_path / "cn", safe_serialization=True)
    net = load_diffusers_controlnet(tmp_path / "cn")
    state = load_file(str(save_controlnet_single_file(net, tmp_path / "cn.safetensors")))
    converted = convert_controlnet_checkpoint(state, dict(theirs.config))
    want = theirs.state_dict()
    assert converted.keys() == want.keys()
    assert all(torch.equal(converted[k].reshape(want[k].shape), want[k]) for k in want)
