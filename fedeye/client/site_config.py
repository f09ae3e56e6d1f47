"""A site's own configuration: where its data is, its device, its privacy policy.

The coordinator cannot change it: it is read on the site's machine, from the
file the SuperNode's node config names (``site-config``), or, in simulation,
from ``fedeye-site.toml`` inside the simulated site's folder. Example::

    data = "/data/glaucoma-site"
    device = "cuda"
    cache_image_sizes = [224]   # prepare the data cache before joining
    [privacy]
    require_dp = true
    epsilon = 3.0          # budget for one run
    lifetime_epsilon = 10.0  # budget over every run on this data (the site's ledger)
    max_grad_norm = 1.0
    min_group_size = 10
    [approval]
    mode = "policy"        # or "manual" (fedeye site approve) or "open"
    strategies = ["fedavg", "prompt-experts"]
    require_dp = true
    max_rounds = 50
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from fedeye._toml import load_toml
from fedeye.client.approval import ApprovalPolicy
from fedeye.errors import ConfigError
from fedeye.privacy.policy import PrivacyPolicy

SITE_CONFIG_KEY = "site-config"
SITE_CONFIG_FILE = "fedeye-site.toml"


class SiteConfig(BaseModel):
    """One hospital site's settings; its privacy policy is a ceiling the coordinator cannot lift."""

    model_config = ConfigDict(extra="forbid")

    data: Path | None = Field(default=None, description="The site folder (manifest.csv and images).")
    device: Literal["auto", "cpu", "cuda"] = Field(default="auto", description="Where this site trains.")
    audit_log: Path | None = Field(default=None, description="Where the site's audit log of outgoing messages goes.")
    state_dir: Path | None = Field(
        default=None,
        description="The site's state folder (data cache, privacy ledger, "
        "approvals, worker socket, logs); default: state/ beside this file.",
    )
    cache_image_sizes: list[Annotated[int, Field(ge=8)]] = Field(
        default_factory=list,
        description="Image sizes to prepare the data cache at when the site starts (e.g. [224]); "
        "a size not listed is prepared on the first message that needs it.",
    )
    privacy: PrivacyPolicy = Field(default_factory=PrivacyPolicy)
    approval: ApprovalPolicy = Field(default_factory=ApprovalPolicy, description="Which runs this site admits.")


def load_site_config(path: Path) -> SiteConfig:
    """Read and validate a site config file; errors name the file and field."""
    if not path.exists():
        raise ConfigError(f"{path}: site config not found; create it or fix the '{SITE_CONFIG_KEY}' node config")
    raw = load_toml(path)
    try:
        cfg = SiteConfig.model_validate(raw)
    except ValidationError as err:
        fields = "; ".join(f"{'.'.join(map(str, e['loc']))}: {e['msg']} (got {e.get('input')!r})" for e in err.errors())
        raise ConfigError(f"{path}: invalid site config: {fields}") from None
    relative = {
        k: (path.parent / v).resolve()
        for k in ("data", "audit_log", "state_dir")
        if (v := getattr(cfg, k)) is not None and not v.is_absolute()
    }
    if relative:
        cfg = cfg.model_copy(update=relative)
    return cfg


def site_config_for(site_dir: Path | None, node_config: Mapping[str, object]) -> SiteConfig:
    """The node's ``site-config`` file, else ``<site_dir>/fedeye-site.toml``, else defaults."""
    if SITE_CONFIG_KEY in node_config:
        return load_site_config(Path(str(node_config[SITE_CONFIG_KEY])).expanduser())
    if site_dir is not None and (site_dir / SITE_CONFIG_FILE).is_file():
        return load_site_config(site_dir / SITE_CONFIG_FILE)
    return SiteConfig()
