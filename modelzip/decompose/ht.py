"""Hierarchical Tucker (HT) format: dimension trees, the hierarchical SVD, and the HT-linear layer.

Written by hand: no well-kept library implements HT (TensorLy has CP, Tucker and TT only). After
Hackbusch & Kühn, "A new scheme for the tensor representation", 2009, and Grasedyck,
"Hierarchical singular value decomposition of tensors", SIAM J. Matrix Anal. Appl. 2010.

A dimension tree splits the modes ``(1..d)`` into ``(1..k), (k+1..d)`` recursively. Every node
``t`` holds a basis ``U_t`` (``∏_{μ∈t} n_μ × r_t``) of the column space of the matricization
``X^{(t)}``; a leaf stores ``U_t`` itself, an inner node with children ``t₁, t₂`` only the
transfer tensor ``B_t`` (``r_{t₁} × r_{t₂} × r_t``) with ``U_t = (U_{t₁} ⊗ U_{t₂})·B_t``, and the
root has ``r = 1``. Balanced trees (``k = ⌈d/2⌉``) are the default; ``k = 1`` at every node gives
the tensor train (the TT format is the HT format on this degenerate tree).

Parameter count: ``Σ_{leaves} n_t·r_t + Σ_{inner} r_{t₁}·r_{t₂}·r_t``.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Sequence
from typing import Any, Literal

import torch
from torch import nn

from modelzip.core.errors import ModelError
from modelzip.core.module import register_layer
from modelzip.decompose._ops import letters
from modelzip.decompose.factorized import FactorizedLinear, modes_for, weight_tensor
from modelzip.decompose.rank import check_rank, unfold, unfolding_ranks

TreeKind = Literal["balanced", "tt"]


@dataclasses.dataclass(frozen=True)
class Node:
    """A node of a dimension tree: the contiguous modes it covers and its two children."""

    modes: tuple[int, ...]
    left: Node | None = None
    right: Node | None = None

    @property
    def is_leaf(self) -> bool:
        return self.left is None


def dimension_tree(d: int, kind: TreeKind = "balanced") -> Node:
    """The tree over modes ``0..d-1``: halves (``balanced``) or first mode off (``tt``)."""
    if kind not in ("balanced", "tt"):
        raise ModelError(f"dimension tree {kind!r} is not allowed; choose 'balanced' or 'tt'")

    def build(modes: tuple[int, ...]) -> Node:
        if len(modes) == 1:
            return Node(modes)
        k = 1 if kind == "tt" else (len(modes) + 1) // 2
        return Node(modes, build(modes[:k]), build(modes[k:]))

    return build(tuple(range(d)))


def tree_nodes(tree: Node) -> list[Node]:
    """Nodes in pre-order (root first); factor lists and rank lists follow this order."""
    out = [tree]
    if not tree.is_leaf:
        out += tree_nodes(tree.left) + tree_nodes(tree.right)
    return out


def ht_ranks(
    shape: Sequence[int], tree: Node, rank: int | Sequence[int] | None, *, clip: bool = False
) -> list[int]:
    """Ranks of all nodes in pre-order (root 1) from a single rank (capped at each node's largest
    useful rank) or a list for the non-root nodes (checked against it, or capped if ``clip``).

    The cap of node ``t`` is ``min(∏_{μ∈t} n_μ, ∏_{μ∉t} n_μ)``, and for an inner node also
    ``r_{t₁}·r_{t₂}``.
    """
    nodes = tree_nodes(tree)
    total = math.prod(shape)
    caps = {}
    for node in reversed(nodes):  # children before parents
        size = math.prod(shape[m] for m in node.modes)
        caps[node] = min(size, total // size)
    given: dict[Node, int] = {}
    if rank is not None and not isinstance(rank, int):
        if len(rank) != len(nodes) - 1:
            raise ModelError(
                f"HT over {len(shape)} modes has {len(nodes) - 1} non-root nodes; got "
                f"{len(rank)} ranks {list(rank)}"
            )
        given = dict(zip(nodes[1:], rank, strict=False))
    ranks: dict[Node, int] = {}
    for node in reversed(nodes):
        cap = caps[node]
        if not node.is_leaf:
            cap = min(cap, ranks[node.left] * ranks[node.right])
        if node is tree:
            ranks[node] = 1
        elif node in given and clip:
            ranks[node] = max(1, min(int(given[node]), cap))
        elif node in given:
            ranks[node] = check_rank(int(given[node]), cap, f"HT node {list(node.modes)}")
        else:
            ranks[node] = min(int(rank if isinstance(rank, int) else 8), cap)
    return [ranks[n] for n in nodes]


def ht_params(shape: Sequence[int], tree: Node, ranks: Sequence[int]) -> int:
    """Numbers stored by an HT tensor with these node ranks (pre-order)."""
    nodes = tree_nodes(tree)
    r = dict(zip(nodes, ranks, strict=False))
    return sum(
        math.prod(shape[m] for m in n.modes) * r[n] if n.is_leaf else r[n.left] * r[n.right] * r[n]
        for n in nodes
    )


@dataclasses.dataclass
class HTTensor:
    """A tensor in HT format: ``factors[i]`` belongs to ``tree_nodes(tree)[i]`` (leaf: ``n × r``,
    inner: ``r_left × r_right × r``)."""

    shape: tuple[int, ...]
    tree: Node
    factors: list[torch.Tensor]

    @property
    def ranks(self) -> list[int]:
        return [f.shape[-1] for f in self.factors]

    def param_count(self) -> int:
        return sum(f.numel() for f in self.factors)

    def to_tensor(self) -> torch.Tensor:
        """Contract the tree (for tests and small tensors)."""
        nodes = tree_nodes(self.tree)
        factor = dict(zip(nodes, self.factors, strict=False))

        def basis(node: Node) -> torch.Tensor:
            if node.is_leaf:
                return factor[node]
            left, right = basis(node.left), basis(node.right)
            U = torch.einsum("ia,jb,abk->ijk", left, right, factor[node])
            return U.reshape(left.shape[0] * right.shape[0], -1)

        return basis(self.tree).reshape(self.shape)


def ht_svd(
    tensor: torch.Tensor,
    rank: int | Sequence[int] | None = None,
    tree: Node | TreeKind = "balanced",
) -> HTTensor:
    """Hierarchical SVD (Grasedyck 2010, Algorithm 1): every non-root node's basis is the leading
    ``r_t`` left singular vectors of the matricization ``X^{(t)}``; transfer tensors are the
    projections ``B_t = (U_{t₁} ⊗ U_{t₂})ᵀ U_t``. Quasi-optimal: the error is at most
    ``sqrt(2d - 3)`` times the best HT approximation with these ranks, and zero when the
    tensor's hierarchical ranks are at most ``rank``.
    """
    if isinstance(tree, str):
        tree = dimension_tree(tensor.dim(), tree)
    shape = tuple(tensor.shape)
    nodes = tree_nodes(tree)
    ranks = dict(zip(nodes, ht_ranks(shape, tree, rank), strict=False))
    basis: dict[Node, torch.Tensor] = {}
    for node in nodes:
        if node is tree:
            basis[node] = tensor.reshape(-1, 1)
        else:
            U = torch.linalg.svd(unfold(tensor, node.modes), full_matrices=False)[0]
            basis[node] = U[:, : ranks[node]]
    factors = []
    for node in nodes:
        if node.is_leaf:
            factors.append(basis[node])
            continue
        left, right = basis[node.left], basis[node.right]
        U = basis[node].reshape(left.shape[0], right.shape[0], -1)
        factors.append(torch.einsum("ia,jb,ijk->abk", left, right, U))
    return HTTensor(shape, tree, factors)


def tt_to_ht(cores: Sequence[torch.Tensor]) -> HTTensor:
    """The HT tensor on the ``tt`` tree equal to the TT cores ``r_{k-1} × n_k × r_k``: leaves
    ``k < d-1`` are identities, the node ``(k..d-1)`` carries the core ``G_k`` as its transfer
    tensor ``B[i, b, a] = G_k[a, i, b]``, and the last leaf is ``G_{d-1}``."""
    d = len(cores)
    shape = tuple(c.shape[1] for c in cores)
    tree = dimension_tree(d, "tt")
    factors: list[torch.Tensor] = []
    node = tree
    for k in range(d - 1):
        core = cores[k]
        factors.append(core.permute(1, 2, 0))  # n_k × r_k × r_{k-1}: (left leaf, right, self)
        factors.append(torch.eye(shape[k], dtype=core.dtype, device=core.device))
        node = node.right
    factors.append(cores[-1][:, :, 0].T)
    return HTTensor(shape, tree, factors)


@register_layer
class HTLinear(FactorizedLinear):
    """HT-linear layer: ``W`` (``M × N``) as an HT tensor over the paired modes ``(m_k·n_k)``;
    ``y = Wx`` is one contraction of ``x`` with the leaves (``m_k × n_k × r_k``) and transfer
    tensors in the MAC-minimal order, without forming ``W``.

    Parameter count: ``Σ_k m_k·n_k·r_k + Σ_{inner t} r_{t₁}·r_{t₂}·r_t [+ M]``.
    """

    onnx_export = "converter:matmul_factorized"
    executable_forms = ("dense", "two_gemm_cut")
    factor_weights = True

    def _init_factors(self, factory: dict[str, Any], tree: TreeKind = "balanced") -> None:
        self.tree_kind = tree
        self.tree = dimension_tree(self.d, tree)
        nodes = tree_nodes(self.tree)
        if len(self.ranks) != len(nodes):
            raise ModelError(f"HTLinear needs {len(nodes)} node ranks, got {list(self.ranks)}")
        r = dict(zip(nodes, self.ranks, strict=True))
        shapes = [
            (self.out_modes[n.modes[0]], self.in_modes[n.modes[0]], r[n])
            if n.is_leaf
            else (r[n.left], r[n.right], r[n])
            for n in nodes
        ]
        self.ht_factors = nn.ParameterList(nn.Parameter(torch.zeros(*s, **factory)) for s in shapes)

    def factor_spec(self) -> dict[str, Any]:
        return {"tree": self.tree_kind}

    @classmethod
    def from_dense(cls, dense: nn.Linear, config: Any = None, *, ranks: Any = None) -> HTLinear:
        W = dense.weight
        in_modes, out_modes = modes_for(W.shape[1], W.shape[0], config)
        kind = getattr(config, "tree", "balanced")
        tensor = weight_tensor(W.double(), in_modes, out_modes)
        tree = dimension_tree(len(in_modes), kind)
        if ranks is None:
            ranks = ht_rank_request(tensor.shape, tree, config, W.numel(), tensor=tensor)
        ht = ht_svd(tensor, ranks, tree)
        return cls.from_factors(dense, in_modes, out_modes, ht.ranks, ht.factors, tree=kind)

    def factors(self) -> list[torch.Tensor]:
        return list(self.ht_factors)

    def factor_indices(self, n_idx: list[str], m_idx: list[str], skip: str) -> list[str]:
        nodes = tree_nodes(self.tree)
        r = dict(zip(nodes, letters(len(nodes), skip), strict=False))
        return [
            m_idx[n.modes[0]] + n_idx[n.modes[0]] + r[n]
            if n.is_leaf
            else r[n.left] + r[n.right] + r[n]
            for n in nodes
        ]


def ht_rank_request(
    shape: Sequence[int],
    tree: Node,
    config: Any,
    dense_params: int,
    tensor: torch.Tensor | None = None,
) -> Any:
    """The ranks a config asks for: ``ranks`` (non-root nodes, pre-order), ``rank`` (uniform),
    ``rank_fraction`` (largest uniform rank within the budget), ``energy`` (each node's rank
    from the spectrum of ``tensor`` matricized at that node, as the hierarchical SVD truncates
    it) or 8."""
    if getattr(config, "ranks", None) is not None:
        return list(config.ranks)
    energy = getattr(config, "energy", None)
    if energy is not None:
        if tensor is None:
            raise ModelError("HT: the energy rule needs the tensor being decomposed")
        wanted = unfolding_ranks(tensor, [n.modes for n in tree_nodes(tree)[1:]], energy)
        return ht_ranks(shape, tree, wanted, clip=True)[1:]
    if getattr(config, "rank", None) is not None:
        return int(config.rank)
    fraction = getattr(config, "rank_fraction", None)
    if fraction is None:
        return 8
    best = 1
    for r in range(1, max(shape) + 1):
        if ht_params(shape, tree, ht_ranks(shape, tree, r)) > fraction * dense_params:
            break
        best = r
    return best
