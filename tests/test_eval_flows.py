"""The variation-flow measures (t2i.eval.flows): a perfect and a broken flow score at the two ends, and
`t2i eval flows` runs every flow a tiny vd folder has."""

import json

import pytest
from PIL import Image

from t2i.eval import flows


def test_scenes_caption_and_kinds_agree():
    scenes = flows.held_out_scenes(30)
    assert all(flows.caption_kinds(caption) == kinds for _, caption, kinds in scenes)
    assert all(flows.detected_kinds(image) == kinds for image, _, kinds in scenes[:10])


def test_variations_of_the_source_itself_keep_everything_and_a_blank_keeps_nothing():
    same = flows.variation_score(lambda image, i: [image, image.copy()], n=8, progress=False)
    assert same["kept"] == 1.0 and same["pixel_change"] == 0.0
    blank = flows.variation_score(lambda image, i: [Image.new("RGB", image.size, "white")], n=8, progress=False)
    assert blank["kept"] == 0.0 and blank["pixel_change"] > 0


def test_text_variations_are_scored_by_the_objects_they_name():
    same = flows.text_variation_score(lambda c, i: [c], n=20, progress=False)
    assert same == {**same, "kept": 1.0, "reworded": 0.0}
    wrong = flows.text_variation_score(lambda c, i: ["a circle"], n=20, progress=False)  # no colour: never kept
    assert wrong["kept"] == 0.0 and wrong["reworded"] == 1.0


def test_mix_table_follows_a_flow_that_switches_from_image_to_prompt():
    truth = {caption: image for image, caption, _ in flows.held_out_scenes(4 * 6 + 8)}
    rows = flows.mix_table(lambda prompt, image, m, i: truth[prompt] if m > 0.5 else image, n=6, progress=False)
    assert [r["mix"] for r in rows] == [0.0, 0.25, 0.5, 0.75, 1.0]
    assert rows[0]["image_objects"] == 1.0 and rows[0]["prompt_objects"] == 0.0
    assert rows[-1]["image_objects"] == 0.0 and rows[-1]["prompt_objects"] == 1.0
    assert "| 0.75 | 0.00 | 1.00 |" in flows.format_mix_table(rows)


def test_bad_counts_are_errors():
    with pytest.raises(ValueError, match="at least 1"):
        flows.variation_score(lambda image, i: [image], n=0)


def test_cli_eval_flows_runs_every_flow_of_a_vd_folder(tmp_path, capsys):
    from t2i.cli import main
    from t2i.systems.vd import VersatileDiffusion

    folder = str(VersatileDiffusion.tiny().save(tmp_path / "vd"))
    assert main(["eval", "flows", "--model", folder, "--n", "2", "--json", str(tmp_path / "f.json")]) == 0
    out = json.loads((tmp_path / "f.json").read_text())
    assert {"vary", "vary_text", "mix", "text_vae_exact"} <= set(out) and len(out["mix"]) == 5
    assert 0 <= out["vary"]["kept"] <= 1 and len(out["vary"]["cases"]) == 2
    assert "image variations keeping" in capsys.readouterr().out
    assert main(["eval", "flows", "--model", folder, "--n", "1"]) == 2
