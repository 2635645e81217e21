"""Shared pytest fixtures and helpers."""

import json
from pathlib import Path

import pytest
import torch


@pytest.fixture
def one_thread():
    """Run a test on one intra-op thread: tiny layers on a busy 2-core machine run ~10x faster so."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


HAS_SHIPPED_LDM = (Path(__file__).resolve().parents[1] / "t2i" / "weights" / "ldm" / "system.json").is_file()
needs_shipped_ldm = pytest.mark.skipif(not HAS_SHIPPED_LDM, reason="no shipped LDM weights in this checkout")


@pytest.fixture(scope="session")
def shipped_ldm():
    """The shipped `ldm` system, loaded once for every test that draws with it."""
    from t2i.api import load

    return load("ldm")


def write_tiny_clip_bpe(path: Path, corpus: list[str], max_length: int | None = None) -> Path:
    """Train a tiny CLIP-style byte-level BPE (vocab.json + merges.txt) on corpus into the folder path.

    Like CLIP's: words end in "</w>", <|startoftext|> and <|endoftext|> are special tokens, and the
    vocabulary holds every byte alone and as a word end. With max_length, a tokenizer_config.json
    records it as model_max_length. Needs the `tokenizers` package (importorskip it first).
    """
    from tokenizers import Tokenizer, models, pre_tokenizers, trainers

    path = Path(path)
    path.mkdir(parents=True, exist_ok=True)
    alphabet = list(pre_tokenizers.ByteLevel.alphabet())
    tok = Tokenizer(models.BPE(end_of_word_suffix="</w>"))
    tok.pre_tokenizer = pre_tokenizers.Sequence([pre_tokenizers.Whitespace(),
                                                 pre_tokenizers.ByteLevel(add_prefix_space=False)])
    trainer = trainers.BpeTrainer(vocab_size=400, initial_alphabet=alphabet, end_of_word_suffix="</w>",
                                  special_tokens=["<|startoftext|>", "<|endoftext|>"], show_progress=False)
    tok.train_from_iterator([c.lower() for c in corpus], trainer)
    tok.model.save(str(path))
    vocab = json.loads((path / "vocab.json").read_text())
    for ch in alphabet:  # CLIP's vocabulary holds every byte, alone and as a word end
        vocab.setdefault(ch, len(vocab))
        vocab.setdefault(ch + "</w>", len(vocab))
    (path / "vocab.json").write_text(json.dumps(vocab))
    if max_length is not None:
        (path / "tokenizer_config.json").write_text(json.dumps({"model_max_length": max_length}))
    return path


@pytest.fixture(scope="session")
def tiny_clip_bpe():
    """`write_tiny_clip_bpe` as a fixture: tiny_clip_bpe(path, corpus, max_length=None) -> path."""
    return write_tiny_clip_bpe


SD_CORPUS = ["a red circle to the left of a blue square", "two green triangles", "a large yellow star",
             "a purple cross above an orange circle on a black background", "three small pink squares"] * 20
SD_SCHEDULER = dict(num_train_timesteps=1000, beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear",
                    steps_offset=1, clip_sample=False, set_alpha_to_one=False, timestep_spacing="leading")


def tiny_sd_components(tmp: Path, size: int, in_channels: int = 4) -> dict:
    """The parts of a tiny random diffusers Stable Diffusion pipeline for `size` px images, built offline
    (a BPE trained into tmp, a 2-layer CLIP text model, a 2-level UNet and VAE, DDIM with SD's schedule).
    Needs diffusers, transformers and tokenizers (importorskip them first)."""
    import diffusers
    import transformers

    bpe = write_tiny_clip_bpe(tmp / f"bpe{in_channels}", SD_CORPUS)
    tokenizer = transformers.CLIPTokenizer(vocab=str(bpe / "vocab.json"), merges=str(bpe / "merges.txt"),
                                           model_max_length=12)
    torch.manual_seed(in_channels)
    text = transformers.CLIPTextModel(transformers.CLIPTextConfig(
        vocab_size=len(tokenizer), hidden_size=32, num_hidden_layers=2, num_attention_heads=4, intermediate_size=37,
        max_position_embeddings=12, bos_token_id=0, eos_token_id=1, pad_token_id=1)).eval()
    unet = diffusers.UNet2DConditionModel(
        sample_size=size // 2, in_channels=in_channels, out_channels=4, block_out_channels=(32, 64), layers_per_block=1,
        down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"), up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"),
        cross_attention_dim=32, attention_head_dim=8, norm_num_groups=8).eval()
    vae = diffusers.AutoencoderKL(block_out_channels=(32, 64), down_block_types=("DownEncoderBlock2D",) * 2,
                                  up_block_types=("UpDecoderBlock2D",) * 2, latent_channels=4, norm_num_groups=8,
                                  layers_per_block=1).eval()
    with torch.no_grad():  # fresh diffusers models zero some layers: noise everywhere so no mapping error hides
        for p in list(unet.parameters()) + list(vae.parameters()):
            p.add_(torch.randn_like(p) * 0.05)
    return dict(vae=vae, text_encoder=text, tokenizer=tokenizer, unet=unet,
                scheduler=diffusers.DDIMScheduler(**SD_SCHEDULER), safety_checker=None, feature_extractor=None,
                requires_safety_checker=False)
