"""Hypothesis profiles: random examples locally (finds new cases), a fixed derandomized
sequence in CI (`HYPOTHESIS_PROFILE=ci`, set by .ci/run), so a CI run is reproducible and a new
counterexample shows up in a local run first, with its reproduce blob."""

import os

from hypothesis import settings

settings.register_profile("ci", derandomize=True, print_blob=True)
settings.register_profile("dev", print_blob=True)
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "dev"))

# One persistent XLA compilation cache for the whole test session: the xdist workers, the CLI
# subprocesses (which read SPLITWISE_JAX_CACHE, see splitwise_cli.enable_compilation_cache) and
# a program compiled again in the same process (a resumed training run) reuse one compile.
# Results do not depend on it (a cache hit is the same executable); a user's own cache
# directory is left alone. SPLITWISE_JAX_CACHE=off disables it.
_CACHE = os.environ.setdefault(
    "SPLITWISE_JAX_CACHE", os.path.join(os.path.dirname(os.path.dirname(__file__)),
                                        ".pytest_cache", "jax"))
if _CACHE.lower() not in ("off", "0", "none", ""):
    import jax

    os.makedirs(_CACHE, exist_ok=True)
    jax.config.update("jax_compilation_cache_dir", _CACHE)
    jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.0)
