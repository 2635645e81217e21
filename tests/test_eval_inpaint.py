"""InpaintEval (t2i/eval/inpaint.py): its cases, its scoring (a perfect, a do-nothing and a sloppy inpainter) and `t2i eval inpaint`."""

from __future__ import annotations

import json

import numpy as np
import pytest
from PIL import Image

from t2i.cli import main
from t2i.eval.detector import detect
from t2i.eval.inpaint import evaluate_inpaint, inpaint_cases, score_case

N = 12

pytestmark = pytest.mark.usefixtures("one_thread")


def test_cases_are_fixed_by_the_seed_and_leave_the_rest_of_the_scene_outside_the_box():
    a, b, c = inpaint_cases(N, seed=0), inpaint_cases(N, seed=0), inpaint_cases(N, seed=1)
    assert [x.scene for x in a] == [x.scene for x in b] and [x.scene for x in a] != [x.scene for x in c]
    for case in a:
        mask = np.asarray(case.mask) > 127
        assert 0.02 < mask.mean() < 0.6
        assert case.prompt.split()[-2:] == [case.target.color, case.target.shape]
        assert (case.target.color, case.target.shape) not in {("purple", "circle"), ("orange", "square"),
                                                              ("green", "star"), ("yellow", "cross")}
        kept = detect(case.image)[1]  # every other object is still there, and nothing of the target's is
        assert sorted((d.color, d.shape) for d in kept) == sorted((o.color, o.shape) for o in case.scene.objects[:-1])


def test_a_perfect_inpainter_scores_one_and_changes_nothing_outside():
    solved = iter([case.solved() for case in inpaint_cases(N)])  # called in case order
    result = evaluate_inpaint(lambda image, mask, prompt, seed: next(solved), n=N, progress=False)
    assert result["region_accuracy"] == 1.0 and result["outside_change_max"] == 0.0


def test_doing_nothing_fails_and_smearing_the_kept_region_is_measured():
    result = evaluate_inpaint(lambda image, mask, prompt, seed: image, n=N, progress=False)
    assert result["region_accuracy"] == 0.0 and result["outside_change_mean"] == 0.0
    case = inpaint_cases(1)[0]
    shifted = Image.fromarray(np.clip(np.asarray(case.solved(), np.int16) + 3, 0, 255).astype(np.uint8))
    row = score_case(case, shifted)
    assert row["passed"] and 2.0 < row["outside_change"] <= 3.0  # a +3 shift, less where clipped at 255
    with pytest.raises(ValueError, match="not 64x64"):
        score_case(case, case.solved().resize((32, 32)))


def test_cli_scores_the_shipped_ldm(tmp_path, capsys):
    out = tmp_path / "inpaint.json"
    assert main(["eval", "inpaint", "--model", "ldm", "--n", "2", "--steps", "2",
                 "--json", str(out)]) == 0
    result = json.loads(out.read_text())
    assert result["cases"] == 2 and len(result["rows"]) == 2 and 0.0 <= result["region_accuracy"] <= 1.0
    assert result["model"]["steps"] == 2 and "region accuracy" in capsys.readouterr().out
    assert main(["eval", "inpaint", "--model", "ldm", "--n", "0"]) == 2
    for bench in ("inpaint", "shapes"):  # ModelSettings checks the sampling options of both benchmarks
        for bad, message in ((["--steps", "0"], "--steps must be at least 1"), (["--sampler", "x"], "unknown sampler")):
            capsys.readouterr()
            assert main(["eval", bench, "--model", "ldm", *bad]) == 2 and message in capsys.readouterr().err
