"""Neural architecture search over the compact blocks.

* :mod:`.space`: the full-network :class:`BlockSpace` and the :class:`HierarchicalSpace`;
* :mod:`.search`: :func:`regularized_evolution` and the :func:`random_search` baseline, both
  checkpointing and resuming;
* :mod:`.darts`: the DARTS-style differentiable supernet (:func:`darts_search`);
* :mod:`.objective`: :class:`SearchObjective`, accuracy with size, measured-latency and
  hardware-model energy/cycle targets (hardware-aware search).

>>> space, objective = BlockSpace(), SearchObjective(max_params=50_000)
>>> result = regularized_evolution(space, lambda a: objective(space.build(a), mnist, arch_key(a)),
...                                population=8, cycles=16, checkpoint="nas.json")
"""

from modelzip.compact.nas.darts import (
    DARTS_OPS,
    DartsResult,
    DartsSupernet,
    build_genotype,
    darts_search,
    genotype_summary,
)
from modelzip.compact.nas.objective import SearchObjective, model_costs
from modelzip.compact.nas.search import SearchResult, random_search, regularized_evolution
from modelzip.compact.nas.space import OPS, BlockSpace, HierarchicalSpace, arch_key, make_op

__all__ = [
    "DARTS_OPS",
    "OPS",
    "BlockSpace",
    "DartsResult",
    "DartsSupernet",
    "HierarchicalSpace",
    "SearchObjective",
    "SearchResult",
    "arch_key",
    "build_genotype",
    "darts_search",
    "genotype_summary",
    "make_op",
    "model_costs",
    "random_search",
    "regularized_evolution",
]
