"""Example site: Intel TDX workers, 2x H200 (Supermicro) and 8x B200 (Lenovo), plus a KBS host.

Run:   pyinfra inventories/example_tdx.py deploy/site.py
Check: ccfactory check inventories/example_tdx.py
Site-wide data: inventories/group_data/example_tdx.py (every option, documented).
"""

from ccfactory.inventory import validate_before_connect

workers = [
    (
        "gpu-tdx-01.example.net",
        {
            "bmc_vendor": "supermicro",
            "bmc_username": "ADMIN",
            "bmc_address": "10.20.0.11",
            "bmc_password_file": "~/.config/ccfactory/secrets/bmc-gpu-tdx-01",
            "gpu_count": 2,
            "gpu_model": "H200",
        },
    ),
    (
        "gpu-tdx-02.example.net",
        {
            "bmc_vendor": "lenovo",
            "bmc_username": "USERID",
            "bmc_address": "10.20.0.12",
            "bmc_password_file": "~/.config/ccfactory/secrets/bmc-gpu-tdx-02",
            "gpu_count": 8,
            "gpu_model": "B200",
        },
    ),
]
tdx = [name for name, _ in workers]
gpu = [name for name, _ in workers]

kbs = [("kbs-01.example.net", {"tee": "none"})]

validate_before_connect()
