"""Property-based tests (Hypothesis) of issue 20: any value of a request's fields gives either images with
finite pixels or a one-line ValueError, never another exception; any JSON in a system's config gives a
config or a one-line ValueError. Tiny systems, few examples, no deadline: they stay fast."""

import json
import math

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from PIL import Image

from t2i.systems import SYSTEMS, GenerationRequest, LDMConfig
from t2i.systems.base import read_system

pytestmark = pytest.mark.usefixtures("one_thread")

FAST = settings(max_examples=40, deadline=None, suppress_health_check=list(HealthCheck), derandomize=True)

weird = st.one_of(st.none(), st.booleans(), st.integers(-(2**70), 2**70), st.floats(allow_nan=True),
                  st.text(max_size=8), st.binary(max_size=4), st.lists(st.integers(0, 3), max_size=2))
small_ints = st.integers(-2, 40)
texts = st.one_of(st.text(max_size=40),
                  st.sampled_from(["a red circle", "\udcff", "a\x00b", "日本 の 赤い 円", ""]))


def _image(size):
    return Image.fromarray(np.random.default_rng(0).integers(0, 256, (size, size, 3), dtype=np.uint8))


plausible = st.fixed_dictionaries({}, optional={
    "prompts": st.one_of(texts, st.lists(texts, min_size=1, max_size=3)),
    "negative_prompt": texts,
    "num_images": st.integers(1, 3),
    "seed": st.integers(0, 2**64 - 1),
    "steps": st.one_of(st.none(), st.integers(1, 3)),
    "sampler": st.sampled_from(["ddim", "euler", "euler_a", "heun", "dpmpp_2m", "ddpm"]),
    "guidance": st.one_of(st.none(), st.floats(-20, 20), st.sampled_from([1000.0, -1000.0])),
    "threshold": st.one_of(st.none(), st.sampled_from(["none", "static", "dynamic:0.9", "static:0.5"])),
    "width": st.one_of(st.none(), st.sampled_from([8, 16, 32])),
    "height": st.one_of(st.none(), st.sampled_from([8, 16, 32])),
    "strength": st.floats(0.05, 1.0),
    "image": st.one_of(st.none(), st.sampled_from([16, 24]).map(_image)),
    "mask": st.one_of(st.none(), st.sampled_from([0, 255]).map(lambda v: Image.new("L", (16, 16), v))),
    "feather": st.floats(0, 8),
    "batch_size": st.integers(1, 3),
    "precision": st.sampled_from(["fp32", "bf16", "auto"]),
})
NAMES = ["prompts", "negative_prompt", "num_images", "seed", "steps", "sampler", "guidance", "threshold", "width",
         "height", "strength", "image", "mask", "control", "feather", "batch_size", "precision", "guidance_type",
         "guide", "limits", "progress"]
# plausible values, then maybe one field (or two) replaced by anything at all
fields = st.builds(lambda f, bad: {**f, **dict(bad)}, plausible,
                   st.lists(st.tuples(st.sampled_from(NAMES), weird), max_size=2))


def _one_line_value_error(call):
    try:
        return call()
    except ValueError as e:
        assert str(e) and "\n" not in str(e), repr(e)
        return None


@pytest.fixture(scope="module", params=sorted(SYSTEMS))
def system(request):
    torch.manual_seed(0)
    return SYSTEMS[request.param].tiny().eval()


def test_any_request_gives_finite_images_or_one_clear_error(system):
    @FAST
    @given(fields)
    def check(f):
        request = _one_line_value_error(lambda: GenerationRequest(**{"prompts": "a red circle", **f}))
        if request is None:
            return
        if request.steps is None:  # keep the tiny runs short
            request = GenerationRequest.of(request, steps=2)
        images = _one_line_value_error(lambda: system.generate(request))
        if images is not None:
            assert len(images) == len(request.batch)
            assert all(np.isfinite(np.asarray(im, dtype=np.float32)).all() for im in images)

    check()


def _paths(d, prefix=()):
    for k, v in d.items():
        yield prefix + (k,)
        if isinstance(v, dict):
            yield from _paths(v, prefix + (k,))


def test_any_config_json_gives_a_config_or_one_clear_error(tmp_path):
    base = {"system": "ldm", "format": 1, "name": "x", "config": LDMConfig().to_dict()}
    paths = sorted(_paths(base["config"]))
    json_values = st.recursive(st.one_of(st.none(), st.booleans(), st.integers(-3, 70), st.floats(-3, 3),
                                         st.text(max_size=6)),
                               lambda inner: st.one_of(st.lists(inner, max_size=3),
                                                       st.dictionaries(st.text(max_size=4), inner, max_size=2)),
                               max_leaves=4)

    @FAST
    @given(st.sampled_from(paths), json_values)
    def check(path, value):
        meta = json.loads(json.dumps(base))
        node = meta["config"]
        for k in path[:-1]:
            node = node[k]
        node[path[-1]] = value
        (tmp_path / "system.json").write_text(json.dumps(meta))
        _one_line_value_error(lambda: read_system(tmp_path, "ldm", 1, LDMConfig))

    check()


@FAST
@given(st.binary(max_size=64))
def test_any_system_json_bytes_give_one_clear_error(tmp_path_factory, data):
    folder = tmp_path_factory.mktemp("j")
    (folder / "system.json").write_bytes(data)
    assert _one_line_value_error(lambda: read_system(folder, "ldm", 1, LDMConfig)) is None


def test_guidance_limit_is_finite():
    assert math.isfinite(GenerationRequest("x").limits.max_guidance)
