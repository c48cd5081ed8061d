"""The firmware stage's options: its host-data keys, their defaults, meanings and ranges.

``ccfactory.config.HostData`` (the flat schema every inventory is validated against) is
assembled from every stage's options and the shared keys; cross-field rules live there.
Example::

    >>> FirmwareOptions.model_fields["bmc_port"].default
    443
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from pydantic import field_validator

from ccfactory.model import OptionsModel
from ccfactory.model import opt as _opt


# BMC vendors with a packaged BIOS profile (ccfactory/data/bios/); an OEM adds one with
# bios_profile_dirs. Validation asks the profiles themselves; this is for help texts.
KNOWN_BMC_VENDORS = ("dell", "hpe", "lenovo", "supermicro", "generic")


class FirmwareOptions(OptionsModel):
    """Host-data keys of the firmware stage."""

    # --- BMC (firmware stage)
    bmc_vendor: str | None = _opt(
        None, f"BMC/BIOS vendor profile: one of {', '.join(KNOWN_BMC_VENDORS)}.", "bmc"
    )
    bmc_address: str | None = _opt(None, "BMC host name or IP address (Redfish endpoint).", "bmc")
    bmc_port: int = _opt(443, "BMC Redfish HTTPS port.", "bmc", ge=1, le=65535)
    bmc_username: str | None = _opt(None, "BMC user with BIOS and power privileges.", "bmc")
    bmc_password_env: str | None = _opt(
        None,
        "Name of the environment variable on the controller that holds the BMC password. "
        "Never put the password itself in the inventory.",
        "bmc",
    )
    bmc_password_file: str | None = _opt(
        None,
        "Path, on the controller, of a file (mode 0600) holding the BMC password.",
        "bmc",
    )
    bmc_verify_tls: bool = _opt(True, "Verify the BMC's TLS certificate.", "bmc")
    bmc_ca_bundle: str | None = _opt(
        None, "CA bundle (PEM, on the controller) for the BMC's certificate; system CAs if unset.", "bmc"
    )
    bmc_system_id: str | None = _opt(
        None, "Redfish ComputerSystem id; discovered when the BMC manages exactly one system.", "bmc"
    )
    bmc_timeout: float = _opt(30.0, "Seconds to wait for one Redfish request.", "bmc", gt=0, le=600)
    bmc_retries: int = _opt(
        4, "Attempts per Redfish request on 5xx and connection errors (exponential backoff).", "bmc", ge=1, le=20
    )
    bmc_retry_backoff: float = _opt(1.0, "First backoff in seconds between Redfish retries.", "bmc", ge=0, le=120)
    bios_overrides: dict[str, str | int] = _opt(
        {},
        "Per-setting overrides of the vendor BIOS profile, by logical name, e.g. "
        "`{\"min_sev_asid\": 100, \"tsme\": \"Disabled\"}`.",
        "bmc",
    )
    bios_profile_dirs: list[str] = _opt(
        [],
        "Controller-side directories with extra or replacement BIOS profiles (`<vendor>.toml`); "
        "searched before the packaged ones. An OEM adds a vendor here.",
        "bmc",
    )

    @field_validator("bios_overrides", mode="before")
    @classmethod
    def _no_bool_bios_values(cls, value: Any) -> Any:
        # pydantic's lax mode would turn True into 1 (an ASID limit of 1) without a word
        if isinstance(value, Mapping):
            bad = sorted(str(k) for k, v in value.items() if isinstance(v, bool))
            if bad:
                raise ValueError(f"{', '.join(bad)}: a bool is not a BIOS value; give the BIOS value, e.g. 'Enabled' or 100")
        return value
