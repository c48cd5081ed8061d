"""CoCo guest-component settings for a site: attestation agent, confidential data hub, initdata.

The guest components (attestation-agent, confidential-data-hub, api-server-rest) ship
inside the Kata guest image; the host only decides their settings. ccfactory renders
them for the site's KBS as *initdata* (``ccfactory.coco.initdata``): the TOML document
Kata hands to the guest through the ``io.katacontainers.config.hypervisor.cc_init_data``
annotation (base64 of its gzip), whose digest the TEE binds into the launch evidence
(SNP ``HOST_DATA``, TDX ``MRCONFIGID``), and as agent kernel parameters for runtimes and
workloads that still use ``agent.aa_kbc_params``.
"""
