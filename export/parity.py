"""Parity checks between reference (torch/Keras) and ONNX outputs: one ✓/✗ line each, one error for all."""

from __future__ import annotations

import logging
from dataclasses import dataclass, field

import numpy as np

from towerserve.server.core.manifest import ParityCheck
from towerserve.server.core.numerics import cosine_rows

_LOGGER = logging.getLogger(__name__)

# Encoder parity is checked on a seeded sample of up to this many distinct texts per field: every text
# at seed scale (995 descriptions), while at 10⁶ items (~400k distinct descriptions) encoding them all
# with each of four variants would take hours for no more confidence than 2,000 give.
PARITY_TEXTS = 2_000


class ParityError(AssertionError):
    """One or more exported graphs disagree with their reference; the message lists every one."""


def line(check: ParityCheck) -> str:
    """``✓ name: detail``, or ✗ (with "variant dropped" for an optional check) when it failed."""
    mark = "✓" if check.ok else ("✗" if check.required else "✗ (variant dropped)")
    return f"{mark} {check.name}: {check.detail}"


@dataclass
class ParityReport:
    """Collects checks, prints each as it lands, and raises once at the end listing all failures."""

    checks: list[ParityCheck] = field(default_factory=list)
    echo: bool = True

    def _add(self, check: ParityCheck) -> ParityCheck:
        self.checks.append(check)
        if self.echo:
            print(line(check), flush=True)
        return check

    def allclose(
        self, name: str, ref: np.ndarray, got: np.ndarray, atol: float = 1e-4, required: bool = True
    ) -> ParityCheck:
        ref, got = np.asarray(ref, dtype=np.float64), np.asarray(got, dtype=np.float64)
        if ref.shape != got.shape:
            return self._add(
                ParityCheck(name, False, f"shape {got.shape} != reference {ref.shape}", required)
            )
        diff = float(np.abs(ref - got).max()) if ref.size else 0.0
        return self._add(
            ParityCheck(
                name, diff <= atol, f"max |diff| {diff:.2e} (atol {atol:.0e}, {ref.shape[0]} rows)", required
            )
        )

    def cosine(
        self,
        name: str,
        ref: np.ndarray,
        got: np.ndarray,
        min_mean: float,
        required: bool = True,
        min_worst: float = 0.0,
    ) -> ParityCheck:
        if np.shape(ref) != np.shape(got):
            return self._add(
                ParityCheck(name, False, f"shape {np.shape(got)} != reference {np.shape(ref)}", required)
            )
        c = cosine_rows(ref, got)
        ok = float(c.mean()) >= min_mean and float(c.min()) >= min_worst
        gate = f"gate mean >= {min_mean}" + (f", min >= {min_worst}" if min_worst else "")
        return self._add(
            ParityCheck(
                name, ok, f"cosine mean {c.mean():.5f}, min {c.min():.5f} ({gate}, {len(c)} rows)", required
            )
        )

    def skip(self, name: str, why: str) -> None:
        if self.echo:
            print(f"- {name}: skipped ({why})", flush=True)

    def raise_if_failed(self) -> None:
        bad = [c for c in self.checks if c.required and not c.ok]
        if bad:
            raise ParityError(f"{len(bad)} parity check(s) failed:\n" + "\n".join(line(c) for c in bad))


def parity_rows(n: int) -> np.ndarray:
    """The rows of a field's texts the encoder variants are checked on: all, or a seeded sample."""
    if n <= PARITY_TEXTS:
        return np.arange(n)
    return np.sort(np.random.default_rng(0).choice(n, size=PARITY_TEXTS, replace=False))
