"""Node-side layout of the KBS stage and the files it renders (``roles/kbs/templates/*.j2``).

Layout on the KBS host (Trustee runs as upstream ships it: the BOM's container image, by
digest, under podman; the container's root has no capabilities, so it reads root's 0600
files as their owner and nothing else)::

    image <registry>/<repository>@sha256:<digest>   pulled by digest (podman), never by tag
    /etc/trustee/                    0750 root:root  mounted read-only at the same path
    /etc/trustee/kbs-config.toml     0640 root:root  KBS + built-in AS + RVPS config
    /etc/trustee/keys/               0750 root:root
        https.key, token.key         0600 root:root  the service's own keys
        https.crt, token-chain.pem,  0644 root:root  public material only
        token-ca.crt, admin.pub
    /var/lib/trustee/                0700 root:root  state (resources, policies, reference values), mounted rw
    /etc/systemd/system/trustee-kbs.service          podman run ... <image@digest> /usr/local/bin/kbs --config-file ...

Example::

    >>> text = render_kbs_config(socket="0.0.0.0:8443", insecure_http=False, nvidia_verifier=None)
    >>> import tomllib; tomllib.loads(text)["admin"]["authorization_mode"]
    'AuthenticatedAuthorization'
"""

from __future__ import annotations

import re

from ccfactory.kbs.client import ADMIN_ENDPOINTS, ADMIN_ISSUER, ADMIN_ROLE
from ccfactory.kbs.schema import TRUSTEE_RELEASE
from ccfactory.templating import render

OWNER = "root"
CONTAINER = "ccfactory-kbs"
BINARY = "/usr/local/bin/kbs"  # in the image (trustee@v0.21.0:kbs/docker/Dockerfile:79)
CONFIG_DIR = "/etc/trustee"
CONFIG_FILE = f"{CONFIG_DIR}/kbs-config.toml"
KEYS_DIR = f"{CONFIG_DIR}/keys"
STATE_DIR = "/var/lib/trustee"
STORAGE_DIR = f"{STATE_DIR}/storage"
# inside the storage directory: a wiped storage (the KBS then loads its default policies again,
# trustee@v0.21.0:kbs/src/api_server.rs:104-110) takes the id with it, so the controller's upload
# ledger no longer matches and everything is uploaded again. LocalFs keeps keys in
# <dir_path>/<namespace>/ (deps/key-value-storage/src/local_fs/mod.rs:47-48): this file is in none.
INSTANCE_FILE = f"{STORAGE_DIR}/ccfactory-instance-id"
SERVICE = "trustee-kbs"
UNIT_FILE = f"/etc/systemd/system/{SERVICE}.service"
TOKEN_MINUTES = 5
PAYLOAD_MB = 2
SOURCE = "kbs stage"


def render_kbs_config(
    *,
    socket: str,
    insecure_http: bool,
    nvidia_verifier: str | None,
    keys_dir: str = KEYS_DIR,
    storage_dir: str = STORAGE_DIR,
    overlays: tuple[str, ...] = (),
) -> str:
    """``/etc/trustee/kbs-config.toml`` for Trustee v0.21.0 (``roles/kbs/templates/kbs-config.toml.j2``).

    ``keys_dir``/``storage_dir`` are for tests that run the stand-in from a temporary directory.
    """
    if nvidia_verifier not in (None, "Remote", "Local"):
        raise ValueError(f"nvidia_verifier must be Remote, Local or None, not {nvidia_verifier!r}")
    return (
        render(
            "kbs/kbs-config.toml.j2",
            overlays,
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
            admin_endpoints=ADMIN_ENDPOINTS,  # the toml filter escapes it
            ccfactory_source=SOURCE,
        )
    )


_IMAGE_REF = re.compile(r"[a-z0-9.\-]+(:[0-9]{1,5})?(/[a-z0-9._\-]+)+@sha256:[0-9a-f]{64}")


def render_unit(*, port: int, flavour: str, image: str, overlays: tuple[str, ...] = ()) -> str:
    """The systemd unit (``roles/kbs/templates/trustee-kbs.service.j2``) running ``image`` (``name@sha256:...``).

    An image reference without a digest is refused: nodes run images by digest only.
    """
    if not _IMAGE_REF.fullmatch(image):
        raise ValueError(f"image {image!r} is not <registry>/<repository>@sha256:<digest>; a tag is never run")
    return (
        render(
            "kbs/trustee-kbs.service.j2",
            overlays,
            release=TRUSTEE_RELEASE,
            flavour=flavour,
            container=CONTAINER,
            image=image,
            binary=BINARY,
            config_dir=CONFIG_DIR,
            config_file=CONFIG_FILE,
            state_dir=STATE_DIR,
            privileged_port=port < 1024,
            ccfactory_source=SOURCE,
        )
    )
