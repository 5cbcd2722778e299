"""Joint compression: Deep Compression, combined methods, sensitivity and automatic compression."""

# Combined methods (decomposition + pruning, quantization + sparsity); imported to register them.
from modelzip.joint import factor_prune as _factor_prune
from modelzip.joint import quant_aware_prune as _quant_aware_prune
from modelzip.joint import sparse_quant as _sparse_quant

del _factor_prune, _quant_aware_prune, _sparse_quant

# Deep Compression (importing registers the weight_sharing and deep_compression methods).
from modelzip.joint import deep_compression, weight_sharing  # noqa: E402, F401
