"""Privacy settings: what the coordinator asks for, what a site allows, what applies.

The site's policy is a ceiling that always wins: the coordinator can ask for
more privacy than a site demands, never for less. :func:`effective_dp`
resolves the two into the :class:`DPSettings` one site trains with.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, StrictBool, StrictInt, model_validator

from fedeye.privacy.presets import DPPreset, preset_defaults

Accountant = Literal["rdp", "prv"]
MAX_EPSILON = 1000.0  # far above any meaningful budget; infinity would quietly calibrate a tiny noise


class PrivacyPolicy(BaseModel):
    """A site's own privacy policy (its site config's ``[privacy]`` table).

    The guarantee is patient-level: see ``docs/privacy.md``.
    """

    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)  # finite floats only

    require_dp: StrictBool = Field(default=False, description="Train with DP-SGD even if the coordinator does not ask.")
    epsilon: float | None = Field(
        default=None, gt=0, le=MAX_EPSILON, description="Epsilon budget for one run at this site; None = no site limit."
    )
    lifetime_epsilon: float | None = Field(
        default=None,
        gt=0,
        le=MAX_EPSILON,
        description="Epsilon budget over every run on this site's data (its lifetime ledger); None = no lifetime limit.",
    )
    delta: float | None = Field(
        default=None, gt=0, lt=1, description="Delta; default 1/(10 x number of patients), below 1/n."
    )
    max_grad_norm: float | None = Field(
        default=None, gt=0, description="Largest per-patient gradient norm allowed (clipping C)."
    )
    min_noise_multiplier: float | None = Field(
        default=None, gt=0, description="Smallest noise multiplier sigma allowed."
    )
    accountant: Accountant | None = Field(
        default=None, description="Accountant this site trusts; None = the coordinator's choice."
    )
    min_group_size: StrictInt = Field(
        default=10, ge=1, le=1_000_000, description="Metrics on a subgroup smaller than this are never sent."
    )


class PrivacyConfig(BaseModel):
    """Differential privacy requested by the coordinator's run config."""

    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)  # finite floats only

    enabled: StrictBool = Field(
        default=False, description="Ask every site to train with DP-SGD (sample-level, per patient)."
    )
    epsilon: float = Field(default=8.0, gt=0, le=MAX_EPSILON, description="Epsilon budget for the whole run, per site.")
    delta: float | None = Field(
        default=None, gt=0, lt=1, description="Delta; default 1/(10 x the site's number of patients)."
    )
    max_grad_norm: float = Field(default=1.0, gt=0, description="Per-patient gradient clipping norm C.")
    noise_multiplier: float | None = Field(
        default=None,
        gt=0,
        description="Noise multiplier sigma; None = calibrate so the planned rounds spend exactly epsilon.",
    )
    accountant: Accountant = Field(default="rdp", description="Privacy accountant: rdp or prv.")
    client_level: Literal["off", "fixed", "adaptive"] = Field(
        default="off", description="Central DP over site updates (Flower's server-side clipping wrappers)."
    )
    client_noise_multiplier: float = Field(default=1.0, gt=0, description="Noise multiplier of client-level DP.")
    client_clipping_norm: float = Field(default=1.0, gt=0, description="Initial/fixed clipping norm of site updates.")
    preset: DPPreset = Field(
        default="none",
        description="Named DP-SGD settings (fedeye.privacy.presets) filling the values this table leaves out.",
    )
    batch_size: int | None = Field(
        default=None,
        ge=1,
        description="Expected patients per DP-SGD step (the logical batch); None = training.batch_size.",
    )
    local_epochs: int | None = Field(
        default=None, ge=1, description="Local epochs of a DP round; None = training.local_epochs."
    )
    lr: float | None = Field(default=None, gt=0, description="Learning rate of DP-SGD; None = training.lr.")
    max_physical_batch: int | None = Field(
        default=None,
        ge=1,
        description="Largest batch in memory at once; a larger logical batch is split (Opacus BatchMemoryManager).",
    )

    @model_validator(mode="before")
    @classmethod
    def _apply_preset(cls, data: object) -> object:
        """Fill the values the run file leaves out from ``preset``."""
        if isinstance(data, dict) and data.get("preset", "none") != "none":
            from fedeye.privacy.presets import PRESETS

            if isinstance(data["preset"], str) and data["preset"] in PRESETS:  # else the field's own check reports it
                return {**preset_defaults(str(data["preset"])), **data}
        return data


@dataclass(frozen=True)
class DPSettings:
    """The DP-SGD settings one site actually trains with (after the site's ceiling)."""

    epsilon_budget: float
    delta: float
    max_grad_norm: float
    noise_multiplier: float | None  # None: calibrate to spend epsilon_budget over the planned rounds
    min_noise_multiplier: float | None
    accountant: Accountant


def default_delta(num_patients: int) -> float:
    """Delta below 1/n: 1/(10 n), the usual choice for n protected units (patients)."""
    return 1.0 / (10.0 * max(num_patients, 1))


def effective_dp(requested: PrivacyConfig, policy: PrivacyPolicy, *, num_patients: int) -> DPSettings | None:
    """Combine the coordinator's request with the site's ceiling; None = train without DP.

    Every value takes the more private of the two: the smaller epsilon, delta
    and clipping norm, the larger noise multiplier; the site's accountant when it
    names one. A site with ``require_dp``, an ``epsilon`` or a
    ``lifetime_epsilon`` trains with DP whatever the run asks; one run's
    budget never exceeds the site's lifetime budget.
    """
    if not (
        requested.enabled or policy.require_dp or policy.epsilon is not None or policy.lifetime_epsilon is not None
    ):
        return None
    asked = requested.epsilon if requested.enabled else None
    epsilons = [e for e in (asked, policy.epsilon, policy.lifetime_epsilon) if e is not None]
    epsilon = min(epsilons or [requested.epsilon])  # require_dp alone: the run config's (default) budget
    deltas = [d for d in (requested.delta, policy.delta) if d is not None] or [default_delta(num_patients)]
    norms = [n for n in (requested.max_grad_norm, policy.max_grad_norm) if n is not None]
    sigma = requested.noise_multiplier
    if sigma is not None and policy.min_noise_multiplier is not None:
        sigma = max(sigma, policy.min_noise_multiplier)
    return DPSettings(
        epsilon_budget=epsilon,
        delta=min(deltas),
        max_grad_norm=min(norms),
        noise_multiplier=sigma,
        min_noise_multiplier=policy.min_noise_multiplier,
        accountant=policy.accountant or requested.accountant,
    )
