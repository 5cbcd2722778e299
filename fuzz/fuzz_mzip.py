"""Coverage-guided fuzzing of modelzip's compressed files (``modelzip.load``).

See _harness.py; ``make fuzz`` puts fuzz/ and tests/reliability/ on PYTHONPATH.
"""

from _harness import run
from file_mutations import mzip_seed

import modelzip

if __name__ == "__main__":
    run("mzip", ".mzip", modelzip.load, mzip_seed, attack="Coverage-guided .mzip files")
