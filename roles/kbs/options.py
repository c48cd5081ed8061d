"""The kbs stage's options: its host-data keys, their defaults, meanings and ranges.

``ccfactory.config.HostData`` (the flat schema every inventory is validated against) is
assembled from every stage's options and the shared keys; cross-field rules live there.
Example::

    >>> KbsOptions.model_fields["kbs_nvidia_verifier"].default
    'Remote'
"""

from __future__ import annotations

from typing import Literal

from ccfactory.model import OptionsModel
from ccfactory.model import opt as _opt


class KbsOptions(OptionsModel):
    """Host-data keys of the kbs stage."""

    # --- KBS host (kbs stage)
    kbs_resources: dict[str, str] = _opt(
        {}, "Resources to upload: KBS path `<repo>/<type>/<tag>` -> controller-side file.", "kbs"
    )
    kbs_gpu_resources: list[str] | None = _opt(
        None,
        "Resource paths that also need an affirming GPU attestation; unset: all, when the inventory has GPU workers.",
        "kbs",
    )
    kbs_policy_file: str | None = _opt(
        None, "Controller-side Rego file replacing ccfactory's strict resource policy; refused before upload if it does not compile or releases anything to sample (non-TEE) evidence.", "kbs"
    )
    kbs_attestation_policy_file: str | None = _opt(
        None, "Controller-side Rego file replacing the built-in AS's CPU attestation policy (id `default_cpu`); must compile.", "kbs"
    )
    kbs_reference_values: dict[str, list[str | int | bool] | str | int | bool] = _opt(
        {}, "Reference values for RVPS by name, replacing ccfactory's own per name: a list for names the attestation policy tests with `in` (`snp_launch_measurement`), one value for names it tests with `==` (`snp_smt_enabled`).", "kbs"
    )
    kbs_reference_values_file: str | None = _opt(
        None, "Controller-side TOML/JSON file of reference values (name = [values]); inventory wins per name.", "kbs"
    )
    kbs_tdx_first_use: dict[str, str] = _opt(
        {}, "TDX reference values pinned on first use: TDX worker name -> controller-side file with one EAR token this KBS issued to a guest on it (listing it approves it; docs/reference-values.md).", "kbs"
    )
    kbs_lab_permissive: bool = _opt(
        False, "LAB ONLY: release resources to any attested client, sample evidence included. Refused outside the lab.",
        "kbs",
    )
    kbs_pki_dir: str | None = _opt(
        None,
        "Controller-side directory of the KBS keys and certificates "
        "(default `~/.ccfactory/sites/<kbs host>/pki`, or under `$CCFACTORY_HOME`).",
        "kbs",
    )
    kbs_ca_key_file: str | None = _opt(
        None, "Private key of `kbs_ca_cert`, to issue the KBS HTTPS certificate with your own CA.", "kbs"
    )
    kbs_tls_cert_file: str | None = _opt(
        None, "Your own KBS HTTPS certificate (issued by `kbs_ca_cert`, covering kbs_url).", "kbs"
    )
    kbs_tls_key_file: str | None = _opt(None, "Its private key (mode 0600).", "kbs")
    kbs_admin_key_file: str | None = _opt(
        None, "Your own Ed25519 admin private key (PKCS#8 PEM, 0600); never leaves the controller.", "kbs"
    )
    kbs_nvidia_verifier: Literal["Remote", "Local"] = _opt(
        "Remote", "NVIDIA GPU verifier of the attestation service: `Remote` (NRAS) or `Local`.", "kbs"
    )
