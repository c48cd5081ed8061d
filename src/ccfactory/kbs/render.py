"""Node-side layout of the KBS stage and the files it renders (``templates/kbs/*.j2``).

Layout on the KBS host::

    /opt/ccfactory/trustee/<version>/        the BOM artifact, unpacked (bin/kbs ...)
    /usr/local/bin/kbs                       -> <version>/bin/kbs (where Trustee's images have it)
    /etc/trustee/                    0750 root:kbs
    /etc/trustee/kbs-config.toml     0640 root:kbs   KBS + built-in AS + RVPS config
    /etc/trustee/keys/               0750 root:kbs
        https.key, token.key         0600 kbs:kbs    the service's own keys
        https.crt, token-chain.pem,  0644 root:root  public material only
        site-ca.crt, admin.pub
    /var/lib/trustee/                0700 kbs:kbs    state (resources, policies, reference values)
    /etc/systemd/system/trustee-kbs.service          runs `kbs --config-file ...` as user kbs

Example::

    >>> text = render_kbs_config(socket="0.0.0.0:8443", insecure_http=False, nvidia_verifier=None)
    >>> import tomllib; tomllib.loads(text)["admin"]["authorization_mode"]
    'AuthenticatedAuthorization'
"""

from __future__ import annotations

from ccfactory.kbs.client import ADMIN_ENDPOINTS, ADMIN_ISSUER, ADMIN_ROLE
from ccfactory.kbs.schema import TRUSTEE_RELEASE
from ccfactory.templating import environment

USER = "kbs"
INSTALL_ROOT = "/opt/ccfactory/trustee"
BINARY = "/usr/local/bin/kbs"
CONFIG_DIR = "/etc/trustee"
CONFIG_FILE = f"{CONFIG_DIR}/kbs-config.toml"
KEYS_DIR = f"{CONFIG_DIR}/keys"
STATE_DIR = "/var/lib/trustee"
STORAGE_DIR = f"{STATE_DIR}/storage"
INSTANCE_FILE = f"{STATE_DIR}/instance-id"
SERVICE = "trustee-kbs"
UNIT_FILE = f"/etc/systemd/system/{SERVICE}.service"
TOKEN_MINUTES = 5
PAYLOAD_MB = 2
SOURCE = "kbs stage"


def install_dir(version: str) -> str:
    return f"{INSTALL_ROOT}/{version}"


def render_kbs_config(
    *,
    socket: str,
    insecure_http: bool,
    nvidia_verifier: str | None,
    keys_dir: str = KEYS_DIR,
    storage_dir: str = STORAGE_DIR,
) -> str:
    """``/etc/trustee/kbs-config.toml`` for Trustee v0.21.0 (``templates/kbs/kbs-config.toml.j2``).

    ``keys_dir``/``storage_dir`` are for tests that run the stand-in from a temporary directory.
    """
    if nvidia_verifier not in (None, "Remote", "Local"):
        raise ValueError(f"nvidia_verifier must be Remote, Local or None, not {nvidia_verifier!r}")
    return (
        environment()
        .get_template("kbs/kbs-config.toml.j2")
        .render(
            release=TRUSTEE_RELEASE,
            socket=socket,
            insecure_http=insecure_http,
            keys_dir=keys_dir,
            storage_dir=storage_dir,
            payload_request_size=PAYLOAD_MB,
            token_minutes=TOKEN_MINUTES,
            nvidia_verifier=nvidia_verifier,
            admin_issuer=ADMIN_ISSUER,
            admin_role=ADMIN_ROLE,
            admin_endpoints=ADMIN_ENDPOINTS.replace("\\", "\\\\"),
            ccfactory_source=SOURCE,
        )
    )


def render_unit(*, port: int, flavour: str) -> str:
    """The systemd unit (``templates/kbs/trustee-kbs.service.j2``)."""
    return (
        environment()
        .get_template("kbs/trustee-kbs.service.j2")
        .render(
            release=TRUSTEE_RELEASE,
            flavour=flavour,
            user=USER,
            binary=BINARY,
            config_file=CONFIG_FILE,
            state_dir=STATE_DIR,
            privileged_port=port < 1024,
            ccfactory_source=SOURCE,
        )
    )
