"""Method configs of the decomposition family (registered in :mod:`modelzip.decompose.methods`).

Rank fields are shared: ``rank`` (an exact rank), ``rank_fraction`` (keep at most this fraction
of the layer's parameters) and, for SVD-based methods, ``energy`` (keep this fraction of the
squared singular values). At most one may be set; each method documents its default rule.
"""

from __future__ import annotations

import dataclasses
from typing import ClassVar, Literal

from modelzip.core.config import MethodConfig, check_range
from modelzip.core.errors import ConfigError

_RNN_TYPES = ("LSTM", "GRU", "RNN")


def _check_ranks(config: MethodConfig, name: str = "ranks") -> None:
    ranks = getattr(config, name)
    if ranks is None:
        return
    if not ranks:
        raise ConfigError(f"{type(config).__name__}.{name}=[] is empty; give at least one rank")
    for i, r in enumerate(ranks):
        if r < 1:
            raise ConfigError(
                f"{type(config).__name__}.{name}[{i}]={r} is out of range; allowed [1, inf)"
            )


@dataclasses.dataclass(frozen=True)
class RankSelection(MethodConfig):
    """Shared rank fields: ``rank`` (exact) or ``rank_fraction`` (of the layer's parameters)."""

    rank_fields: ClassVar[tuple[str, ...]] = ("rank", "rank_fraction")
    rank: int | None = None
    rank_fraction: float | None = None

    def validate(self) -> None:
        check_range(self, "rank", 1)
        check_range(self, "rank_fraction", 0.0, 1.0, low_open=True)
        given = [f for f in self.rank_fields if getattr(self, f, None) not in (None, False)]
        if len(given) > 1:
            raise ConfigError(
                f"{type(self).__name__}: give at most one of {list(self.rank_fields)}; got {given}"
            )


@dataclasses.dataclass(frozen=True)
class EnergyRankSelection(RankSelection):
    """Rank fields plus ``energy``: the fraction of ``Σσ²`` the truncation keeps."""

    rank_fields: ClassVar[tuple[str, ...]] = ("rank", "rank_fraction", "energy")
    energy: float | None = None

    def validate(self) -> None:
        check_range(self, "energy", 0.0, 1.0, low_open=True)
        super().validate()


@dataclasses.dataclass(frozen=True)
class SVDConfig(EnergyRankSelection):
    """Truncated SVD of Linear weights, and channel decomposition of conv kernels (``kh×kw`` conv
    to ``r`` channels, then ``1×1``). Default rule: ``rank_fraction=0.5``.

    Parameters
    ----------
    fold_singular_values:
        Fold ``S`` into the two factors (``W ≈ W₁H₁``, ``r·(m+n)`` numbers) rather than keep it
        as a vector (``r·(m+n+1)``).
    """

    method: ClassVar[str] = "svd"
    default_types: ClassVar[tuple[str, ...]] = ("Linear", "Conv2d", "Embedding")
    embeddings_as_tables: ClassVar[bool] = True
    fold_singular_values: bool = True


@dataclasses.dataclass(frozen=True)
class SpatialConfig(EnergyRankSelection):
    """Jaderberg et al. 2014 spatial decomposition (``kh×1`` then ``1×kw``) of conv layers.
    Default rule: ``rank_fraction=0.5``."""

    method: ClassVar[str] = "lowrank_spatial"
    default_types: ClassVar[tuple[str, ...]] = ("Conv2d",)


@dataclasses.dataclass(frozen=True)
class Tucker2Config(EnergyRankSelection):
    """Tucker-2 conv (Kim et al. 2016). Ranks: ``ranks`` (output, input), ``rank`` (both, capped
    at each mode), ``rank_fraction``, ``energy`` (per unfolding), or ``vbmf`` — the default when
    nothing else is given.

    Parameters
    ----------
    ranks:
        Exact ``(R_out, R_in)``.
    vbmf:
        Choose the ranks by EVBMF on the two unfoldings.
    n_iter_max:
        HOOI iterations of TensorLy's ``partial_tucker``.
    """

    rank_fields: ClassVar[tuple[str, ...]] = ("rank", "rank_fraction", "energy", "ranks", "vbmf")
    method: ClassVar[str] = "tucker2"
    default_types: ClassVar[tuple[str, ...]] = ("Conv2d",)
    ranks: tuple[int, ...] | None = None
    vbmf: bool = False
    n_iter_max: int = 10

    def validate(self) -> None:
        if self.ranks is not None and len(self.ranks) != 2:
            raise ConfigError(
                f"Tucker2Config.ranks={list(self.ranks)} must have 2 entries (output, input)"
            )
        _check_ranks(self)
        check_range(self, "n_iter_max", 1)
        super().validate()


@dataclasses.dataclass(frozen=True)
class CPConfig(RankSelection):
    """CP conv (Lebedev et al. 2015), CP-ALS from TensorLy. Default rule: ``rank_fraction=0.25``.

    Parameters
    ----------
    n_iter_max:
        ALS iterations.
    init:
        ALS initialisation.
    """

    method: ClassVar[str] = "cp"
    default_types: ClassVar[tuple[str, ...]] = ("Conv2d",)
    n_iter_max: int = 100
    init: Literal["svd", "random"] = "svd"

    def validate(self) -> None:
        check_range(self, "n_iter_max", 1)
        super().validate()


@dataclasses.dataclass(frozen=True)
class _ModesConfig(RankSelection):
    """Rank fields plus the factorization of the layer's sizes into ``d`` modes. ``energy`` keeps
    that fraction of ``Σσ²`` at every unfolding the decomposition truncates (each TT bond, HT
    node or Tucker mode gets its own rank)."""

    rank_fields: ClassVar[tuple[str, ...]] = ("rank", "rank_fraction", "ranks", "energy")
    ranks: tuple[int, ...] | None = None
    energy: float | None = None
    in_modes: tuple[int, ...] | None = None
    out_modes: tuple[int, ...] | None = None
    d: int | None = None

    def validate(self) -> None:
        _check_ranks(self)
        check_range(self, "d", 1)
        check_range(self, "energy", 0.0, 1.0, low_open=True)
        for name in ("in_modes", "out_modes"):
            modes = getattr(self, name)
            if modes is None:
                continue
            if any(m < 1 for m in modes):
                raise ConfigError(f"{type(self).__name__}.{name}={list(modes)}: modes must be ≥ 1")
            if self.d is not None and len(modes) != self.d:
                raise ConfigError(
                    f"{type(self).__name__}.{name}={list(modes)} has {len(modes)} modes "
                    f"but d={self.d}"
                )
        if self.in_modes and self.out_modes and len(self.in_modes) != len(self.out_modes):
            raise ConfigError(
                f"{type(self).__name__}: in_modes {list(self.in_modes)} and out_modes "
                f"{list(self.out_modes)} must have the same length"
            )
        super().validate()

    @property
    def n_modes(self) -> int:
        return self.d or len(self.in_modes or self.out_modes or ()) or 3


@dataclasses.dataclass(frozen=True)
class TTConfig(_ModesConfig):
    """Tensor train: Linear → TT-linear, Conv2d → TT-conv, Embedding → TT embedding.

    ``ranks`` lists the ``d-1`` inner TT ranks (``d`` for a conv: the spatial rank first);
    ``rank`` is one rank for every bond, capped at each bond's limit (default 8). Modes are
    factorized automatically into ``d`` (default 3) balanced factors unless given.
    """

    method: ClassVar[str] = "tt"
    default_types: ClassVar[tuple[str, ...]] = ("Linear", "Conv2d", "Embedding")

    def validate(self) -> None:
        super().validate()
        if self.ranks is not None and len(self.ranks) not in (self.n_modes - 1, self.n_modes):
            raise ConfigError(
                f"TTConfig.ranks={list(self.ranks)} has {len(self.ranks)} entries; {self.n_modes} "
                f"modes need {self.n_modes - 1} (Linear, Embedding) or {self.n_modes} (Conv2d)"
            )


@dataclasses.dataclass(frozen=True)
class HTConfig(_ModesConfig):
    """Hierarchical Tucker linear layer over a dimension tree (``balanced`` or ``tt``).

    ``ranks`` lists the ranks of the non-root tree nodes in pre-order; ``rank`` is one rank for
    every node, capped at each node's limit (default 8).
    """

    method: ClassVar[str] = "ht"
    default_types: ClassVar[tuple[str, ...]] = ("Linear",)
    tree: Literal["balanced", "tt"] = "balanced"

    def validate(self) -> None:
        super().validate()
        if self.ranks is not None and len(self.ranks) != 2 * self.n_modes - 2:
            raise ConfigError(
                f"HTConfig.ranks={list(self.ranks)} has {len(self.ranks)} entries; a tree over "
                f"{self.n_modes} modes has {2 * self.n_modes - 2} non-root nodes"
            )


@dataclasses.dataclass(frozen=True)
class TuckerTensorizedConfig(_ModesConfig):
    """Tensorized Tucker linear layer: ``W`` reshaped to ``m₁n₁ × … × m_dn_d`` and
    Tucker-decomposed. ``ranks`` has one rank per mode; default rule ``rank_fraction=0.1``."""

    method: ClassVar[str] = "tucker_tensorized"
    default_types: ClassVar[tuple[str, ...]] = ("Linear",)

    def validate(self) -> None:
        super().validate()
        if self.ranks is not None and len(self.ranks) != self.n_modes:
            raise ConfigError(
                f"TuckerTensorizedConfig.ranks={list(self.ranks)} has {len(self.ranks)} entries; "
                f"expected one per mode ({self.n_modes})"
            )


@dataclasses.dataclass(frozen=True)
class RNNLowRankConfig(EnergyRankSelection):
    """Low-rank (truncated SVD) input-to-hidden and hidden-to-hidden matrices of LSTM / GRU /
    RNN layers; the rank rule applies to each matrix. Default rule: ``rank_fraction=0.5``."""

    method: ClassVar[str] = "rnn_lowrank"
    default_types: ClassVar[tuple[str, ...]] = _RNN_TYPES
    fold_singular_values: bool = True


@dataclasses.dataclass(frozen=True)
class RNNTTConfig(RankSelection):
    """TT (Tjandra et al. 2017) input-to-hidden and hidden-to-hidden matrices of LSTM / GRU /
    RNN layers, each over ``d`` automatically factorized modes; ``rank`` default 8."""

    method: ClassVar[str] = "rnn_tt"
    default_types: ClassVar[tuple[str, ...]] = _RNN_TYPES
    d: int = 3

    def validate(self) -> None:
        check_range(self, "d", 1)
        super().validate()


@dataclasses.dataclass(frozen=True)
class RNNHTConfig(RNNTTConfig):
    """HT input-to-hidden and hidden-to-hidden matrices of LSTM / GRU / RNN layers."""

    method: ClassVar[str] = "rnn_ht"
    tree: Literal["balanced", "tt"] = "balanced"
