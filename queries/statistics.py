"""Statistics that SQL cannot compute: the p-value of a rank correlation."""
from __future__ import annotations

import math


def spearman_p_value(rho: float | None, n: int) -> float | None:
    """Two-sided p-value of Spearman's rho, t-approximation with n - 2 degrees of freedom
    (what scipy.stats.spearmanr reports). None when n < 3 or rho is undefined."""
    if rho is None or n < 3 or math.isnan(rho):
        return None
    df = n - 2
    if abs(rho) >= 1.0:
        return 0.0
    # imported here: scipy.special takes ~0.2 s to import and only this function needs it
    from scipy.special import betainc

    t2 = rho * rho * df / (1.0 - rho * rho)
    # P(|T| > t) = I_{df/(df+t^2)}(df/2, 1/2), the regularized incomplete beta function
    return float(betainc(df / 2.0, 0.5, df / (df + t2)))
