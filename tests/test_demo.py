"""`t2i demo --toy` (the fallback of `make demo`) runs and shows every sampler reproducing the toy data."""

import re

import pytest

from t2i.cli import main
from t2i.diffusion.samplers import SAMPLERS

pytestmark = pytest.mark.usefixtures("one_thread")

ROW = re.compile(r"^\s*(\w+) \|\s*(-?\d+\.\d+) \|\s*(-?\d+\.\d+) \|\s*\d+\.\d+$")  # sampler | mean | std | seconds
MLP = re.compile(r"final loss (\d+\.\d+); (\d+\.\d)% of 1000 samples within 0.25 of a data point, "
                 r"(\d+\.\d)% on the \(1, 1\) side")


def test_toy_demo_prints_a_row_per_sampler_matching_the_data(capsys):
    assert main(["demo", "--toy"]) == 0
    out = capsys.readouterr().out
    assert "data ~ N(0.5, 0.3^2)" in out
    rows = {m[1]: (float(m[2]), float(m[3])) for m in map(ROW.match, out.splitlines()) if m}
    assert sorted(rows) == sorted(SAMPLERS)  # one row per sampler, none missing
    for name, (mean, std) in rows.items():
        # 4000 samples, 50 steps: Monte-Carlo error ~0.005 on the mean; the first-order samplers' std
        # is ~15% low at 50 steps (ddpm 0.254), the second-order ones within ~8%
        assert abs(mean - 0.5) < 0.03, (name, mean)
        assert abs(std - 0.3) < 0.06, (name, std)
    # the trained MLP's samples land on its two data points, on both of them
    m = MLP.search(out)
    assert m, out[-500:]
    near, share = float(m[2]), float(m[3])
    assert near >= 70.0 and 25.0 <= share <= 75.0
