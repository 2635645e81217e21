"""diffusers pipeline folders through the user entry points: `t2i.load(FOLDER)` picks the loader by model_index.json's
`_class_name` (Stable Diffusion, its ControlNet pipeline, DeepFloyd IF stage I) and gives the images of the lower-level
converters; `t2i convert IF_I IF_II DST --to t2i` writes one Imagen cascade that loads back; any other class is a
one-line error. Tiny random pipelines built offline (the IF and ControlNet parity tests' builders)."""

from __future__ import annotations

import json

import pytest
import torch

diffusers = pytest.importorskip("diffusers")
pytest.importorskip("transformers")
pytest.importorskip("tokenizers")

from test_io_controlnet import _control, sd_controlnet  # noqa: E402,F401  (sd_controlnet: a fixture)
from test_io_if import write_if_folders  # noqa: E402

from t2i.api import load  # noqa: E402
from t2i.cli import main  # noqa: E402

pytestmark = [pytest.mark.usefixtures("one_thread"), pytest.mark.filterwarnings("ignore::UserWarning")]

PROMPT, SEED = "a red circle", 7


@pytest.fixture(scope="module")
def if_folders(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("if")
    write_if_folders(tmp / "IF-I", tmp / "IF-II")
    return tmp / "IF-I", tmp / "IF-II"


def _same(a: torch.Tensor, b: torch.Tensor) -> None:
    assert a.shape == b.shape and (a - b).abs().max().item() <= 1e-5 and a.std() > 0.01


def test_stable_diffusion_folder(sd_controlnet):
    from t2i.io.diffusers_pipeline import load_diffusers_pipeline
    from t2i.systems.ldm import LDM

    _, sd, _ = sd_controlnet
    system = load(sd)
    assert type(system) is LDM
    _same(system.sample(PROMPT, steps=3, seed=SEED), load_diffusers_pipeline(sd).sample(PROMPT, steps=3, seed=SEED))


def test_controlnet_pipeline_folder(sd_controlnet, tmp_path):
    """A saved StableDiffusionControlNetPipeline: the SD base + its ControlNet, the kind read from the folder name."""
    from t2i.io.diffusers_controlnet import load_diffusers_controlnet
    from t2i.io.diffusers_pipeline import load_diffusers_pipeline
    from t2i.systems import ControlNetSystem

    pipe, sd, cn = sd_controlnet
    pipe.save_pretrained(tmp_path / "sd-controlnet-scribble", safe_serialization=True)
    system = load(tmp_path / "sd-controlnet-scribble")
    assert type(system) is ControlNetSystem and list(system.controlnets) == ["scribble"]
    parts = ControlNetSystem.of(load_diffusers_pipeline(sd), {"scribble": load_diffusers_controlnet(cn)})
    options = dict(control=_control(), steps=3, guidance=5.0, seed=SEED)
    _same(system.sample(PROMPT, **options), parts.sample(PROMPT, **options))


def test_if_stage_one_folder(if_folders):
    from t2i.io.diffusers_if import convert_if
    from t2i.systems.imagen import Imagen

    system = load(if_folders[0])
    assert type(system) is Imagen and len(system.stages) == 1
    _same(system.sample(PROMPT, steps=3, seed=SEED), convert_if(if_folders[0]).sample(PROMPT, steps=3, seed=SEED))


def test_convert_if_stages_one_and_two_round_trips(if_folders, tmp_path):
    from t2i.io.diffusers_if import convert_if
    from t2i.systems.imagen import Imagen

    one, two = if_folders
    assert main(["convert", str(one), str(two), str(tmp_path / "if"), "--to", "t2i"]) == 0
    system = load(tmp_path / "if")
    assert type(system) is Imagen and len(system.stages) == 2
    mine = system.sample(PROMPT, steps=2, seed=SEED)
    assert mine.shape == (1, 3, 32, 32)
    _same(mine, convert_if(one, two).sample(PROMPT, steps=2, seed=SEED))


def _error(capsys, argv: list[str]) -> str:
    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1
    return err


def test_other_pipeline_classes_are_one_line_errors(if_folders, tmp_path, capsys):
    folder = tmp_path / "karlo"
    folder.mkdir()
    (folder / "model_index.json").write_text(json.dumps({"_class_name": "UnCLIPPipeline"}))
    with pytest.raises(ValueError) as e:
        load(folder)
    message = str(e.value)
    assert len(message.splitlines()) == 1 and "UnCLIPPipeline" in message
    assert all(c in message for c in ("StableDiffusionPipeline", "StableDiffusionControlNetPipeline", "IFPipeline"))
    assert "t2i loads" in _error(capsys, ["convert", str(folder), str(tmp_path / "d")])
    one, two = if_folders
    assert "after its IFPipeline folder" in _error(capsys, ["convert", str(two), str(tmp_path / "d")])
    assert "IFSuperResolutionPipeline folder after it" in _error(capsys, ["convert", str(one), str(one),
                                                                          str(tmp_path / "d")])
    assert "--to t2i" in _error(capsys, ["convert", str(one), str(two), str(tmp_path / "d"), "--to", "diffusers"])
