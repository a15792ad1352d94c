"""Hypothesis profiles: random examples locally (finds new cases), a fixed derandomized
sequence in CI (`HYPOTHESIS_PROFILE=ci`, set by .ci/run), so a CI run is reproducible and a new
counterexample shows up in a local run first, with its reproduce blob."""

import os

from hypothesis import settings

settings.register_profile("ci", derandomize=True, print_blob=True)
settings.register_profile("dev", print_blob=True)
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "dev"))
