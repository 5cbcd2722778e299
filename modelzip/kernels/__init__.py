"""Real CPU execution of compressed layers: bit-packed binary (XNOR/BWN), bit-serial low-bit,
block-sparse and CSR, PyTorch int8, and tensor-train/hierarchical-Tucker products.

The Numba kernels compile on their first call and are cached on disk, so neither ``import
modelzip`` nor ``import modelzip.kernels`` compiles anything (nor imports Numba: the kernel
modules are imported when a kernel or layer is first used).

Public API: :func:`materialize` and :class:`MaterializeReport` (written in :mod:`modelzip.deploy`,
which chooses among the forms that :mod:`.forms` registers); the kernels live in
:mod:`~modelzip.kernels.binary`, :mod:`~modelzip.kernels.bitserial`,
:mod:`~modelzip.kernels.sparse`, :mod:`~modelzip.kernels.int8` and
:mod:`~modelzip.kernels.factorized`.
"""

from modelzip.deploy import LayerMaterialization, MaterializeReport, materialize

__all__ = ["LayerMaterialization", "MaterializeReport", "materialize"]
