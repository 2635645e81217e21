"""Zero-shot retrieval (t2i.eval.retrieval): an oracle CLIP scores 1, a random one near chance, and `t2i eval clip`
reads a clip run."""

import types

import pytest
import torch

from t2i.eval.flows import held_out_scenes
from t2i.eval.retrieval import text_to_image_top1
from t2i.io.images import image_to_tensor
from t2i.train import Trainer, load_recipe

pytestmark = pytest.mark.usefixtures("one_thread")  # tests/conftest.py


class OracleCLIP:
    """Embeds a held-out scene's image and its caption to the same one-hot vector (or, shuffled, to unrelated ones)."""

    def __init__(self, n: int, shuffle: bool = False):
        scenes = held_out_scenes(n, size=16)
        self.config = types.SimpleNamespace(tower=types.SimpleNamespace(image_size=16))
        self.ids = {caption: i for i, (_, caption, _) in enumerate(scenes)}
        order = torch.randperm(n, generator=torch.Generator().manual_seed(0)) if shuffle else torch.arange(n)
        self.pixels = {image_to_tensor(im).numpy().tobytes(): int(order[self.ids[c]]) for im, c, _ in scenes}
        self.n = n

    def encode_text(self, captions):
        return torch.eye(self.n)[[self.ids[c] for c in captions]]

    def encode_image(self, x):
        return torch.eye(self.n)[[self.pixels[row[None].numpy().tobytes()] for row in x]]


def test_an_oracle_clip_retrieves_every_scene_and_a_shuffled_one_few():
    assert text_to_image_top1(OracleCLIP(40), candidates=20, groups=2)["top1"] == 1.0
    assert text_to_image_top1(OracleCLIP(40, shuffle=True), candidates=20, groups=2)["top1"] < 0.3
    with pytest.raises(ValueError, match="candidates"):
        text_to_image_top1(OracleCLIP(4), candidates=1)


def test_cli_eval_clip_reads_a_clip_run(tmp_path, capsys):
    from t2i.cli import main

    Trainer(load_recipe("tiny_clip", ["train.steps=2", "train.batch_size=4", "clip.num_samples=2",
                                      "data.num_workers=0"]), tmp_path / "clip", progress=False).run()
    assert main(["eval", "clip", "--model", str(tmp_path / "clip"), "--candidates", "10", "--groups", "1"]) == 0
    assert "top-1 among 10" in capsys.readouterr().out
    assert main(["eval", "clip", "--model", str(tmp_path / "nowhere")]) == 2
