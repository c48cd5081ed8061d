# Site-wide data for every host of inventories/example_snp.py (pyinfra puts all hosts
# of an inventory file in a group named after the file). Every ccfactory option is
# listed; commented lines show the default. Role-specific values (GPUs) are in the
# inventory's group tuples, per-host values (BMC address) in its host dicts.
# The reference is the README's "Configuration" section, generated from
# ccfactory.config.HostData. Secrets are never written here: only where to find them.

# --- node -------------------------------------------------------------------------
# tee = None                   # snp | tdx | none; defaults from the snp/tdx group

# --- BMC (firmware stage, Redfish) ------------------------------------------------
bmc_vendor = "dell"            # dell | hpe | lenovo | supermicro | generic
# bmc_address = None           # per host: a host has a BMC when this is set
# bmc_port = 443
bmc_username = "root"
# bmc_password_env = None      # per host: NAME of a controller env var holding the password
# bmc_password_file = None     # or: path of a 0600 file on the controller
# bmc_verify_tls = True        # only the lab may turn this off
# bmc_ca_bundle = None         # PEM of the BMCs' CA on the controller; None = system CAs
# bmc_system_id = None         # discovered when the BMC manages one system
# bmc_timeout = 30.0           # seconds per Redfish request
# bmc_retries = 4              # attempts per Redfish request on 5xx / connection errors
# bmc_retry_backoff = 1.0      # first backoff (s), doubled per retry
bios_overrides = {"min_sev_asid": 100}  # ASIDs 1-99 for SEV-ES/SNP guests; see data/bios/dell.toml
# bios_profile_dirs = []       # controller dirs with extra <vendor>.toml BIOS profiles (OEMs)

# --- GPUs (set per role in the inventory file) ------------------------------------
# gpu_count = 0                # the node must have exactly this many GPUs
# gpu_model = None             # H100 | H200 | GH200 | H800 | H20 | B200 | GB200 | RTX PRO 6000 BSE
# gpu_cc_mode = "on"           # on | devtools | off | ppcie (HGX Hopper multi-GPU only)
# gpu_devtools_acknowledged = False   # required (True) for gpu_cc_mode devtools outside the lab: debug only

# --- KBS --------------------------------------------------------------------------
kbs_url = "https://kbs-01.example.net:8080"
# kbs_ca_cert = None           # controller-side CA of the KBS certificate (the kbs stage makes one)
# KBS host settings (used by the kbs stage on hosts in group kbs):
# kbs_resources = {}           # {"models/llama-3/key": "/secure/keys/llama-3.key"}: uploaded, never printed
# kbs_gpu_resources = None     # resource paths that also need GPU attestation (default: all, with GPU workers)
# kbs_policy_file = None       # your own Rego resource policy (the sample-denial check still runs)
# kbs_attestation_policy_file = None
# kbs_reference_values = {}    # replaces ccfactory's computed values per name: {"snp_tsme_enabled": True}
# kbs_reference_values_file = None
# kbs_tdx_first_use = {}       # TDX values pinned on first use: {"worker-2": "~/tokens/worker-2.jwt"}
# kbs_lab_permissive = False   # lab only; refused anywhere else
# kbs_pki_dir = None           # controller dir of KBS keys (default ~/.ccfactory/sites/<kbs host>/pki)
# kbs_ca_key_file = None       # bring your own CA: its key (with kbs_ca_cert)
# kbs_tls_cert_file = None     # bring your own KBS HTTPS certificate ...
# kbs_tls_key_file = None      # ... and its key (0600)
# kbs_admin_key_file = None    # bring your own Ed25519 admin key (never leaves the controller)
# kbs_nvidia_verifier = "Remote"   # Remote (NRAS) | Local

# --- runtime (containerd, Kata, CoCo guest components) -------------------------------
# runtime_shims = None         # default by TEE and GPUs: kata-qemu-snp (+ kata-qemu-nvidia-gpu-snp)
# runtime_guest_pull = False   # True: guest pull through nydus (needs it pinned in the BOM); False: experimental_force_guest_pull
# runtime_drain = False        # allow replacing Kata while sandboxes run
# runtime_smoke_image = "registry.example/library/busybox@sha256:<64 hex>"   # the attestation check's guest pulls it
# runtime_kubeconfig = None    # apply RuntimeClasses + node labels with kubectl when set
# runtime_output_dir = "~/.local/share/ccfactory/runtime"   # manifests + initdata report
# template_overlay_dirs = []   # site templates shadowing ccfactory's by relative path
# runtime_kata_memory = 2048   # MiB, CPU guests
# runtime_kata_vcpus = 1
# runtime_kata_gpu_memory = 16384
# runtime_kata_gpu_vcpus = 4
# runtime_kata_timeout = 300   # s, CPU guests
# runtime_kata_gpu_timeout = 1200
# runtime_snp_guest_policy = 0x30000
# runtime_snp_debug_acknowledged = False   # required (True) for the policy's DEBUG bit 19 outside the lab
# runtime_tdx_qgs_port = 0
# coco_resource_uris = []      # ["kbs:///models/llama-3/key"]: fetched by the guest's CDH
# runtime_health_timeout = 60.0

# --- reboots ----------------------------------------------------------------------
reboot_batch_size = 1          # hosts rebooting at once (rolling)
reboot_timeout = 1800          # seconds a host may take to come back (bare metal: 10-30 min)
# reboot_graceful_timeout = 300  # s still on the old boot after a reboot request before a BMC ForceRestart

# --- artifacts (BOM) --------------------------------------------------------------
artifact_source = "upstream"   # upstream | mirror | local
# artifact_mirror_url = None   # with mirror: base URL holding the BOM files by name
# artifact_dir = None          # with local: controller directory holding the BOM files
# artifact_cache_dir = "~/.cache/ccfactory/artifacts"
# bom_site_file = "~/.ccfactory/site-bom.toml"   # your pins (Trustee image digest, ...): `ccfactory bom pin trustee --site-bom FILE`

# --- lab (written only by `ccfactory lab up`) ---------------------------------------
# lab = False
# lab_dir = None
