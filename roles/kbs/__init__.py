"""Role ``kbs``: a Trustee v0.21.0 Key Broker Service with real keys, HTTPS and restrictive policies.

For hosts in group ``kbs`` (others: nothing to do):

1. Settings from the inventory (``ccfactory.kbs.settings``), checked on the controller: a
   problem fails this host before it is touched.
2. Trustee from the bill of materials (``bom_for``): a site whose BOM does not pin it
   fails here with the BOM's reason (today: not pinned, no checksum confirmed), before
   the host is touched. Lab hosts get the lab's stand-in through the lab BOM overlay.
3. Keys and certificates on the controller (``ccfactory.kbs.pki``); the host gets the
   public material plus the service's own HTTPS and token-signing keys. The admin
   private key stays on the controller.
4. The service: user ``kbs``, ``/opt/ccfactory/trustee/<version>``, ``/usr/local/bin/kbs``,
   ``/etc/trustee/kbs-config.toml`` (0640 root:kbs), keys (0600 kbs), state
   ``/var/lib/trustee`` (0700 kbs), unit ``trustee-kbs.service``; restarted only when one
   of these changed.
5. From the controller, through the admin API: resource policy (strict: affirming
   SNP/TDX attestation, GPU too for GPU resources; lab-permissive only with
   ``kbs_lab_permissive`` in the lab), attestation policy (release default unless a site
   file overrides), reference values (RVPS), resources (uploaded only when changed).
6. Health, every run: HTTPS with the deployed certificate, the admin API accepts the
   site key and refuses another, sample evidence is denied by the resource policy.

A second run changes nothing. Config and facts are read once (at prepare time).

Example (deploy file)::

    from ccfactory.roles import kbs
    kbs.apply()
"""

from __future__ import annotations

import io
import logging

from pyinfra import host
from pyinfra.api import deploy
from pyinfra.operations import apt, files, server, systemd
from pyinfra.operations.util import any_changed

from ccfactory.bom.fetch import artifact_for_host
from ccfactory.config import InventoryError, node_config
from ccfactory.kbs import operations as kbs_ops
from ccfactory.kbs import render
from ccfactory.kbs.errors import KbsError
from ccfactory.kbs.pki import ensure_pki
from ccfactory.kbs.policy import CPU_TEES, PolicySpec, render_resource_policy
from ccfactory.kbs.settings import KbsSettings, kbs_settings, server_names
from ccfactory.operations import checks

ARTIFACT = "trustee"
SUDO = {"_sudo": True}
LAB_PACKAGES = ["python3", "python3-cryptography"]  # what the lab's Trustee stand-in runs on

logger = logging.getLogger("pyinfra")


def _fleet(inventory=None):
    """(kbs_url of every host, CPU TEEs of the workers, whether a worker has GPUs).

    The URLs (which the KBS certificate must cover) are the whole inventory's only when the
    site has one KBS host; with several, each KBS certificate covers its own kbs_url.
    """
    urls, tees, gpus, kbs_hosts = set(), set(), False, 0
    for other in inventory if inventory is not None else host.inventory:
        try:
            cfg = node_config(other)
        except InventoryError:
            continue  # validation already reported it
        kbs_hosts += cfg.is_kbs
        if cfg.kbs.url:
            urls.add(cfg.kbs.url)
        if cfg.is_worker:
            if cfg.tee in CPU_TEES:
                tees.add(cfg.tee)
            gpus = gpus or cfg.has_gpus
    return (sorted(urls) if kbs_hosts == 1 else []), tuple(sorted(tees)) or CPU_TEES, gpus


def _site_pki(cfg, data, settings, urls):
    """The KBS host's PKI on the controller (made once, then reused), for its URL and the fleet's."""
    return ensure_pki(
        settings.pki_dir,
        site=cfg.name,
        names=server_names(cfg.name, data),
        kbs_url=settings.url,
        extra_urls=[u for u in urls if u != settings.url],
        sources=settings.sources,
    )


def ensure_site_pki(inventory) -> None:
    """Create (or reuse) every KBS host's keys on the controller, before any host deploys.

    The runtime stage puts the site CA into each worker's initdata; when the CA did not
    exist yet, that race between hosts' deploys would leave the first run incomplete.
    Problems are left for ``apply()`` to report on its host.
    """
    urls, _, _ = _fleet(inventory)
    for kbs_host in inventory:
        try:
            cfg = node_config(kbs_host)
            if not cfg.is_kbs:
                continue
            data = kbs_host.data.dict()
            _site_pki(cfg, data, kbs_settings(cfg, data, fleet_urls=tuple(urls)), urls)
        except (InventoryError, KbsError, OSError):
            continue


def _artifact(cfg):
    """(artifact, local path) of Trustee, or (None, problem)."""
    artifact, local, problem = artifact_for_host(cfg, ARTIFACT, progress=lambda m: host.log(m, log_func=logger.info))
    return (artifact, local) if not problem else (None, problem)


def resource_policy(settings: KbsSettings, tees: tuple[str, ...], fleet_has_gpus: bool) -> str:
    """The resource policy text: the site's file, or ccfactory's strict (or lab-permissive) one."""
    if settings.policy_file is not None:
        return settings.policy_file.read_text()
    if settings.lab_permissive:
        return render_resource_policy(PolicySpec("lab-permissive"), header="ccfactory kbs stage, LAB ONLY")
    if settings.gpu_resources is not None:
        gpu_paths = tuple(f"/{p}" for p in settings.gpu_resources)
    else:
        gpu_paths = ("*",) if fleet_has_gpus else ()
    return render_resource_policy(PolicySpec("strict", cpu_tees=tees, gpu_paths=gpu_paths), header="ccfactory kbs stage")


def _requirement(name: str, problem: str) -> None:
    checks.requirement(name=name, satisfied=False, problem=problem)


@deploy("KBS")
def apply() -> None:
    cfg = node_config(host)
    if not cfg.is_kbs:
        host.noop("not a KBS host")
        return
    urls, tees, fleet_gpus = _fleet()
    data = host.data.dict()
    try:
        settings = kbs_settings(cfg, data, fleet_urls=tuple(urls))
    except KbsError as exc:
        _requirement("KBS settings", f"{exc}")
        return

    artifact, local = _artifact(cfg)
    if artifact is None:
        _requirement(
            "Trustee from the bill of materials",
            f"trustee: {local}; pin it in the BOM (see docs/bom-research.md), nothing was changed",
        )
        return

    try:
        pki = _site_pki(cfg, data, settings, urls)
        policy_text = resource_policy(settings, tees, fleet_gpus)
        attestation_policy = settings.attestation_policy_file.read_text() if settings.attestation_policy_file else None
    except (KbsError, OSError) as exc:
        _requirement("KBS keys and policies on the controller", str(exc))
        return
    for item in pki.created:
        host.log(f"KBS PKI: made {item} in {pki.root}", log_func=logger.info)

    if cfg.lab:
        apt.packages(name="Lab Trustee stand-in runtime", packages=LAB_PACKAGES, update=True, cache_time=86400, **SUDO)

    server.group(name="KBS group", group=render.USER, system=True, **SUDO)
    server.user(
        name="KBS user",
        user=render.USER,
        group=render.USER,
        home=render.STATE_DIR,
        shell="/usr/sbin/nologin",
        system=True,
        ensure_home=False,
        **SUDO,
    )

    install = render.install_dir(artifact.version)
    archive = f"{render.INSTALL_ROOT}/{artifact.filename}"
    files.directory(name="Trustee install root", path=render.INSTALL_ROOT, user="root", group="root", mode="0755", **SUDO)
    files.put(name="Push Trustee", src=local, dest=archive, user="root", group="root", mode="0644", **SUDO)
    unpacked = kbs_ops.trustee_unpacked(
        name=f"Unpack Trustee {artifact.version}", archive=archive, dest=install, sha256=artifact.sha256, **SUDO
    )
    binary = files.link(name="kbs on the PATH", path=render.BINARY, target=f"{install}/bin/kbs", **SUDO)

    files.directory(name="KBS config dir", path=render.CONFIG_DIR, user="root", group=render.USER, mode="0750", **SUDO)
    files.directory(name="KBS keys dir", path=render.KEYS_DIR, user="root", group=render.USER, mode="0750", **SUDO)
    files.directory(name="KBS state dir", path=render.STATE_DIR, user=render.USER, group=render.USER, mode="0700", **SUDO)
    pushed = []
    for src, name, owner, mode in (
        (pki.server_key, "https.key", render.USER, "0600"),
        (pki.token_key, "token.key", render.USER, "0600"),
        (pki.server_cert, "https.crt", "root", "0644"),
        (pki.token_chain, "token-chain.pem", "root", "0644"),
        (pki.token_ca_cert, "site-ca.crt", "root", "0644"),
        (pki.admin_pub, "admin.pub", "root", "0644"),
    ):
        pushed.append(
            files.put(name=f"KBS {name}", src=str(src), dest=f"{render.KEYS_DIR}/{name}", user=owner, group=owner,
                      mode=mode, **SUDO)  # fmt: skip
        )
    config = files.put(
        name="KBS config",
        src=io.StringIO(
            render.render_kbs_config(
                socket=settings.socket,
                insecure_http=settings.insecure_http,
                nvidia_verifier=settings.nvidia_verifier if fleet_gpus else None,
            )
        ),
        dest=render.CONFIG_FILE,
        user="root",
        group=render.USER,
        mode="0640",
        **SUDO,
    )
    unit = files.put(
        name="KBS systemd unit",
        src=io.StringIO(render.render_unit(port=settings.port, flavour=f"{artifact.name} {artifact.version}")),
        dest=render.UNIT_FILE,
        user="root",
        group="root",
        mode="0644",
        **SUDO,
    )
    kbs_ops.instance_id(name="KBS instance id", path=render.INSTANCE_FILE, user=render.USER, **SUDO)
    systemd.daemon_reload(name="systemd knows the KBS unit", _if=unit.did_change, **SUDO)
    systemd.service(name="KBS running", service=render.SERVICE, running=True, enabled=True, **SUDO)
    systemd.service(
        name="KBS restarted on change",
        service=render.SERVICE,
        running=True,
        restarted=True,
        _if=any_changed(unpacked, binary, config, unit, *pushed),
        **SUDO,
    )

    spec = kbs_ops.AdminSpec(
        url=settings.url,
        ca_cert=str(pki.tls_ca_cert),
        admin_key=str(pki.admin_key),
        server_cert=str(pki.server_cert),
        ledger=str(settings.pki_dir / "kbs-ledger.json"),
        instance_file=render.INSTANCE_FILE,
        lab=cfg.lab,
        resource_policy=policy_text,
        attestation_policy=attestation_policy,
        reference_values=dict(settings.reference_values),
        resources={path: str(src) for path, src in settings.resources.items()},
        expect_denial=not settings.lab_permissive,
    )
    kbs_ops.admin_state(name="KBS policies, reference values and resources", spec=spec, **SUDO)
    kbs_ops.healthy(name="KBS health (HTTPS, admin auth, sample evidence denied)", spec=spec, **SUDO)
