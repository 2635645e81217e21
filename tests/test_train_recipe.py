"""Recipes: every bundled one parses, and bad values stop with a message naming section, key and value."""

from __future__ import annotations

import math

import pytest

from t2i.cli import main
from t2i.train import RecipeError, TrainConfig, bundled_recipes, load_recipe
from t2i.train.optim import lr_factor
from t2i.train.recipe import Recipe


def test_every_bundled_recipe_parses_and_round_trips():
    names = set(bundled_recipes())
    assert {"tiny_pixel", "tiny_autoencoder", "tiny_latent", "shapes_autoencoder", "shapes_ldm"} <= names
    for name in names:
        r = load_recipe(name)
        again = Recipe.from_dict(r.to_dict())
        assert again == r, name
        assert r.description, f"{name} needs a description saying what it is for"


@pytest.mark.parametrize(
    "override, message",
    [
        ("train.lr=-1", "[train] lr = -1.0: must be > 0"),
        ("train.lrr=1", "unknown key 'lrr' (did you mean 'lr'?)"),
        ("train.batch_size=7", "[train] batch_size = 7: must be divisible by grad_accum"),
        ("train.lr_schedule='linear'", "lr_schedule = 'linear': must be one of cosine, constant"),
        ("train.steps='many'", "[train] steps = 'many': must be an integer"),
        ("train.ema_decay=1.0", "ema_decay = 1.0: must be in [0, 1)"),
        ("diffusion.prediction='noise'", "[diffusion] prediction = 'noise': must be one of eps, v, x0"),
        ("diffusion.p_uncond=2", "p_uncond = 2.0: must be in [0, 1]"),
        ("data.size=4", "[data] size = 4: must be at least 8"),
        ("stage='difusion'", "unknown stage 'difusion' (did you mean 'diffusion'?)"),
        ("extra.x=1", "unknown top-level key 'extra'"),
    ],
)
def test_bad_values_name_the_key_and_value(override, message):
    if override == "train.batch_size=7":
        override_list = [override, "train.grad_accum=2"]
    else:
        override_list = [override]
    with pytest.raises(RecipeError) as e:
        load_recipe("tiny_pixel", override_list)
    assert message in str(e.value)
    assert "tiny_pixel.toml" in str(e.value)


def test_overrides_are_toml_values():
    r = load_recipe("tiny_pixel", ["train.lr=3e-4", "train.betas=[0.8, 0.9]", "diffusion.sampler=euler"])
    assert r.train.lr == 3e-4 and r.train.betas == (0.8, 0.9) and r.options.sampler == "euler"


def test_invalid_toml_and_missing_recipe(tmp_path):
    bad = tmp_path / "bad.toml"
    bad.write_text("stage = \n")
    with pytest.raises(RecipeError, match="not valid TOML"):
        load_recipe(bad)
    with pytest.raises(RecipeError, match="no recipe file 'nope.toml'"):
        load_recipe("nope.toml")


def test_extends_changes_only_the_keys_a_recipe_sets(tmp_path):
    """`extends`: a bundled name or a path beside the file; tables merge key by key (nested too), lists and
    scalars replace; chains resolve; a loop is named."""
    (tmp_path / "child.toml").write_text('extends = "tiny_pixel"\ndescription = "child"\n[train]\nlr = 0.5\n'
                                         '[diffusion.net]\nblock_channels = [8]\n')
    (tmp_path / "grandchild.toml").write_text('extends = "child.toml"\n[data]\nsize = 16\n')
    base, child, grand = (load_recipe(n) for n in ("tiny_pixel", tmp_path / "child.toml",
                                                   tmp_path / "grandchild.toml"))
    assert child.train.lr == 0.5 and child.description == "child" and child.options.net["block_channels"] == [8]
    assert {k: v for k, v in child.options.net.items() if k != "block_channels"} == {
        k: v for k, v in base.options.net.items() if k != "block_channels"}  # the rest of the table is kept
    assert child.train.steps == base.train.steps and child.data == base.data
    assert grand.data.size == 16 and grand.train.lr == 0.5 and grand.options.net == child.options.net
    (tmp_path / "a.toml").write_text('extends = "b.toml"\n')
    (tmp_path / "b.toml").write_text('extends = "a.toml"\n')
    with pytest.raises(RecipeError, match="extends loops or runs too deep: a -> b -> a"):
        load_recipe(tmp_path / "a.toml")
    (tmp_path / "c.toml").write_text('extends = "no_such_recipe"\n')
    with pytest.raises(RecipeError, match="no bundled recipe of that name"):
        load_recipe(tmp_path / "c.toml")


def test_lr_schedule_warmup_then_cosine_or_constant():
    cfg = TrainConfig(steps=110, warmup_steps=10, lr_schedule="cosine", min_lr_ratio=0.1)
    assert lr_factor(0, cfg) == pytest.approx(0.1)
    assert lr_factor(9, cfg) == pytest.approx(1.0)
    assert lr_factor(10, cfg) == pytest.approx(1.0)
    assert lr_factor(60, cfg) == pytest.approx(0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * 0.5)))
    assert lr_factor(110, cfg) == pytest.approx(0.1)
    flat = TrainConfig(steps=110, warmup_steps=10, lr_schedule="constant")
    assert [lr_factor(s, flat) for s in (10, 50, 109)] == [1.0, 1.0, 1.0]


def test_cli_bad_recipe_value_exits_2(tmp_path, capsys):
    code = main(["train", "tiny_pixel", "--out", str(tmp_path / "run"), "--set", "train.grad_clip=-1"])
    assert code == 2
    err = capsys.readouterr().err
    assert "[train] grad_clip = -1.0: must be >= 0" in err and len(err.strip().splitlines()) == 1


def test_cli_missing_data_exits_2(tmp_path, capsys):
    code = main(["train", "tiny_pixel", "--out", str(tmp_path / "run"), "--set", "data.dataset='folder'",
                 "--set", f"data.path='{tmp_path / 'no_such_dir'}'"])
    assert code == 2
    assert "no_such_dir': no such directory" in capsys.readouterr().err


def test_cli_missing_first_stage_exits_2(tmp_path, capsys):
    code = main(["train", "tiny_latent", "--out", str(tmp_path / "run"), "--set",
                 f"diffusion.first_stage='{tmp_path / 'no_ae'}'"])
    assert code == 2
    assert "no such folder (train the autoencoder recipe first)" in capsys.readouterr().err


def test_cli_lists_recipes(capsys):
    assert main(["train", "--list"]) == 0
    out = capsys.readouterr().out
    assert "tiny_pixel" in out and "shapes_ldm" in out


def test_folder_dataset_without_captions_is_named(tmp_path, capsys):
    from PIL import Image

    Image.new("RGB", (20, 20), (200, 10, 10)).save(tmp_path / "red.png")
    code = main(["train", "tiny_pixel", "--out", str(tmp_path / "run"), "--set", "data.dataset='folder'",
                 "--set", f"data.path='{tmp_path}'"])
    assert code == 2
    assert "no caption (expected red.txt beside it" in capsys.readouterr().err
