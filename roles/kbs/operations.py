"""pyinfra operations of the KBS stage.

Two kinds:

* on the KBS host: ``image_pulled`` (the BOM's Trustee image, by digest, into podman's
  store) and ``instance_id`` (a random id that names this KBS's storage, so the controller's
  upload ledger knows when the KBS lost its state);
* on the controller, for the KBS host: ``admin_state`` (resource policy, attestation
  policy, reference values, resources, through the admin API) and ``healthy`` (HTTPS with
  the expected certificate, admin authentication, the sample-denial check). They talk to
  the KBS when pyinfra *executes* (after the service was (re)started); at prepare time
  they only predict, from what the KBS answers then. ``healthy`` changes nothing and
  runs every time; a failure fails this host with the reason.

Example::

    kbs_ops.admin_state(name="KBS policies and resources", spec=spec)
    kbs_ops.healthy(name="KBS health", spec=spec)
"""

from __future__ import annotations

import hashlib
import logging
import shlex
import time
from dataclasses import dataclass, field
from pathlib import Path

from cryptography.hazmat.primitives.serialization import Encoding
from pyinfra import host
from pyinfra.api import FunctionCommand, StringCommand, operation
from pyinfra.facts.files import FileContents

from ccfactory.kbs.client import ATTESTATION_POLICY_IDS, KbsClient, Ledger
from ccfactory.kbs.errors import HealthCheckFailed, KbsError, KbsUnreachable
from ccfactory.kbs.rego import RegoError, refuse_unsafe_policy
from ccfactory.kbs.pki import load_cert
from ccfactory.roles.kbs.facts import PodmanImage

logger = logging.getLogger("pyinfra")
READY_TIMEOUT = 60.0


@dataclass(frozen=True)
class AdminSpec:
    """What the controller wants the KBS to hold, and how to reach it (no secrets inside)."""

    url: str
    ca_cert: str
    admin_key: str  # controller-side path; the key never leaves the controller
    server_cert: str  # the certificate the KBS must present
    ledger: str
    instance_file: str  # on the KBS host
    lab: bool
    resource_policy: str
    attestation_policy: str | None = None
    reference_values: dict = field(default_factory=dict)
    resources: dict = field(default_factory=dict)  # path -> controller-side file
    expect_denial: bool = True

    def client(self) -> KbsClient:
        return KbsClient(self.url, ca_cert=self.ca_cert, admin_key=self.admin_key, lab=self.lab)


def _fail(state, host, problem: str) -> bool:  # noqa: ARG001 - pyinfra passes state and host
    host.log_styled(f"ccfactory: {problem}", fg="red", log_func=logger.error)
    return False


def _instance(spec: AdminSpec) -> str:
    lines = host.get_fact(FileContents, path=spec.instance_file)
    return lines[0].strip() if lines else ""


def wait_ready(client: KbsClient, timeout: float = READY_TIMEOUT) -> None:
    """Until the KBS answers ``GET /healthz`` with 200 (``trustee@v0.21.0:kbs/src/api_server.rs:187``)."""
    deadline = time.monotonic() + timeout
    last = ""
    while True:
        try:
            resp = client.request("GET", "/healthz")
            if resp.status == 200:
                return
            last = f"GET /healthz answered {resp.status}"
        except KbsUnreachable as exc:
            last = str(exc)
        if time.monotonic() > deadline:
            raise KbsUnreachable(f"{client.url}: not ready after {timeout:.0f} s ({last})")
        time.sleep(1)


def plan_admin_state(spec: AdminSpec, client: KbsClient, ledger: Ledger) -> list[str]:
    """What ``apply_admin_state`` would change (names only, never content)."""
    todo = []
    if not client.resource_policy_in_place(spec.resource_policy, ledger):
        todo.append("resource policy")
    if spec.attestation_policy is not None:
        policy_id = ATTESTATION_POLICY_IDS["cpu"]
        if ledger.digest(f"attestation-policy/{policy_id}") != hashlib.sha256(spec.attestation_policy.encode()).hexdigest():
            todo.append(f"attestation policy {policy_id}")
    todo += [f"reference value {name}" for name in client.reference_values_to_register(spec.reference_values, ledger)]
    for path, source in sorted(spec.resources.items()):
        digest = hashlib.sha256(Path(source).read_bytes()).hexdigest()
        if ledger.digest(f"resource/{path}") != digest:
            todo.append(f"resource {path}")
    return todo


def apply_admin_state(spec: AdminSpec, client: KbsClient, ledger: Ledger) -> list[str]:
    # the gate again, right before the upload (the role ran it at prepare time too)
    if spec.expect_denial:
        refuse_unsafe_policy(spec.resource_policy, list(spec.resources))
    done = []
    if client.set_resource_policy(spec.resource_policy, ledger):
        done.append("resource policy")
    if spec.attestation_policy is not None and client.set_attestation_policy(spec.attestation_policy, ledger):
        done.append(f"attestation policy {ATTESTATION_POLICY_IDS['cpu']}")
    done += [f"reference value {n}" for n in client.ensure_reference_values(spec.reference_values, ledger)]
    for path, source in sorted(spec.resources.items()):
        if client.ensure_resource(path, source, ledger):
            done.append(f"resource {path}")
    return done


def _apply(state, host, spec: AdminSpec, instance: str) -> bool:  # noqa: ARG001
    try:
        client = spec.client()
        wait_ready(client)
        done = apply_admin_state(spec, client, Ledger(spec.ledger, instance))
    except (KbsError, RegoError, OSError) as exc:
        return _fail(state, host, f"KBS admin: {exc}")
    host.log(f"KBS admin: set {', '.join(done) if done else 'nothing (already in place)'}", log_func=logger.info)
    return True


@operation(is_idempotent=True)
def admin_state(spec: AdminSpec):
    """The KBS holds ``spec``'s policies, reference values and resources (admin API).

    + spec: ``AdminSpec``
    """
    instance = _instance(spec)
    if not instance:
        yield FunctionCommand(_apply_with_instance, (spec,), {})
        return
    try:
        client = spec.client()
        if host.state.is_executing:
            wait_ready(client)
        todo = plan_admin_state(spec, client, Ledger(spec.ledger, instance))
    except KbsUnreachable:
        if host.state.is_executing:
            yield FunctionCommand(_fail, (f"KBS admin: {spec.url} does not answer after the service (re)start",), {})
            return
        todo = ["everything (the KBS does not answer yet)"]
    except (KbsError, RegoError, OSError) as exc:
        yield FunctionCommand(_fail, (f"KBS admin: {exc}",), {})
        return
    if not todo:
        host.noop("KBS policies, reference values and resources already in place")
        return
    yield FunctionCommand(_apply, (spec, instance), {})


def _apply_with_instance(state, host, spec: AdminSpec) -> bool:
    lines = host.get_fact(FileContents, path=spec.instance_file, _sudo=True)
    instance = lines[0].strip() if lines else ""
    if not instance:
        return _fail(state, host, f"KBS admin: {spec.instance_file} is missing on the KBS host")
    return _apply(state, host, spec, instance)


def check_health(spec: AdminSpec, client: KbsClient) -> list[str]:
    """Every-run checks; returns what passed, raises ``KbsError`` on the first failure."""
    passed = []
    if client.scheme == "https":
        served = client.served_certificate()
        expected = load_cert(spec.server_cert).public_bytes(Encoding.DER)
        if served != expected:
            raise HealthCheckFailed(
                f"{spec.url} presents a certificate other than {spec.server_cert} (trusted by the site CA, but not the "
                "one ccfactory deployed): is another service on that port, or did the KBS not restart?"
            )
        passed.append("HTTPS with the deployed certificate")
    passed.append(client.check_admin_auth())
    passed.append(client.negative_health_check(expect_denial=spec.expect_denial))
    return passed


@operation(is_idempotent=True)
def healthy(spec: AdminSpec):
    """The KBS answers over HTTPS with the deployed certificate, accepts only the site admin
    key, and denies sample evidence by policy (lab-permissive: lets it through). Changes
    nothing; checked when pyinfra executes, every run.

    + spec: ``AdminSpec``
    """
    if not host.state.is_executing:
        host.noop("checked when the deploy runs")
        return
    try:
        client = spec.client()
        wait_ready(client)
        passed = check_health(spec, client)
    except (KbsError, OSError) as exc:
        yield FunctionCommand(_fail, (f"KBS health check failed: {exc}",), {})
        return
    for line in passed:
        host.log(f"KBS health: {line}", log_func=logger.info)
    host.noop("KBS healthy")


# ------------------------------------------------------------------ on the KBS host


@operation()
def image_pulled(reference: str):
    """The container image ``reference`` (``<registry>/<repository>@sha256:<digest>``) is in
    podman's store. Pulled by digest, so the registry cannot substitute other content.

    + reference: image by digest (a tag is refused)

    Example::

        kbs_ops.image_pulled(name="Trustee image", reference=artifact.reference, _sudo=True)
    """
    if "@sha256:" not in reference:
        raise ValueError(f"image {reference!r} has no digest: images are pulled by digest only")
    if host.get_fact(PodmanImage, reference=reference, _sudo=True):
        host.noop(f"image {reference} present")
        return
    yield f"podman pull --quiet {shlex.quote(reference)}"


@operation()
def instance_id(path: str, user: str):
    """``path`` holds a random id for this KBS's storage (made once, never changed).

    + path: e.g. ``/var/lib/trustee/instance-id``
    + user: owner of the file
    """
    current = host.get_fact(FileContents, path=path)
    if current and current[0].strip():
        host.noop("KBS instance id present")
        return
    p = shlex.quote(path)
    yield StringCommand(
        f"umask 022 && cat /proc/sys/kernel/random/uuid > {p}.new && chown {shlex.quote(user)} {p}.new && mv {p}.new {p}"
    )
