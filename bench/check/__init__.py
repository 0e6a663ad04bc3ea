"""`python -m bench check`: the tests' correctness battery, run on any registered estimator.

exact references (vae_core.exact) → problems (which model and objective an estimator declares)
→ ztest (unbiasedness) and variance (against a declared counterpart) → battery (the verdicts).
"""

from bench.check.battery import DEFAULT_DRAWS, Verdict, check_estimator, failed, table

__all__ = ["DEFAULT_DRAWS", "Verdict", "check_estimator", "failed", "table"]
