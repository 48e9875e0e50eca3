"""Kuramoto theory for cells with Lorentzian natural frequencies: what :mod:`bench.kuramoto` must reproduce.

For a Lorentzian of half-width ``gamma`` (Kuramoto 1975; Strogatz 2000, "From
Kuramoto to Crawford", Physica D 143, 1-20): ``K_c = 2 gamma``;
``r = sqrt(1 - K_c / K)`` above it and 0 below; the oscillators with
``|omega_i - omega0| <= K r`` lock, a fraction ``(2/pi) atan(K r / gamma)``.

A finite cell has a floor.  For ``n`` independent uniform phases
``E[r^2] = 1/n``, and with ``Z`` close to a complex Gaussian r is Rayleigh
distributed with mean ``sqrt(pi / (4 n))``: 0.28 for 10 sensors, 0.063 for
200.  Coupling below ``K_c`` amplifies the fluctuations: linearised about
incoherence, the free fluctuation of ``Z`` (spectrum: the Lorentzian) passes
through the filter ``(s + gamma) / (s + gamma - K/2)``, and its power rises by
the susceptibility ``1 / (1 - K / K_c)``.  Measured with :mod:`bench.kuramoto`
(cells of 200, ``n <r^2>`` averaged over 20 to 40 cells):

- random frequencies: 1.96 at K_c / 2 over 600 s (predicted 2), 4.09 at
  0.8 K_c (predicted 5), with a wide spread from cell to cell (1.5 to 3.4);
- quantile frequencies: the same only for times well below the recurrence
  time ``2 n / gamma`` of their regular grid (spacing ``pi gamma / n`` at the
  centre; 800 s here): at K_c / 2, 1.8 over the first 50 s, then between 0.87
  and 1.21 in 50 s bins, 1.04 over 1600 s;
- K = 0: 1.00 throughout, either way.

:func:`incoherent_r_bound` is the linear theory's rms r; the time-mean r of a
quantile cell stays below it.
"""

from __future__ import annotations

import math

__all__ = [
    "critical_coupling", "incoherent_r_bound", "incoherent_r_mean", "lock_reach", "locked_fraction_theory",
    "r_theory",
]


def critical_coupling(gamma: float) -> float:
    """K_c = 2 gamma for the Lorentzian of half-width gamma (= 2 / (pi g(0)))."""
    return 2.0 * gamma


def r_theory(coupling: float, gamma: float) -> float:
    """The infinite-n order parameter: sqrt(1 - K_c / K) above K_c, else 0.

    >>> r_theory(2.0, 0.5), r_theory(0.5, 0.5)
    (0.7071067811865476, 0.0)
    """
    kc = critical_coupling(gamma)
    return math.sqrt(1.0 - kc / coupling) if coupling > kc else 0.0


def locked_fraction_theory(coupling: float, r: float, gamma: float) -> float:
    """Share of oscillators with |omega_i - omega0| <= K r: (2/pi) atan(K r / gamma)."""
    return 1.0 if gamma == 0 else 2.0 / math.pi * math.atan(coupling * r / gamma)


def lock_reach(threshold: float) -> float:
    """How far past K r (as a multiple u = |omega_i - omega0| / (K r)) the lock measure of an infinite
    window still reaches ``threshold``.

    A drifting oscillator lingers where its relative phase is slow: over one drift period
    |<e^{i(theta - psi)}>| = u - sqrt(u^2 - 1) (the drift average of Strogatz 2000), which is ``threshold``
    at u = (1 + threshold^2) / (2 threshold).  At 0.9 that is 1.0056: the observed locked
    fraction, (2/pi) atan(u K r / gamma), is the theoretical one within half a percent of K r.

    >>> round(lock_reach(0.9), 4)
    1.0056
    """
    return (1.0 + threshold ** 2) / (2.0 * threshold)


def incoherent_r_mean(n: int) -> float:
    """Mean r of n independent uniform phases (Rayleigh, E[r^2] = 1/n): sqrt(pi / (4 n)).

    >>> round(incoherent_r_mean(10), 2)
    0.28
    """
    return math.sqrt(math.pi / (4.0 * n))


def incoherent_r_bound(n: int, coupling: float, gamma: float) -> float:
    """Bound of the time-mean r of a finite cell below K_c: the rms r of the linear theory,
    sqrt(1 / (n (1 - K / K_c))).

    The mean is below the rms (Jensen).  Random frequencies reach the susceptibility
    1 / (1 - K / K_c) on average (single cells scatter around it); quantile frequencies stay
    below it (module docstring).

    >>> round(incoherent_r_bound(200, 0.5, 0.5), 3)
    0.1
    """
    kc = critical_coupling(gamma)
    if coupling >= kc:
        raise ValueError(f"coupling {coupling} is not below K_c = {kc}")
    return math.sqrt(1.0 / (n * (1.0 - coupling / kc)))
