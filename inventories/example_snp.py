"""Example site: AMD SEV-SNP workers with 8x H100 HGX (Dell), plus a Trustee KBS host.

Run:   pyinfra inventories/example_snp.py deploy/site.py
Check: ccfactory check inventories/example_snp.py   (offline, no connection)

Data comes from three places, most specific first: the per-host dicts below, the
group tuples below (this site only), and inventories/group_data/example_snp.py
(every host of this file; every option is documented there).
"""

from ccfactory.inventory import validate_before_connect

# A worker runs confidential workloads: exactly one TEE group (snp or tdx), and gpu
# when it has GPUs. Secrets are references (env var name or 0600 file), never values.
workers = (
    [
        ("gpu-snp-01.example.net", {"bmc_address": "bmc-gpu-snp-01.example.net", "bmc_password_env": "BMC_GPU_SNP_01"}),
        ("gpu-snp-02.example.net", {"bmc_address": "bmc-gpu-snp-02.example.net", "bmc_password_env": "BMC_GPU_SNP_02"}),
    ],
    {
        "gpu_count": 8,  # the node must have exactly this many GPUs
        "gpu_model": "H100",
        "gpu_cc_mode": "on",  # or "ppcie" for protected PCIe across the HGX board
    },
)
snp = [name for name, _ in workers[0]]
gpu = [name for name, _ in workers[0]]

# The KBS runs on a trusted machine that is not a worker: no TEE, no GPUs.
kbs = [("kbs-01.example.net", {"tee": "none"})]

validate_before_connect()
