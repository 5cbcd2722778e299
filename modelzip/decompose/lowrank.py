"""Low-rank matrix decompositions: truncated SVD of a Linear weight, and of a conv kernel
reshaped to a matrix (channel decomposition, and the spatial one of Jaderberg et al. 2014).

By Eckart–Young the rank-``r`` truncated SVD is the best rank-``r`` approximation in the
Frobenius norm, with error ``sqrt(Σ_{i>r} σ_i²)``; folding ``S`` into the factors gives the
full-rank decomposition ``W ≈ W₁H₁`` with the same error.
"""

from __future__ import annotations

from types import SimpleNamespace
from typing import Any, ClassVar

import torch
from torch import nn

from modelzip.core.module import register_layer
from modelzip.core.workload import Workload
from modelzip.decompose._ops import DecomposedLinear, linear_workload
from modelzip.decompose.conv_chain import ConvChain, Pieces, separable
from modelzip.decompose.rank import matrix_rank


def truncated_svd(
    matrix: torch.Tensor, rank: int
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """``U[:, :r], S[:r], Vᵀ[:r]`` of ``matrix``, computed in float64 on its device."""
    U, S, Vh = torch.linalg.svd(matrix.detach().double(), full_matrices=False)
    return U[:, :rank], S[:rank], Vh[:rank]


def _svd_values(matrix: torch.Tensor) -> torch.Tensor:
    return torch.linalg.svdvals(matrix.detach().double())


@register_layer
class LowRankLinear(DecomposedLinear):
    """``y = U·diag(S)·Vᵀ·x + b``: a Linear layer as two thin products.

    The factors are two plain ``nn.Linear`` children, ``first`` (``Vᵀ``, ``n → r``, no bias) and
    ``second`` (``U``, ``r → m``, holding the bias), the layer's
    :attr:`~modelzip.core.module.CompressedModule.compressible_parts`: a later recipe step
    (``[svd, magnitude_prune, quantize_weights]``) selects ``fc1.first`` and ``fc1.second`` and
    compresses each like any Linear. ``S`` (when kept) stays the layer's own vector.

    The state dict and the saved file name a plain factor as before the factors were layers
    (``factor_in``, ``factor_out``, ``bias``; :data:`LEGACY_NAMES`), so files written before
    load unchanged; a compressed factor is stored under its part's name (``second.``).

    Parameters
    ----------
    in_features, out_features:
        ``n`` and ``m`` of the dense ``m × n`` weight.
    rank:
        ``r``.
    bias:
        Whether the layer adds a bias.
    singular_values:
        Keep ``S`` as its own vector (truncated SVD, ``r·(m + n + 1)`` numbers) rather than folded
        into the factors (``W ≈ W₁H₁`` with ``W₁ = U·S^½``, ``H₁ = S^½·Vᵀ``, ``r·(m + n)``).

    Parameter count: ``r·(m + n) [+ r] [+ m]``; MACs per row ``r·(m + n)`` against ``m·n``.
    """

    onnx_export = "traced"
    executable_forms = ("dense",)  # the product W = U·V where two thin GEMMs are slower
    compressible_parts = ("first", "second")
    channel_parts = ("first", "second")
    #: State-dict key of a plain factor (as written before the factors were layers) -> the
    #: parameter's name now.
    LEGACY_NAMES: ClassVar[dict[str, str]] = {
        "factor_in": "first.weight",
        "factor_out": "second.weight",
        "bias": "second.bias",
    }

    def __init__(
        self,
        in_features: int,
        out_features: int,
        rank: int,
        bias: bool = True,
        singular_values: bool = False,
        device: Any = None,
        dtype: Any = None,
    ) -> None:
        super().__init__()
        kw = {"device": device, "dtype": dtype}
        self.in_features, self.out_features, self.rank = in_features, out_features, rank
        self.first = nn.Linear(in_features, rank, bias=False, **kw)
        self.singular_values = nn.Parameter(torch.ones(rank, **kw)) if singular_values else None
        self.second = nn.Linear(rank, out_features, bias=bias, **kw)
        with torch.no_grad():  # filled by from_dense or a load; zeros until then
            for p in (*self.first.parameters(), *self.second.parameters()):
                p.zero_()

    @classmethod
    def from_dense(
        cls,
        dense: nn.Linear,
        config: Any = None,
        *,
        rank: int | None = None,
        singular_values: bool | None = None,
    ) -> LowRankLinear:
        W = dense.weight
        m, n = W.shape
        if singular_values is None:
            singular_values = not getattr(config, "fold_singular_values", True)
        if rank is None:
            per_rank = m + n + (1 if singular_values else 0)
            rank = matrix_rank(config, _svd_values(W), m, n, per_rank=per_rank, what="Linear")
        else:
            matrix_rank(SimpleNamespace(rank=rank), W.new_zeros(1), m, n, what="Linear")
        U, S, Vh = truncated_svd(W, rank)
        layer = cls(n, m, rank, dense.bias is not None, singular_values, W.device, W.dtype)
        with torch.no_grad():
            if singular_values:
                layer.second.weight.copy_(U)
                layer.singular_values.copy_(S)
                layer.first.weight.copy_(Vh)
            else:
                root = S.sqrt()
                layer.second.weight.copy_(U * root)
                layer.first.weight.copy_(root[:, None] * Vh)
            if dense.bias is not None:
                layer.second.bias.copy_(dense.bias)
        return layer

    @classmethod
    def from_spec(cls, spec: dict[str, Any]) -> LowRankLinear:
        rest = dict(spec)
        parts = rest.pop("parts", None)
        layer = cls(**rest)
        if parts is not None:
            layer.install_parts(parts)
        return layer

    def follow_parts(self) -> None:
        """``n`` and ``m`` from the factors after channel pruning resized them (``r`` stays)."""
        self.in_features = self.first.in_features
        self.out_features = self.second.out_features

    def _plain(self, part: str) -> nn.Linear:
        """The factor ``part`` as a plain Linear (a compressed one's dense form)."""
        module = getattr(self, part)
        return module if isinstance(module, nn.Linear) else module.to_dense()

    @property
    def factor_in(self) -> torch.Tensor:
        """``Vᵀ`` (``r × n``; ``S^½·Vᵀ`` when folded), as the first factor computes it."""
        return self._plain("first").weight

    @property
    def factor_out(self) -> torch.Tensor:
        """``U`` (``m × r``; ``U·S^½`` when folded), as the second factor computes it."""
        return self._plain("second").weight

    @property
    def bias(self) -> torch.Tensor | None:  # type: ignore[override]
        return self._plain("second").bias

    def weight(self) -> torch.Tensor:
        """The dense ``m × n`` product (for :meth:`to_dense` and tests only)."""
        inner = self.factor_in
        if self.singular_values is not None:
            inner = self.singular_values[:, None] * inner
        return self.factor_out @ inner

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.first(x)
        if self.singular_values is not None:
            h = h * self.singular_values
        return self.second(h)

    def spec(self) -> dict[str, Any]:
        return {
            "in_features": self.in_features,
            "out_features": self.out_features,
            "rank": self.rank,
            "bias": self._plain("second").bias is not None,
            "singular_values": self.singular_values is not None,
            **self.parts_spec(),
        }

    def legacy_names(self) -> dict[str, str]:
        """:data:`LEGACY_NAMES` of the factors that are plain Linears (a compressed one keeps
        its part's names)."""
        plain = {p for p in self.compressible_parts if type(getattr(self, p)) is nn.Linear}
        return {old: new for old, new in self.LEGACY_NAMES.items() if new.split(".")[0] in plain}

    def state_dict(self, *args: Any, destination: Any = None, prefix: str = "", **kw: Any) -> Any:
        """The state dict, plain factors under their names from before (:data:`LEGACY_NAMES`)."""
        state = super().state_dict(*args, destination=destination, prefix=prefix, **kw)
        renamed = {prefix + new: prefix + old for old, new in self.legacy_names().items()}
        # Re-insert this layer's keys in order (they are the last ones written).
        ours = [k for k in list(state) if k.startswith(prefix)]
        items = [(renamed.get(k, k), state.pop(k)) for k in ours]
        order = {prefix + n: i for i, n in enumerate(("factor_in", "singular_values"))}
        for k, v in sorted(items, key=lambda kv: order.get(kv[0], len(order))):
            state[k] = v
        return state

    def _load_from_state_dict(
        self, state_dict: dict[str, Any], prefix: str, *args: Any, **kwargs: Any
    ) -> None:
        # Before the children load (torch filters their keys after this call): the names of
        # :meth:`state_dict` (and of files written before) go to the factors' parameters.
        for old, new in self.legacy_names().items():
            if prefix + old in state_dict and prefix + new not in state_dict:
                state_dict[prefix + new] = state_dict.pop(prefix + old)
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)

    def workloads_for_rows(self, name: str, rows: int) -> list[Workload]:
        """The two thin products for ``rows`` input vectors."""
        r, n, m = self.rank, self.in_features, self.out_features
        first_params = _count(self.first) + (r if self.singular_values is not None else 0)
        return [
            linear_workload(f"{name}:in", type(self).__name__, rows, n, r, first_params),
            linear_workload(
                f"{name}:out", type(self).__name__, rows, r, m, self.param_count() - first_params
            ),
        ]


def _count(module: nn.Module) -> int:
    counted = getattr(module, "param_count", None)
    return counted() if callable(counted) else sum(p.numel() for p in module.parameters())


# The conv chains' base lived here; code written against this name still finds it.
_ConvChain = ConvChain


@register_layer
class ChannelLowRankConv2d(ConvChain):
    """Channel decomposition: the ``O × (I·kh·kw)`` kernel matrix as a truncated SVD, run as a
    ``kh×kw`` conv to ``r`` channels, then a ``1×1`` conv to ``O`` channels.

    Parameter count: ``r·(I·kh·kw + O) [+ r] [+ O]``; MACs per output pixel ``r·(I·kh·kw + O)``
    against ``O·I·kh·kw``.
    """

    parts = ("first", "second")

    def _init_chain(self, new: Pieces, rank: int, singular_values: bool = False) -> None:
        self.rank = int(rank)
        self.first = new.conv(self.geometry.with_channels(self.in_channels, self.rank))
        self.singular_values = new.tensor(self.rank, fill=1.0) if singular_values else None
        self.second = new.pointwise(self.rank, self.out_channels, self.bias_enabled)

    def chain_spec(self) -> dict[str, Any]:
        return {"rank": self.rank, "singular_values": self.singular_values is not None}

    @classmethod
    def from_dense(
        cls, dense: nn.Conv2d, config: Any = None, *, rank: int | None = None
    ) -> ChannelLowRankConv2d:
        W = dense.weight
        O = W.shape[0]
        matrix = W.reshape(O, -1)
        m, n = matrix.shape
        explicit = not getattr(config, "fold_singular_values", True)
        cfg = SimpleNamespace(rank=rank) if rank is not None else config
        r = matrix_rank(cfg, _svd_values(matrix), m, n, per_rank=m + n + explicit, what="Conv2d")
        U, S, Vh = truncated_svd(matrix, r)
        layer = cls.like(dense, r, singular_values=explicit)
        with torch.no_grad():
            if explicit:
                layer.singular_values.copy_(S)
                first, second = Vh, U
            else:
                first, second = S.sqrt()[:, None] * Vh, U * S.sqrt()
            layer.first.weight.copy_(first.reshape(r, *W.shape[1:]))
            layer.second.weight.copy_(second.reshape(O, r, 1, 1))
        return layer

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.first(x)
        if self.singular_values is not None:
            h = h * self.singular_values[:, None, None]
        return self.second(h)

    def kernel(self) -> torch.Tensor:
        first = self.first.weight.flatten(1)
        if self.singular_values is not None:
            first = self.singular_values[:, None] * first
        product = self.second.weight.flatten(1) @ first
        return product.reshape(self.out_channels, self.in_channels, *self.kernel_size)


@register_layer
class SpatialLowRankConv2d(ConvChain):
    """Spatial decomposition of Jaderberg, Vedaldi, Zisserman 2014 ("Speeding up convolutional
    neural networks with low rank expansions", scheme 2): a ``kh×1`` conv from ``I`` to ``r``
    channels followed by a ``1×kw`` conv from ``r`` to ``O`` channels.

    The kernel ``W[o, i, y, x]`` is read as the ``(I·kh) × (kw·O)`` matrix ``M[(i, y), (x, o)]``;
    its truncated SVD ``M ≈ A·B`` gives the vertical filters (``A``) and the horizontal ones
    (``B``), which is optimal in the Frobenius norm of the kernel (the data-free variant).

    Parameter count: ``r·(I·kh + O·kw) [+ O]``; full rank ``min(I·kh, O·kw)`` is exact.
    """

    parts = ("vertical", "horizontal")

    def _init_chain(self, new: Pieces, rank: int) -> None:
        self.rank = int(rank)
        vertical, horizontal = separable(self.geometry)
        self.vertical = new.conv(vertical.with_channels(self.in_channels, self.rank))
        horizontal = horizontal.with_channels(self.rank, self.out_channels)
        self.horizontal = new.conv(horizontal, self.bias_enabled)

    def chain_spec(self) -> dict[str, Any]:
        return {"rank": self.rank}

    @classmethod
    def from_dense(
        cls, dense: nn.Conv2d, config: Any = None, *, rank: int | None = None
    ) -> SpatialLowRankConv2d:
        W = dense.weight
        O, I, kh, kw = W.shape
        matrix = W.permute(1, 2, 3, 0).reshape(I * kh, kw * O)
        m, n = matrix.shape
        cfg = SimpleNamespace(rank=rank) if rank is not None else config
        r = matrix_rank(cfg, _svd_values(matrix), m, n, what="Conv2d (spatial)")
        U, S, Vh = truncated_svd(matrix, r)
        layer = cls.like(dense, r)
        with torch.no_grad():
            A, B = U * S.sqrt(), S.sqrt()[:, None] * Vh
            layer.vertical.weight.copy_(A.T.reshape(r, I, kh, 1))
            layer.horizontal.weight.copy_(B.reshape(r, kw, O).permute(2, 0, 1).unsqueeze(2))
        return layer

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.horizontal(self.vertical(x))

    def kernel(self) -> torch.Tensor:
        A = self.vertical.weight[..., 0]  # r, I, kh
        B = self.horizontal.weight[:, :, 0, :]  # O, r, kw
        return torch.einsum("riy,orx->oiyx", A, B)
