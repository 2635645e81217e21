"""Safe weight files: safetensors round trip, pickle refusal, key/shape-checked loading."""

import pickle

import pytest
import torch
from torch import nn

from t2i.io.weights import (
    check_state,
    load_into,
    load_safetensors,
    read_safetensors_metadata,
    save_safetensors,
)


def test_round_trip_with_metadata_and_tied_tensors(tmp_path):
    w = torch.randn(4, 3)
    state = {"a": w, "tied": w, "view": torch.arange(10.0)[2:5], "half": torch.ones(2, dtype=torch.float16)}
    p = save_safetensors(state, tmp_path / "m.safetensors", metadata={"format": "t2i"})
    got = load_safetensors(p)
    assert set(got) == set(state)
    for k in state:
        assert got[k].dtype == state[k].dtype
        assert torch.equal(got[k], state[k])
    assert read_safetensors_metadata(p) == {"format": "t2i"}


def test_save_rejects_bad_suffix_and_metadata(tmp_path):
    with pytest.raises(ValueError, match="safetensors"):
        save_safetensors({"a": torch.zeros(1)}, tmp_path / "m.pt")
    with pytest.raises(ValueError, match="metadata"):
        save_safetensors({"a": torch.zeros(1)}, tmp_path / "m.safetensors", metadata={"n": 3})


class _Boom:
    def __reduce__(self):
        return (exec, ("import pathlib; pathlib.Path('PWNED').write_text('x')",))


@pytest.mark.parametrize("suffix", [".ckpt", ".pt", ".pth", ".bin"])
def test_refuses_pickle_suffix_without_reading(tmp_path, monkeypatch, suffix):
    monkeypatch.chdir(tmp_path)
    p = tmp_path / f"evil{suffix}"
    p.write_bytes(pickle.dumps(_Boom()))
    with pytest.raises(ValueError, match=f"evil{suffix}.*pickle"):
        load_safetensors(p)
    assert not (tmp_path / "PWNED").exists()


def test_refuses_pickle_content_renamed_safetensors(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    raw = tmp_path / "raw.safetensors"
    raw.write_bytes(pickle.dumps(_Boom()))
    with pytest.raises(ValueError, match="raw.safetensors.*pickle"):
        load_safetensors(raw)
    zipped = tmp_path / "zipped.safetensors"
    torch.save({"a": torch.zeros(2)}, zipped)
    with pytest.raises(ValueError, match="zipped.safetensors.*zip"):
        load_safetensors(zipped)
    junk = tmp_path / "junk.safetensors"
    junk.write_bytes(b"hello world, not weights")
    with pytest.raises(ValueError, match="junk.safetensors"):
        load_safetensors(junk)
    assert not (tmp_path / "PWNED").exists()


def test_missing_file_is_clear(tmp_path):
    with pytest.raises(FileNotFoundError, match="nope.safetensors"):
        load_safetensors(tmp_path / "nope.safetensors")
    (tmp_path / "model.bin").write_bytes(pickle.dumps({"a": 1}))
    with pytest.raises(ValueError, match=r"model.safetensors: missing; only the pickle file\(s\) model.bin"):
        load_safetensors(tmp_path / "model.safetensors")


def test_load_into_checks_names_and_shapes():
    m = nn.Sequential(nn.Linear(3, 4), nn.Linear(4, 2))
    good = {k: torch.full_like(v, 0.5) for k, v in m.state_dict().items()}
    assert load_into(m, good) == ([], [])
    assert torch.all(m[0].weight == 0.5)

    bad = dict(good)
    bad["1.weight"] = torch.zeros(2, 5)
    with pytest.raises(ValueError, match=r"unet: .*'1\.weight' has shape \(2, 5\) .* expects \(2, 4\)"):
        load_into(m, bad, where="unet")

    partial = {k: v for k, v in good.items() if k != "0.bias"}
    partial["extra.w"] = torch.zeros(1)
    with pytest.raises(ValueError) as e:
        load_into(m, partial)
    assert "missing keys (1): 0.bias" in str(e.value) and "unexpected keys (1): extra.w" in str(e.value)

    partial["0.weight"] = torch.full((4, 3), 2.0)
    assert load_into(m, partial, strict=False) == (["0.bias"], ["extra.w"])
    assert torch.all(m[0].weight == 2.0)
    # shape errors raise even when not strict, and nothing is half-loaded
    with pytest.raises(ValueError, match="0.weight"):
        load_into(m, {"0.weight": torch.zeros(3, 3), "1.bias": torch.zeros(2)}, strict=False)
    assert torch.all(m[1].bias == 0.5)


def test_check_state_lists_many_missing_keys_compactly():
    expected = {f"k{i}": (1,) for i in range(20)}
    with pytest.raises(ValueError, match=r"missing keys \(20\): k0, .*\(\+12 more\)"):
        check_state(expected, {})


def test_model_folder_round_trip_and_missing_config(tmp_path):
    from t2i.io.weights import read_model_folder, write_model_folder

    write_model_folder(tmp_path / "m", {"a": [1, 2]}, {"w": torch.ones(2)}, "model.safetensors")
    config, state = read_model_folder(tmp_path / "m", "model.safetensors")
    assert config == {"a": [1, 2]} and torch.equal(state["w"], torch.ones(2))
    with pytest.raises(FileNotFoundError, match="no config.json"):
        read_model_folder(tmp_path, "model.safetensors")


def test_sharded_weights_round_trip_and_stay_under_the_limit(tmp_path):
    """Above max_bytes a state is written as shards + NAME.safetensors.index.json (the diffusers / transformers
    layout); load_sharded reads either form back exactly."""
    from t2i.io.weights import index_path, load_sharded, save_sharded

    g = torch.Generator().manual_seed(0)
    state = {f"layer{i}.weight": torch.randn(64, 64, generator=g) for i in range(10)}  # 16 KiB each
    written = save_sharded(state, tmp_path / "unet.safetensors", max_bytes=40 * 1024)
    shards = [p for p in written if p.suffix == ".safetensors"]
    assert len(shards) == 5 and index_path(tmp_path / "unet.safetensors") in written
    assert all(p.stat().st_size < 40 * 1024 + 4096 for p in shards)
    assert not (tmp_path / "unet.safetensors").exists()
    back = load_sharded(tmp_path / "unet.safetensors")
    assert back.keys() == state.keys() and all(torch.equal(back[k], v) for k, v in state.items())
    save_sharded(state, tmp_path / "small.safetensors")  # under the default limit: one plain file
    assert (tmp_path / "small.safetensors").is_file() and load_sharded(tmp_path / "small.safetensors").keys() == state.keys()


def test_saved_weights_are_readable_like_other_files(tmp_path):
    import stat

    import torch

    from t2i.io.weights import save_safetensors

    path = save_safetensors({"w": torch.zeros(2)}, tmp_path / "w.safetensors")
    assert stat.S_IMODE(path.stat().st_mode) == 0o644
