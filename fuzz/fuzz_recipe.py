"""Coverage-guided fuzzing of recipe YAML (``Recipe.load``).

See _harness.py; ``make fuzz`` puts fuzz/ and tests/reliability/ on PYTHONPATH.
"""

from _harness import run
from file_mutations import RECIPE_SEED

from modelzip.recipe import Recipe

if __name__ == "__main__":
    run("recipe", ".yaml", Recipe.load, lambda tmp: RECIPE_SEED, attack="Coverage-guided recipes")
