"""Role ``kbs``: a Trustee v0.21.0 Key Broker Service with real keys, HTTPS and restrictive policies.

For hosts in group ``kbs`` (others: nothing to do):

1. Settings from the inventory (``ccfactory.kbs.settings``), checked on the controller: a
   problem fails this host before it is touched.
2. Trustee from the bill of materials (``bom_for``): upstream ships it as a container
   image, which the BOM pins by digest. A site whose BOM does not pin it fails here,
   before the host is touched, with the command that pins it (``ccfactory bom pin
   trustee``). Lab hosts get the lab's stand-in image through the lab BOM overlay.
3. Policies checked with a real Rego engine before anything is uploaded
   (``check_policies``): a resource policy that does not compile or releases anything to
   sample evidence is refused and nothing is changed.
4. Keys and certificates on the controller (``ccfactory.kbs.pki``); the host gets the
   public material plus the service's own HTTPS and token-signing keys. The admin
   private key stays on the controller.
5. The service: podman (the distribution's), the image pulled by digest,
   ``/etc/trustee/kbs-config.toml`` (0640 root), keys (0600 root), state
   ``/var/lib/trustee`` (0700 root), unit ``trustee-kbs.service`` (``podman run`` of the
   image with no capabilities, read-only root, those paths mounted); restarted only when
   one of these changed.
6. From the controller, through the admin API: resource policy (strict: affirming
   SNP/TDX attestation, GPU too for GPU resources; lab-permissive only with
   ``kbs_lab_permissive`` in the lab), attestation policy (release default unless a site
   file overrides), reference values (RVPS: computed from the installed kata-static and each
   SNP worker's settings, read from each worker's SEV firmware, from the site's guest policy,
   the operator's ``kbs_reference_values`` on top; ``docs/reference-values.md``), resources
   (uploaded only when changed).
7. Health, every run: HTTPS with the deployed certificate, the admin API accepts the
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
from pyinfra.facts.server import Home
from pyinfra.operations import apt, files, systemd
from pyinfra.operations.util import any_changed

from ccfactory.bom.fetch import artifact_for_host
from ccfactory import config  # config imports this stage's options: no name is taken from it at import time
from ccfactory.kbs import refvalues
from ccfactory.roles.kbs import collect, tdx_pin
from ccfactory.roles.kbs import operations as kbs_ops
from ccfactory.roles.kbs import render
from ccfactory.kbs.errors import KbsError
from ccfactory.kbs.pki import ensure_pki
from ccfactory.kbs.policy import CPU_TEES, PolicySpec, render_resource_policy
from ccfactory.kbs.rego import RegoError, compile_policy, refuse_unsafe_policy
from ccfactory.kbs.settings import KbsSettings, kbs_settings, server_names
from ccfactory.operations.checks import requirement
from ccfactory.templating import site_overlays

ARTIFACT = "trustee"
STAGING_DIR = ".ccfactory-staging"  # in the SSH user's home: where pyinfra's sudo uploads land first
SUDO = {"_sudo": True}
REFERENCE_SUMMARY = "reference-values.json"  # on the controller, next to the KBS ledger

logger = logging.getLogger("pyinfra")


def _fleet(inventory=None):
    """(kbs_url of every host, CPU TEEs of the workers, whether a worker has GPUs).

    The URLs (which the KBS certificate must cover) are the whole inventory's only when the
    site has one KBS host; with several, each KBS certificate covers its own kbs_url.
    """
    urls, tees, gpus, kbs_hosts = set(), set(), False, 0
    for _other, cfg in collect.configs_of(inventory if inventory is not None else host.inventory, config.node_config):
        if isinstance(cfg, config.InventoryError):
            continue  # validation already reported it
        if isinstance(cfg, Exception):
            raise cfg
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
    for kbs_host, cfg in collect.configs_of(inventory, config.node_config):
        try:
            if isinstance(cfg, Exception):
                raise cfg
            if not cfg.is_kbs:
                continue
            data = kbs_host.data.dict()
            _site_pki(cfg, data, kbs_settings(cfg, data, fleet_urls=tuple(urls)), urls)
        except (config.InventoryError, KbsError, OSError):
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


def check_policies(settings: KbsSettings, policy_text: str, attestation_policy: str | None) -> None:
    """Refuse, before anything is uploaded, a resource policy that does not compile or releases
    to sample evidence (the lab-permissive policy is the one lab exception), and an
    attestation policy that does not compile. Raises ``RegoError``."""
    source = f"kbs_policy_file {settings.policy_file}" if settings.policy_file else "the rendered resource policy"
    if not settings.lab_permissive:
        try:
            refuse_unsafe_policy(policy_text, list(settings.resources))
        except RegoError as exc:
            raise RegoError(f"{source}: {exc}") from None
    if attestation_policy is not None:
        try:
            compile_policy(attestation_policy)
        except RegoError as exc:
            raise RegoError(f"kbs_attestation_policy_file {settings.attestation_policy_file}: {exc}") from None


def site_reference_values(settings: KbsSettings, attestation_policy: str | None, token_ca_cert) -> dict:
    """What RVPS must hold: values computed from what ccfactory installed, read from each SNP
    worker, from the site's guest policy, and the operator's ``kbs_reference_values`` on top
    (``ccfactory.roles.kbs.collect``). Each value, its origin and every pending one are logged (the
    dry-run shows them); a pending value is never guessed."""
    shapes = dict(refvalues.DEFAULT_GPU_SHAPES)
    shapes.update(refvalues.reference_value_shapes(attestation_policy) if attestation_policy
                  else refvalues.DEFAULT_CPU_SHAPES)  # fmt: skip
    pinned, problems = tdx_pin.pinned_values(settings.tdx_first_use, token_ca_cert)
    refs, values = collect.site_reference_values(
        host.inventory, config.node_config, settings.reference_values, shapes,
        log=lambda m: host.log(m, log_func=logger.info), extra=pinned,
    )  # fmt: skip
    refs.pending += problems
    for row in refs.report(settings.reference_values):
        shown = row["value"] if not isinstance(row["value"], str) or len(row["value"]) <= 24 else row["value"][:16] + "..."
        host.log(f"KBS reference value {row['name']} [{row['scope']}] = {shown!r}: {row['origin']}"
                 + (f" ({row['source']})" if row["source"] else ""), log_func=logger.info)  # fmt: skip
    for problem in refs.pending:
        host.log_styled(f"KBS reference value pending: {problem}", fg="yellow", log_func=logger.warning)
    # for the readiness report: every value with its origin, and what is pending (no secrets)
    collect.write_summary(settings.pki_dir / REFERENCE_SUMMARY, refs, settings.reference_values, values)
    return values


def _requirement(name: str, problem: str) -> None:
    requirement(name=name, satisfied=False, problem=problem)


@deploy("KBS")
def apply() -> None:
    cfg = config.node_config(host)
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
            f"trustee: {local}; nothing was changed",
        )
        return

    try:
        policy_text = resource_policy(settings, tees, fleet_gpus)
        attestation_policy = settings.attestation_policy_file.read_text() if settings.attestation_policy_file else None
        check_policies(settings, policy_text, attestation_policy)
    except (KbsError, RegoError, OSError, UnicodeDecodeError) as exc:
        _requirement("KBS policies checked by a Rego engine before upload", f"{exc}; nothing was changed")
        return
    try:
        pki = _site_pki(cfg, data, settings, urls)
    except (KbsError, OSError) as exc:
        _requirement("KBS keys on the controller", str(exc))
        return
    for item in pki.created:
        host.log(f"KBS PKI: made {item} in {pki.root}", log_func=logger.info)

    if artifact.kind != "oci-image":
        _requirement(
            "Trustee from the bill of materials",
            f"trustee: the BOM entry is a {artifact.kind}, but Trustee {artifact.version} ships as a container image; "
            "pin its image: ccfactory bom pin trustee --site-bom FILE; nothing was changed",
        )
        return

    apt.packages(name="podman", packages=["podman"], update=True, cache_time=86400, **SUDO)
    image = kbs_ops.image_pulled(name=f"Trustee image {artifact.version} by digest", reference=artifact.reference, **SUDO)

    files.directory(name="KBS config dir", path=render.CONFIG_DIR, user="root", group="root", mode="0750", **SUDO)
    files.directory(name="KBS keys dir", path=render.KEYS_DIR, user="root", group="root", mode="0750", **SUDO)
    files.directory(name="KBS state dir", path=render.STATE_DIR, user="root", group="root", mode="0700", **SUDO)
    files.directory(name="KBS storage dir", path=render.STORAGE_DIR, user="root", group="root", mode="0700", **SUDO)
    # pyinfra uploads a `_sudo` put to a temporary file first (/tmp by default, at the SSH user's
    # umask) and copies it into place: private keys go through the SSH user's own 0700 directory
    home = host.get_fact(Home)
    staging = f"{home.rstrip('/')}/{STAGING_DIR}" if home and home.startswith("/") else None
    if staging is None:
        _requirement("KBS key staging directory", "the SSH user's home directory is unknown (echo ~ gave "
                     f"{home!r}); private keys are never staged in /tmp; nothing was changed")  # fmt: skip
        return
    files.directory(name="KBS key staging directory (SSH user, 0700)", path=staging, mode="0700")
    pushed = []
    # root-owned: the container's root has no capabilities, so it reads them as their owner
    for src, name, mode in (
        (pki.server_key, "https.key", "0600"),
        (pki.token_key, "token.key", "0600"),
        (pki.server_cert, "https.crt", "0644"),
        (pki.token_chain, "token-chain.pem", "0644"),
        (pki.token_ca_cert, "token-ca.crt", "0644"),
        (pki.admin_pub, "admin.pub", "0644"),
    ):
        private = name.endswith(".key")
        pushed.append(
            files.put(name=f"KBS {name}", src=str(src), dest=f"{render.KEYS_DIR}/{name}", user="root", group="root",
                      mode=mode, **SUDO, **({"_temp_dir": staging} if private else {}))  # fmt: skip
        )
    config_file = files.put(
        name="KBS config",
        src=io.StringIO(
            render.render_kbs_config(
                socket=settings.socket,
                insecure_http=settings.insecure_http,
                nvidia_verifier=settings.nvidia_verifier if fleet_gpus else None,
                overlays=site_overlays(cfg),
            )
        ),
        dest=render.CONFIG_FILE,
        user="root",
        group="root",
        mode="0640",
        **SUDO,
    )
    unit = files.put(
        name="KBS systemd unit",
        src=io.StringIO(render.render_unit(port=settings.port, flavour=f"{artifact.name} {artifact.version}",
                                           image=artifact.reference, overlays=site_overlays(cfg))),  # fmt: skip
        dest=render.UNIT_FILE,
        user="root",
        group="root",
        mode="0644",
        **SUDO,
    )
    kbs_ops.instance_id(name="KBS instance id", path=render.INSTANCE_FILE, user="root", **SUDO)
    systemd.daemon_reload(name="systemd knows the KBS unit", _if=unit.did_change, **SUDO)
    systemd.service(name="KBS running", service=render.SERVICE, running=True, enabled=True, **SUDO)
    systemd.service(
        name="KBS restarted on change",
        service=render.SERVICE,
        running=True,
        restarted=True,
        _if=any_changed(image, config_file, unit, *pushed),
        **SUDO,
    )

    reference_values = site_reference_values(settings, attestation_policy, pki.token_ca_cert)
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
        reference_values=reference_values,
        resources={path: str(src) for path, src in settings.resources.items()},
        expect_denial=not settings.lab_permissive,
    )
    kbs_ops.admin_state(name="KBS policies, reference values and resources", spec=spec, **SUDO)
    kbs_ops.healthy(name="KBS health (HTTPS, admin auth, sample evidence denied)", spec=spec, **SUDO)
    _THIS_RUN[host.name] = (spec, settings, attestation_policy, pki.token_ca_cert)


# this run's kbs stage per KBS host, for register_learned (deploy/site.py runs it after verify)
_THIS_RUN: dict[str, tuple] = {}


@deploy("KBS reference values learned in this run")
def register_learned(on_registered=None) -> None:
    """After the verify stage: register the SNP launch measurements that this run's smoke checks
    made learnable (pending when the kbs stage ran before any guest had run), through the
    same collection and client call as ``apply``. A no-op on a converged site, and when the
    kbs stage did not run in this run (``ccfactory.roles.kbs.collect.learned_reference_values``).
    ``on_registered(state)`` runs after a registration (the site run refreshes its report).

    Example (``ccfactory.deploys.register_learned_reference_values`` does this)::

        register_learned(on_registered=refresh_reference_values)
    """
    run = _THIS_RUN.get(host.name)
    if run is None:
        host.noop("the kbs stage did not run on this host in this run")
        return
    spec, settings, attestation_policy, token_ca_cert = run
    waiting = collect.learnable_pending(settings.pki_dir / REFERENCE_SUMMARY, host.inventory, config.node_config)
    if not waiting:
        host.noop("no reference value waits for this run's smoke checks")
        return
    collect.learned_reference_values(
        name="KBS reference values from this run's smoke checks", spec=spec, waiting=tuple(waiting),
        recompute=lambda: site_reference_values(settings, attestation_policy, token_ca_cert),
        on_registered=on_registered,
    )  # fmt: skip
