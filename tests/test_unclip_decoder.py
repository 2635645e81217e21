"""unCLIP's decoder conditioning (Ramesh et al. 2022, sec. 2.1): the CLIP image embedding as four extra context
tokens and in the time embedding, as diffusers' UnCLIPTextProjModel computes them; caption optional."""

from __future__ import annotations

import pytest
import torch

from t2i.nn.unclip_decoder import DecoderConfig, EmbeddingDecoder

pytestmark = pytest.mark.usefixtures("one_thread")

UNET = dict(in_channels=3, out_channels=3, block_channels=(16, 32), num_res_blocks=1, attention_levels=(1,),
            attention_block="adm", num_heads=2, context_dim=16, norm_groups=8)


def tiny(caption: bool = True) -> EmbeddingDecoder:
    torch.manual_seed(0)
    net = EmbeddingDecoder(DecoderConfig(dict(UNET, pooled_dim=8 + 6 * caption), embed_dim=8, caption=caption,
                                         token_dim=12, text_dim=6))
    with torch.no_grad():
        for p in net.parameters():
            p.add_(torch.randn_like(p) * 0.1)
    return net.eval()


def test_conditioning_matches_diffusers_text_proj():
    pytest.importorskip("diffusers")
    from diffusers.pipelines.deprecated.unclip.text_proj import UnCLIPTextProjModel

    from t2i.io.diffusers_unclip import decoder_conditioning_from_text_proj

    torch.manual_seed(1)
    theirs = UnCLIPTextProjModel(clip_extra_context_tokens=4, clip_embeddings_dim=8, time_embed_dim=64,
                                 cross_attention_dim=16)
    with torch.no_grad():
        for p in theirs.parameters():
            p.copy_(torch.randn_like(p))
    ours = EmbeddingDecoder(DecoderConfig(dict(UNET, pooled_dim=16), embed_dim=8, token_dim=8, text_dim=8)).eval()
    state = {**ours.state_dict(), **decoder_conditioning_from_text_proj(theirs.state_dict())}
    ours.load_state_dict(state)
    e, p, tokens = torch.randn(2, 8), torch.randn(2, 8), torch.randn(2, 5, 8)
    mask = torch.tensor([[1, 1, 1, 0, 0], [1, 1, 1, 1, 1]], dtype=torch.bool)
    with torch.no_grad():
        want_ctx, want_time = theirs(image_embeddings=e, prompt_embeds=torch.cat([p, p]),
                                     text_encoder_hidden_states=torch.cat([tokens, tokens]),
                                     do_classifier_free_guidance=True)
        ctx, got_mask, vector = ours.condition(torch.cat([ours.null.expand(2, -1), e]), torch.cat([tokens, tokens]),
                                               torch.cat([mask, mask]), torch.cat([p, p]))
        assert (ctx - want_ctx).abs().max() <= 1e-5
        assert (ours.unet.pooled_proj(vector) - want_time).abs().max() <= 1e-5
    assert got_mask.shape == (4, 9) and got_mask[:, :4].all()


@pytest.mark.parametrize("caption", [True, False])
def test_the_embedding_and_the_caption_reach_the_output(caption):
    net = tiny(caption)
    x, t, e = torch.randn(2, 3, 8, 8), torch.tensor([10, 500]), torch.randn(2, 8)
    text = dict(context=torch.randn(2, 5, 12), pooled=torch.randn(2, 6)) if caption else {}
    with torch.no_grad():
        out = net(x, t, e, **text)
        assert out.shape == x.shape
        assert (net(x, t, e + 1, **text) - out).abs().max() > 1e-4
        if caption:
            assert (net(x, t, e, context=text["context"] + 1, pooled=text["pooled"]) - out).abs().max() > 1e-4
            with pytest.raises(ValueError, match="caption-conditioned"):
                net(x, t, e)


def test_config_refuses_a_misfit_pooled_dim():
    with pytest.raises(ValueError, match="pooled_dim = 14"):
        DecoderConfig(dict(UNET, pooled_dim=8), embed_dim=8, text_dim=6)
    assert DecoderConfig.from_dict(DecoderConfig(dict(UNET, pooled_dim=14), embed_dim=8, text_dim=6).to_dict()).unet.pooled_dim == 14
