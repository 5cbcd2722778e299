"""Coverage-guided fuzzing of sweep files (``SweepConfig.load``): grids whose product is huge,
random spaces with odd bounds and seeds; libFuzzer's ``-timeout`` and ``-rss_limit_mb`` bound
each input's time and memory.

See _harness.py; ``make fuzz`` puts fuzz/ and tests/reliability/ on PYTHONPATH.
"""

import yaml
from _harness import run

from modelzip.sweep import SweepConfig

SEED = yaml.safe_dump(
    {
        "base": {"model": "lenet300", "eval_size": 100},
        "recipe": [{"method": "magnitude_prune", "sparsity": 0.5}],
        "grid": {"magnitude_prune.sparsity": [0.5, 0.8, 0.9], "quantize_weights.bits": [2, 4]},
        "random": {"n": 3, "seed": 0, "space": {"svd.rank_fraction": {"low": 0.1, "high": 0.9}}},
    }
).encode()

if __name__ == "__main__":
    run("grid", ".yaml", SweepConfig.load, lambda tmp: SEED, attack="Coverage-guided sweep files")
