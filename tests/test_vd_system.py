"""The `vd` system on tiny random weights: text -> image, variations, dual guidance whose ends are the two single
flows (from Python and `t2i generate --mix`), the text flows (caption, vary_text and their commands), one-line
errors for bad input, and the network's parts (global, data, context layers) shared by flows."""

import numpy as np
import pytest
import torch
from PIL import Image

from t2i.nn.multiflow import Flow
from t2i.systems import SYSTEMS, GenerationRequest
from t2i.systems.vd import VersatileDiffusion

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def vd():
    torch.manual_seed(0)
    system = VersatileDiffusion.tiny()
    with torch.no_grad():  # fresh weights zero some layers: noise everywhere so every path matters
        for p in system.parameters():
            p.add_(torch.randn_like(p) * 0.05)
    return system.eval()


def _image():
    a = np.zeros((16, 16, 3), np.uint8)
    a[3:10, 4:12] = (220, 40, 40)
    return Image.fromarray(a)


def test_registered_and_capabilities(vd):
    assert SYSTEMS["vd"] is VersatileDiffusion
    assert all(vd.supports(c) for c in ("txt2img", "vary", "caption", "mix")) and not vd.supports("img2img")


def test_flows_share_layers_and_differ(vd):
    net = vd.net
    names = {k.split(".")[0] for k in net.state_dict()}
    assert names == {"time_embed", "data", "context"}
    a, b = net.flow(Flow("image", "text")), net.flow(Flow("image", "image"))
    assert a.down[0].res is b.down[0].res and a.time_embed is b.time_embed is net.time_embed
    assert a.down[0].attn is net.context["text"][0] and b.down[0].attn is net.context["image"][0]
    t = net.flow(Flow("text", "text"))
    assert t.down[0].attn is a.down[0].attn  # one text-context layer serves image and text data
    x, ctx = torch.randn(1, 4, 4, 4), torch.randn(1, 5, 16)
    with torch.no_grad():
        assert (net(x, 3.0, flow=Flow("image", "text"), context=ctx)
                - net(x, 3.0, flow=Flow("image", "image"), context=ctx)).abs().max() > 1e-3
        assert net(torch.randn(2, 16), 3.0, flow=Flow("text", "image"), context=ctx.expand(2, -1, -1)).shape == (2, 16)


def test_vary_makes_n_images_and_seed_matters(vd):
    a, b = vd.vary(_image(), n=2, seed=1), vd.vary(_image(), n=2, seed=2)
    assert len(a) == 2 and a[0].size == (16, 16)
    assert np.abs(np.asarray(a[0], np.float32) - np.asarray(b[0], np.float32)).max() > 2


def test_mix_ends_are_the_single_flows(vd):
    """mix = 0 is the image's variation, mix = 1 the prompt's text -> image (same seed, same noise)."""
    prompt, image, r = "a red circle", _image(), GenerationRequest(("a red circle",), seed=3)
    with torch.no_grad():
        text = vd.draw(Flow("image", "text"), (vd.text_context([prompt]), vd.text_context([""])), r,
                       torch.Generator().manual_seed(3))
        image_only = vd.draw(Flow("image", "image"), vd.image_contexts(image, 1), r, torch.Generator().manual_seed(3))
    for mix, want in ((1.0, text), (0.0, image_only)):
        got = np.asarray(vd.mix(prompt, image, mix, seed=3)[0], np.float32) / 255
        assert np.abs(got - want[0].permute(1, 2, 0).numpy()).max() <= 1 / 255 + 1e-6, mix
    half = np.asarray(vd.mix(prompt, image, 0.5, seed=3)[0], np.float32) / 255
    assert np.abs(half - text[0].permute(1, 2, 0).numpy()).max() > 1e-2


@pytest.mark.parametrize("call,match", [
    (lambda s: s.mix("a red circle", _image(), 1.5), r"mix must be in \[0, 1\]"),
    (lambda s: s.mix("a red circle", _image(), "half"), r"mix must be a finite number"),
    (lambda s: s.mix("a red circle", "not an image", 0.5), "image"),
    (lambda s: s.generate("a red circle", mix=0.5), "mix needs an image"),
    (lambda s: s.vary_text("  "), "the caption is empty"),
    (lambda s: s.vary_text("a red circle", n=0), "n >= 1"),
    (lambda s: s.caption("not an image"), "expected a PIL image"),
    (lambda s: s.caption(_image(), n=0), "n >= 1"),
    (lambda s: s.vary("not an image"), "expected a PIL image"),
    (lambda s: s.vary(Image.new("RGB", (4, 4))), "at least 8 px"),
    (lambda s: s.vary(_image(), n=0), "n >= 1"),
])
def test_bad_input_is_a_one_line_error(vd, call, match):
    with pytest.raises(ValueError, match=match) as e:
        call(vd)
    assert "\n" not in str(e.value)


def test_cli_vary_with_a_vd_folder(vd, tmp_path, capsys):
    from t2i.cli import main

    folder = vd.save(tmp_path / "vd")
    _image().save(tmp_path / "a.png")
    out = tmp_path / "v.png"
    assert main(["vary", str(tmp_path / "a.png"), "-n", "2", "--model", str(folder), "--out", str(out)]) == 0
    written = sorted(p.name for p in tmp_path.glob("v*.png"))
    assert len(written) == 3, written  # two variations and their grid
    assert main(["vary", str(tmp_path / "a.png"), "--model", str(folder), "--toward", "a blue square",
                 "--out", str(out)]) == 2
    assert "without --toward" in capsys.readouterr().err


def test_text_flows_make_n_captions_from_the_vocabulary(vd):
    words = set(vd.clip.tokenizer.vocab)
    for texts in (vd.caption(_image(), n=3, seed=1), vd.vary_text("a red circle", n=3, seed=1)):
        assert len(texts) == 3 and all(isinstance(t, str) and set(t.split()) <= words for t in texts)
    assert vd.caption(_image(), n=2, seed=4) == vd.caption(_image(), n=2, seed=4)


def test_cli_text_flows_and_mix(vd, tmp_path, capsys):
    from t2i.cli import main

    folder = str(vd.save(tmp_path / "vd"))
    _image().save(tmp_path / "a.png")
    assert main(["caption", str(tmp_path / "a.png"), "--model", folder, "-n", "2"]) == 0
    assert len(capsys.readouterr().out.splitlines()) == 2
    assert main(["vary-text", "a red circle", "--model", folder, "-n", "3"]) == 0
    assert len(capsys.readouterr().out.splitlines()) == 3
    out = tmp_path / "m.png"
    assert main(["generate", "a blue square", "--model", folder, "--image", str(tmp_path / "a.png"), "--mix", "0.5",
                 "--out", str(out), "--no-progress"]) == 0
    with Image.open(out) as im:
        assert im.info["mix"] == "0.5" and im.info["mode"] == "mix" and im.size == (16, 16)
    (tmp_path / "not.png").write_text("text")
    for argv, match in ((["vary-text", " ", "--model", folder], "the caption is empty"),
                        (["caption", str(tmp_path / "not.png"), "--model", folder], "not an image"),
                        (["generate", "x", "--model", folder, "--image", str(tmp_path / "a.png"), "--mix", "1.5"],
                         "--mix must be in [0, 1]"),
                        (["generate", "x", "--model", folder, "--mix", "0.5"], "--mix needs an image")):
        assert main(argv) == 2, argv
        err = capsys.readouterr().err
        assert match in err and len(err.strip().splitlines()) == 1, err


def test_caption_parser_scores_the_scenes_own_captions():
    from t2i.eval.caption import caption_score, names_every_object, named_objects, truth_captioner

    assert caption_score(truth_captioner(), 40) == 1.0
    assert named_objects("two large red circles and a square that is blue") == [(2, "red", "circle"),
                                                                                 (1, "blue", "square")]
    objs = [{"color": "red", "shape": "circle"}, {"color": "blue", "shape": "star"}]
    assert names_every_object("a blue star below a red circle on a black background", objs)
    assert not names_every_object("a red circle", objs) and not names_every_object("two stars", objs[1:])
    assert not names_every_object("a red circle and a blue star and a green cross", objs)


def test_cli_eval_caption(vd, tmp_path, capsys):
    from t2i.cli import main

    assert main(["eval", "caption", "--real", "--n", "10"]) == 0
    assert "1.000" in capsys.readouterr().out
    folder = str(vd.save(tmp_path / "vd"))
    assert main(["eval", "caption", "--model", folder, "--n", "2", "--json", str(tmp_path / "c.json")]) == 0
    assert 0 <= __import__("json").loads((tmp_path / "c.json").read_text())["score"] <= 1


def test_text_rows_norm_groups_and_context_scale_are_kept_by_the_folder(tmp_path):
    import dataclasses

    from t2i.systems.vd_config import tiny_config

    config = tiny_config()
    one_row = dataclasses.replace(config, net=dataclasses.replace(config.net, text_rows=1, text_norm_groups=4),
                                  context_scale=2.0)
    clip = VersatileDiffusion.tiny().clip
    sizes = {rows: sum(p.numel() for p in VersatileDiffusion(c, clip).net.data["text"].parameters())
             for rows, c in ((4, config), (1, one_row))}
    assert sizes[1] * 4 < sizes[4]  # the Linear layers grow as rows^2
    system = VersatileDiffusion(one_row, clip).eval()
    again = VersatileDiffusion.load(system.save(tmp_path / "vd"))
    assert (again.config.net.text_rows, again.config.net.text_norm_groups, again.config.context_scale) == (1, 4, 2.0)
    assert again.net.data["text"].norm_out.num_groups == 4 and again.net.data["image"].norm_out.num_groups == 8
    unscaled = VersatileDiffusion(config, clip)
    assert torch.allclose(system.text_context(["a red circle"]), 2 * unscaled.text_context(["a red circle"]))
    assert again.vary_text("a red circle", 2, seed=0, steps=2) == system.vary_text("a red circle", 2, seed=0, steps=2)
