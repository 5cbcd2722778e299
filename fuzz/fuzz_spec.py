"""Coverage-guided fuzzing of accelerator spec YAML (``AcceleratorSpec.load``).

See _harness.py; ``make fuzz`` puts fuzz/ and tests/reliability/ on PYTHONPATH.
"""

from _harness import run
from file_mutations import spec_seed

from modelzip.hardware.spec import AcceleratorSpec

if __name__ == "__main__":
    run(
        "spec",
        ".yaml",
        AcceleratorSpec.load,
        lambda tmp: spec_seed(),
        attack="Coverage-guided accelerator specs",
    )
