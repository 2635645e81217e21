"""Networks a recipe can name, built from the recipe's `net` table (the network's own config fields)."""

from __future__ import annotations

from typing import Any

from torch import nn

from t2i.train.config import RecipeError
from t2i.train.registry import NETWORKS


@NETWORKS.register("unet")
def unet(net: dict[str, Any]) -> nn.Module:
    """The ADM/LDM-family UNet of t2i/nn (called as net(x, t, context=, context_mask=, pooled=))."""
    from t2i.nn.unet import UNet, UNetConfig

    return UNet(UNetConfig.from_dict(dict(net)))


def build_network(name: str, net: dict[str, Any], where: str) -> nn.Module:
    """NETWORKS[name](net); a config the network refuses is reported with the recipe table's name."""
    factory = NETWORKS.get(name)
    try:
        return factory(net)
    except (TypeError, ValueError) as e:
        raise RecipeError(f"{where}: {e}") from None
