"""Coverage-guided fuzzing of ``.npz`` data sets (``load_npz``).

See _harness.py; ``make fuzz`` puts fuzz/ and tests/reliability/ on PYTHONPATH.
"""

from _harness import run
from file_mutations import npz_seed

from modelzip.data.npz import load_npz

if __name__ == "__main__":
    run("npz", ".npz", load_npz, lambda tmp: npz_seed(), attack="Coverage-guided .npz data sets")
