"""The decomposed convs' one base: the geometry is taken once, written under ``"conv"``, read back
from every layout files have used, and a non-zero padding mode is kept, not dropped."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from modelzip.core.errors import ModelError
from modelzip.core.geometry import ConvGeometry
from modelzip.decompose.conv_chain import ConvChain
from modelzip.decompose.cp import CPConv2d
from modelzip.decompose.lowrank import ChannelLowRankConv2d, SpatialLowRankConv2d, _ConvChain
from modelzip.decompose.tt import TTConv2d
from modelzip.decompose.tucker import Tucker2Conv2d

BUILD = {
    ChannelLowRankConv2d: {"rank": 3},
    SpatialLowRankConv2d: {"rank": 3},
    CPConv2d: {"rank": 4},
    Tucker2Conv2d: {"ranks": (3, 2)},
    TTConv2d: {"ranks": (3, 2, 2)},
}


def _rebuilt(layer: ConvChain, spec: dict) -> ConvChain:
    again = type(layer).from_spec(spec)
    again.load_state_dict(layer.state_dict())
    return again


@pytest.mark.parametrize("cls", list(BUILD), ids=lambda c: c.__name__)
@pytest.mark.parametrize("mode", ["zeros", "circular"])
def test_spec_holds_the_geometry_once_and_round_trips(cls: type[ConvChain], mode: str) -> None:
    torch.manual_seed(0)
    dense = nn.Conv2d(6, 8, (3, 5), stride=(1, 2), padding=(1, 2), padding_mode=mode)
    layer = cls.from_dense(dense, **BUILD[cls])
    spec = layer.spec()
    assert spec["conv"] == ConvGeometry(6, 8, (3, 5), (1, 2), (1, 2)).to_dict()
    assert spec["padding_mode"] == mode and "in_channels" not in spec
    x = torch.randn(2, 6, 9, 10)
    with torch.no_grad():
        y = layer(x)
        torch.testing.assert_close(_rebuilt(layer, spec)(x), y)
        dense_again = layer.to_dense()
        assert dense_again.padding_mode == mode
        torch.testing.assert_close(dense_again(x), y, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("cls", list(BUILD), ids=lambda c: c.__name__)
def test_flat_specs_of_older_files_still_load(cls: type[ConvChain]) -> None:
    layer = cls.from_dense(nn.Conv2d(6, 8, 3, padding=1, padding_mode="reflect"), **BUILD[cls])
    spec = layer.spec()
    flat = {k: v for k, v in spec["conv"].items() if k != "groups"}
    old = {**flat, "padding_mode": "reflect", **{k: v for k, v in spec.items() if k != "conv"}}
    again = _rebuilt(layer, old)
    assert again.spec() == spec
    assert (again.kernel_size, again.padding, again.padding_mode) == ((3, 3), (1, 1), "reflect")


def test_the_old_base_name_and_grouped_convs() -> None:
    assert _ConvChain is ConvChain
    with pytest.raises(ModelError, match="grouped"):
        Tucker2Conv2d(ConvGeometry(4, 4, 3, groups=2), (2, 2))
    layer = Tucker2Conv2d(ConvGeometry(4, 6, 3, padding=1), (2, 3), bias=False)
    assert layer.output_bias() is None and layer.core.padding == (1, 1)


def test_a_compressed_piece_inside_a_chain_still_describes_itself() -> None:
    from torch import nn

    from modelzip.core.counting import collect_workloads
    from modelzip.decompose.tucker import Tucker2Conv2d
    from modelzip.prune import MagnitudePruneConfig
    from modelzip.prune.masked import MaskedConv2d

    layer = Tucker2Conv2d.from_dense(nn.Conv2d(8, 16, 3, padding=1), None, ranks=(4, 4))
    layer.core = MaskedConv2d.from_dense(layer.core, MagnitudePruneConfig(sparsity=0.5))
    names = [w.name for w in collect_workloads(nn.Sequential(layer), torch.rand(1, 8, 8, 8))]
    assert names == ["0:first", "0:core", "0:last"]
