"""ControlNet: the zero-convolution identity (a fresh ControlNet gives the base LDM's images exactly), a frozen
base through training, several controls summed with their scales, guess mode, the request's control checks,
the annotators on ShapesWorld renders, and the training stage."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from t2i.data.annotate import _dilate, annotate, segmentation_truth
from t2i.nn.controlnet import ControlledUNet, ControlNet
from t2i.nn.unet import ControlResiduals, UNet, UNetConfig
from t2i.systems import LDM, ControlNetSystem, GenerationRequest

pytestmark = pytest.mark.usefixtures("one_thread")


def _noisy(module, std=0.05, seed=0):
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in module.parameters():
            p.add_(torch.randn(p.shape, generator=g) * std)
    return module


def _control(size=16):
    im = Image.new("RGB", (size, size))
    im.paste((255, 255, 255), (size // 4, size // 4, 3 * size // 4, 3 * size // 4))
    return im


def test_a_fresh_controlnet_gives_the_base_ldm_images_exactly():
    base = _noisy(LDM.tiny(0)).eval()
    system = ControlNetSystem.over(base, ("edges",), 8).eval()
    want = base.sample("a red circle", seed=3)
    got = system.sample("a red circle", seed=3, control=_control())
    assert torch.equal(want, got)
    _noisy(system.controlnets)
    assert not torch.equal(want, system.sample("a red circle", seed=3, control=_control()))
    assert torch.equal(want, system.sample("a red circle", seed=3))  # no control: the base


def test_controlnet_copies_the_encoder_and_starts_at_zero_residuals():
    unet = _noisy(UNet(UNetConfig(block_channels=(16, 32), num_res_blocks=1, attention_levels=(1,), num_heads=2,
                                  context_dim=12, norm_groups=8)))
    net = ControlNet.from_unet(unet, (8, 8))
    assert all(torch.equal(a, b) for a, b in zip(net.encoder.state_dict().values(), unet.encoder_state_dict().values()))
    x, ctx = torch.randn(2, 4, 8, 8), torch.randn(2, 3, 12)
    r = net(x, torch.tensor([10.0, 500.0]), torch.rand(2, 3, 16, 16), context=ctx)
    assert len(r.skips) == len(unet.skip_channels) and all(not s.any() for s in r.skips) and not r.mid.any()
    with pytest.raises(ValueError, match="control image must be"):
        net(x, 1.0, torch.rand(2, 3, 8, 8), context=ctx)


def test_several_controls_sum_with_their_scales():
    unet = _noisy(UNet(UNetConfig(block_channels=(16, 32), num_res_blocks=1, attention_levels=(1,), num_heads=2,
                                  context_dim=12, norm_groups=8)))
    a, b = (_noisy(ControlNet.from_unet(unet, (8, 8)), 0.1, s) for s in (1, 2))
    x, t, ctx = torch.randn(2, 4, 8, 8), torch.tensor([3.0, 700.0]), torch.randn(2, 3, 12)
    hints = torch.rand(2, 2, 3, 16, 16)
    with torch.no_grad():
        both = ControlledUNet(unet, [a, b], [0.7, -1.5])(x, t, hints=hints, context=ctx)
        ra, rb = a(x, t, hints[:, 0], context=ctx), b(x, t, hints[:, 1], context=ctx)
        want = unet(x, t, context=ctx, control=ra.scaled(0.7) + rb.scaled(-1.5))
        half = ControlledUNet(unet, [a, b], [0.7, -1.5])(x, t, hints=hints, context=ctx,
                                                          control_weight=torch.tensor([0.0, 1.0]))
    assert torch.allclose(both, want, atol=1e-5)
    assert torch.allclose(half[0], unet(x, t, context=ctx)[0], atol=1e-6)  # weight 0: the base
    assert torch.allclose(half[1], both[1], atol=1e-6)
    assert isinstance(ra + rb, ControlResiduals)


def test_system_controls_guess_mode_and_bad_input():
    torch.manual_seed(0)
    system = _noisy(ControlNetSystem.tiny()).eval()
    one = system.sample("a red circle", seed=1, control=_control(), control_type="edges")
    two = system.sample("a red circle", seed=1, control=[_control(), _control()], control_type=["edges", "scribble"],
                        control_scale=[1.0, 0.0])
    assert torch.allclose(one, two, atol=1e-5)  # a control at scale 0 adds nothing
    guess = system.sample("", seed=1, control=_control(), control_type="edges")
    assert guess.shape == (1, 3, 16, 16) and torch.isfinite(guess).all()
    with pytest.warns(UserWarning, match="resized to the output's 16x16"):
        system.sample("a red circle", seed=1, control=_control(24), control_type="edges")
    with pytest.raises(ValueError, match="give a control_type"):
        system.sample("a red circle", control=_control())
    with pytest.raises(ValueError, match="no ControlNet for 'segmentation'"):
        system.sample("a red circle", control=_control(), control_type="segmentation")
    for bad, match in ((dict(control_type="sketchy"), "unknown control_type"),
                       (dict(control_scale=float("nan")), "control_scale must be a finite number"),
                       (dict(control=b"png"), "control must be a PIL image"),
                       (dict(control_type=["edges", "edges"]), "control_type has 2 entries for 1")):
        with pytest.raises(ValueError, match=match):
            GenerationRequest(("a red circle",), **{"control": _control(), **bad})
    with pytest.raises(ValueError, match="the prompt is empty"):
        GenerationRequest(("",))
    with pytest.raises(ValueError, match="does not support control"):
        LDM.tiny().generate("a red circle", control=_control())
    meta = system.generate("a red circle", control=_control(), control_type="edges", control_scale=0.5)[0].info
    assert meta["control_type"] == "edges" and meta["control_scale"] == "0.5"


def test_load_controlnet_without_shipped_weights_is_one_line(tmp_path, monkeypatch):
    import t2i

    monkeypatch.setattr("t2i.io.weights.WEIGHTS_DIR", tmp_path)  # as a checkout before the weights are shipped
    with pytest.raises(ValueError, match="no shipped weights are installed yet for the 'controlnet' system"):
        t2i.load("controlnet")


def test_annotators_match_shapesworld_ground_truth():
    from t2i.data.control import control_map
    from t2i.data.render import render
    from t2i.data.shapes import ShapesWorld

    ds = ShapesWorld(size=64, seed=11)
    for i in range(12):
        scene = ds.scene(i)
        image = render(scene, 64)
        seg = np.asarray(annotate(image, "segmentation"))
        assert (seg == np.asarray(segmentation_truth(scene, 64))).all(-1).mean() > 0.98
        e, g = np.asarray(annotate(image, "edges")) > 0, np.asarray(control_map(scene, "edges", 64)) > 0
        assert (e & _dilate(g, 1)).sum() >= 0.97 * e.sum() and (g & _dilate(e, 1)).sum() >= 0.97 * g.sum()
        s = np.asarray(annotate(image, "scribble", seed=i)) > 0
        assert s.sum() > 1.5 * e.sum() and (s & _dilate(e, 3)).sum() > 0.9 * s.sum()
    assert annotate(image, "edges").mode == "L" and annotate(image, "segmentation").mode == "RGB"
    with pytest.raises(ValueError, match="unknown annotator"):
        annotate(image, "depthish")


def test_training_stage_keeps_the_base_bit_identical(tmp_path):
    from t2i.train import Trainer, load_recipe, read_checkpoint

    base = _noisy(LDM.tiny(0))
    base.save(tmp_path / "base")
    before = {k: v.clone() for k, v in base.state_dict().items()}
    recipe = load_recipe("tiny_controlnet", [f"controlnet.base='{tmp_path / 'base'}'"])
    trainer = Trainer(recipe, tmp_path / "run", progress=False, log=lambda m: None)
    result = trainer.run()
    stage = trainer.stage
    assert all(p.grad is None and not p.requires_grad for p in stage.base.parameters())
    after = LDM.load(tmp_path / "base").state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)
    assert all(torch.equal(before[k], v) for k, v in stage.base.state_dict().items())  # the one trained over
    saved = read_checkpoint(result.checkpoint).model
    assert {k.split(".")[0] for k in saved} == {"controlnet"}
    zero = [k for k in saved if k.startswith("controlnet.zero_convs.")]
    assert zero and any(saved[k].abs().sum() > 0 for k in zero)  # the zero convs moved


def test_cli_annotate_generate_with_control_and_eval_control(tmp_path, capsys):
    from t2i.cli import main
    from t2i.data.render import render
    from t2i.data.shapes import ShapesWorld
    from t2i.eval.control import evaluate_control, truth_generator

    render(ShapesWorld(size=64, seed=3).scene(0), 64).save(tmp_path / "scene.png")
    assert main(["annotate", "edges", str(tmp_path / "scene.png"), "--out", str(tmp_path / "e.png")]) == 0
    assert Image.open(tmp_path / "e.png").size == (64, 64)
    torch.manual_seed(0)
    _noisy(ControlNetSystem.tiny()).save(tmp_path / "cn")
    args = ["generate", "", "--model", str(tmp_path / "cn"), "--control", str(tmp_path / "e.png"),
            "--control-type", "scribble", "--control-scale", "0.5", "--steps", "2", "--out", str(tmp_path / "g.png"),
            "--no-progress"]
    assert main(args) == 0  # guess mode; the 64 px map is resized to 16 px with a note
    assert "resized" in capsys.readouterr().err
    assert Image.open(tmp_path / "g.png").info["control_type"] == "scribble"
    assert main([a if a != "scribble" else "depth" for a in args]) == 2
    assert "no ControlNet for 'depth'" in capsys.readouterr().err
    rows = evaluate_control(truth_generator(), ("edges", "segmentation"), n=6)
    assert all(r["placed_images"] == 1.0 for r in rows.values())
    assert main(["eval", "control", "--model", str(tmp_path / "cn"), "--kinds", "edges", "--n", "1", "--steps", "1"]) == 0
    assert "base (no control)" in capsys.readouterr().out


def _train(tmp, name, base, *overrides):
    from t2i.train import Trainer, load_recipe

    recipe = load_recipe("tiny_controlnet", [f"controlnet.base='{base}'", *overrides])
    Trainer(recipe, tmp / name, progress=False, log=lambda m: None).run()
    return tmp / name


@pytest.fixture(scope="module")
def tiny_runs(tmp_path_factory):
    """Tiny controlnet runs: edges (checkpoints at steps 1, 2, 3) and scribble over one base LDM folder,
    segmentation over another."""
    tmp = tmp_path_factory.mktemp("cnruns")
    torch.set_num_threads(1)
    base = _noisy(LDM.tiny(0))
    base.save(tmp / "base")
    base.save(tmp / "other")
    return (_train(tmp, "edges", tmp / "base", "train.checkpoint_every=1"),
            _train(tmp, "scribble", tmp / "base", "controlnet.control='scribble'", "train.steps=1"),
            _train(tmp, "seg", tmp / "other", "controlnet.control='segmentation'", "train.steps=1"))


def _same(a, b, half=False):
    sa, sb = a.state_dict(), b.state_dict()
    return sa.keys() == sb.keys() and all(torch.equal(sa[k].half().float() if half else sa[k], sb[k]) for k in sa)


def test_training_runs_convert_to_the_shipped_controlnet_folder(tiny_runs, tmp_path, monkeypatch):
    """`t2i convert EDGES_RUN SCRIBBLE_RUN WEIGHTS/controlnet --to t2i --dtype float16`: the runs' EMA weights in
    float16, the base not stored again; `t2i.load("controlnet")` finds the folder and generates with each kind."""
    import t2i
    from safetensors import safe_open

    from t2i.api.runs import controlnet_from_training_runs
    from t2i.cli import main

    edges, scribble, _ = tiny_runs
    monkeypatch.setattr("t2i.io.weights.WEIGHTS_DIR", tmp_path)
    args = ["convert", str(edges), str(scribble), str(tmp_path / "controlnet"), "--to", "t2i", "--dtype", "float16"]
    assert main(args) == 0
    assert sorted(p.name for p in (tmp_path / "controlnet").iterdir()) == [
        "controlnet_edges.safetensors", "controlnet_scribble.safetensors", "system.json"]
    with safe_open(str(tmp_path / "controlnet" / "controlnet_edges.safetensors"), "pt") as f:
        assert all(f.get_tensor(k).dtype == torch.float16 for k in f.keys())
    system = t2i.load("controlnet")
    assert system.config.kinds == ("edges", "scribble")
    assert _same(controlnet_from_training_runs([edges, scribble]).controlnets, system.controlnets, half=True)
    for kind in ("edges", "scribble"):
        x = system.sample("a red circle", control=_control(), control_type=kind, steps=2, seed=0)
        assert x.shape == (1, 3, 16, 16) and torch.isfinite(x).all()
    assert isinstance(t2i.load(edges), ControlNetSystem)  # one run loads as a system too


def test_controlnet_export_by_step_one_kind_and_bad_runs(tiny_runs, tmp_path):
    from t2i.api.runs import controlnet_from_training_runs
    from t2i.cli import main

    edges, scribble, seg = tiny_runs
    newest, first = controlnet_from_training_runs([edges]), controlnet_from_training_runs([edges], step=1)
    assert _same(newest, controlnet_from_training_runs([edges], step=3)) and not _same(newest, first)
    assert main(["convert", str(edges), str(tmp_path / "e1"), "--step", "1"]) == 0
    only = ControlNetSystem.load(tmp_path / "e1")
    assert _same(first.controlnets, only.controlnets)
    with pytest.raises(ValueError, match=r"no ControlNet for 'scribble': .* has ControlNets for edges \("):
        only.sample("a red circle", control=_control(), control_type="scribble")
    with pytest.raises(ValueError, match=r"no checkpoint of step 7 \(its checkpoints: steps 1, 2, 3\)"):
        controlnet_from_training_runs([edges], step=7)
    with pytest.raises(ValueError, match="different bases"):
        controlnet_from_training_runs([edges, seg])
    with pytest.raises(ValueError, match="two runs train the 'edges' ControlNet"):
        controlnet_from_training_runs([edges, edges])
    assert main(["convert", str(edges), str(scribble), str(tmp_path / "d"), "--to", "diffusers"]) == 2
