"""containerd operations: the BOM release installed, and the Kata handlers configured safely.

``runtimes_configured`` is the safe-change path (design "Safety rules"):

1. render ccfactory's files from the node's state read *at execute time* (containerd may
   have been installed earlier in the same run);
2. stage them next to the live ones and have the node's own containerd parse them
   (``containerd --config <staged main> config dump``); a config containerd rejects is
   never put in place, and the error quotes containerd;
3. keep the live files as ``<file>.ccfactory-prev`` (the operator's original main config
   once as ``config.toml.ccfactory-orig``), move the staged files in, restart containerd;
4. health check: the service is active, the socket answers (``ctr version``), the CRI
   plugin is ``ok`` (``ctr plugins ls``) and ``config dump`` lists exactly the wanted Kata
   handlers (ccfactory's earlier ones that are no longer wanted are gone);
5. not healthy: the previous files go back, containerd restarts on them and is checked
   again, and the host fails with what containerd said.

A converged node yields nothing: no file is written and containerd is not restarted.
"""

from __future__ import annotations

import base64
import logging
import shlex
import time
from collections.abc import Sequence

from pyinfra import host
from pyinfra.api import FunctionCommand, StringCommand, operation

from ccfactory.facts.containerd import ContainerdRuntimes, ContainerdState, parse_probe, probe_command
from ccfactory.coco import containerd_config as cc
from ccfactory.coco.containerd_config import Handler

logger = logging.getLogger("pyinfra")

SOCKET = "/run/containerd/containerd.sock"
STAGE_SUFFIX = ".ccfactory-new"
HEALTH_TIMEOUT = 60.0


class _HostCallback(FunctionCommand):
    """A FunctionCommand whose function also gets the operation's connector arguments."""

    def execute(self, state, host, connector_arguments):  # noqa: ARG002 - pyinfra's signature
        return self.function(state, host, connector_arguments, *self.args, **self.kwargs)


def _fail(state, host, problem: str) -> bool:  # noqa: ARG001
    host.log_styled(f"ccfactory: {problem}", fg="red", log_func=logger.error)
    return False


def _run(host, args, command: str, timeout: int = 120) -> tuple[bool, str]:
    ok, output = host.run_shell_command(StringCommand(command), print_output=False, **args)
    return ok, "\n".join(output.output_lines)


def _probe(host, args) -> ContainerdState:
    _, out = _run(host, args, probe_command())
    return parse_probe(out.splitlines())


def _write(path: str, content: str) -> str:
    data = base64.b64encode(content.encode()).decode()
    p = shlex.quote(path)
    return f"mkdir -p {shlex.quote(path.rsplit('/', 1)[0])} && echo {data} | base64 -d > {p}.tmp && chmod 0644 {p}.tmp && mv {p}.tmp {p}"


def desired(state: ContainerdState, handlers: Sequence[Handler], drop_in: bool, config_version: int, guest_pull: bool, overlays: Sequence[str]) -> cc.ConfigFiles:
    return cc.desired_files(
        drop_in=drop_in,
        main_current=state.main_config,
        dropin_current=state.dropin,
        default_config=state.default_config or f"version = {config_version}\n",
        handlers=handlers,
        config_version=config_version,
        guest_pull=guest_pull,
        overlays=overlays,
    )


def problems_with(state: ContainerdState, wanted: Sequence[str], unwanted: Sequence[str]) -> list[str]:
    """Why containerd is not healthy with the wanted handlers (empty: healthy)."""
    out = []
    if not state.active:
        out.append("the containerd service is not active")
    if state.cri_status != "ok":
        out.append(f"the CRI plugin is {state.cri_status or 'not answering'} (ctr plugins ls)")
    if not state.dump_ok:
        out.append(f"containerd config dump failed: {state.dump_error}")
    missing = [h for h in wanted if h not in state.handlers]
    if missing:
        out.append(f"config dump lacks handler(s) {', '.join(missing)}")
    stale = [h for h in unwanted if h in state.handlers]
    if stale:
        out.append(f"config dump still lists removed handler(s) {', '.join(stale)}")
    return out


def _socket_answers(host, args) -> tuple[bool, str]:
    return _run(host, args, f"ctr --address {SOCKET} version 2>&1")


def _healthy(host, args, wanted, unwanted, timeout: float) -> tuple[bool, list[str]]:
    deadline = time.monotonic() + timeout
    while True:
        state = _probe(host, args)
        problems = problems_with(state, wanted, unwanted)
        answers, text = _socket_answers(host, args)
        if not answers:
            problems.append(f"the socket {SOCKET} does not answer: {text.strip().splitlines()[-1:] or ['no output']}")
        if not problems or time.monotonic() > deadline:
            return not problems, problems
        time.sleep(1)


def _journal(host, args) -> str:
    _, text = _run(host, args, "journalctl -u containerd -n 8 --no-pager -o cat 2>/dev/null || true")
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    return " | ".join(lines[-8:])


def _apply(state, host, args, handlers, drop_in, config_version, guest_pull, overlays, owned_before, timeout) -> bool:
    now = _probe(host, args)
    if not now.installed:
        return _fail(state, host, "containerd is not installed; the handlers cannot be configured")
    try:
        files = desired(now, handlers, drop_in, config_version, guest_pull, overlays)
    except cc.RootConfigError as exc:
        return _fail(state, host, f"nothing was changed: {exc}")
    wanted = [h.name for h in handlers]
    unwanted = [h for h in set(now.owned) | set(owned_before) if h not in wanted]
    changed = files.differs_from({cc.MAIN_CONFIG: now.main_config, cc.DROPIN: now.dropin})
    if not changed:
        if not problems_with(now, wanted, unwanted):
            return True
    # 1. stage and validate with the node's own containerd
    staged_main = cc.MAIN_CONFIG + STAGE_SUFFIX
    main_text = files.files.get(cc.MAIN_CONFIG) or ""
    commands = []
    if files.mode == "drop-in":
        staged_dropin = cc.DROPIN + STAGE_SUFFIX
        commands.append(_write(staged_dropin, files.files[cc.DROPIN] or ""))
        commands.append(_write(staged_main, main_text.replace(f'"{cc.DROPIN}"', f'"{staged_dropin}"')))
        staged = [staged_dropin, staged_main]
    else:
        commands.append(_write(staged_main, main_text))
        staged = [staged_main]
    ok, out = _run(host, args, " && ".join(commands))
    if not ok:
        return _fail(state, host, f"could not stage the containerd configuration: {out.strip()[-400:]}")
    ok, dump = _run(host, args, f"containerd --config {shlex.quote(staged_main)} config dump 2>&1")
    cleanup = "rm -f " + " ".join(shlex.quote(p) for p in staged)
    if not ok:
        _run(host, args, cleanup)
        msg = " | ".join(line.strip() for line in dump.splitlines() if line.strip())[-800:]
        return _fail(
            state,
            host,
            f"containerd rejected the new configuration, nothing was changed and containerd was not restarted. "
            f"containerd said: {msg}",
        )
    checked = parse_probe(["### ccfactory:dump", *dump.splitlines(), "### ccfactory:dump-exit 0"])
    missing = [h for h in wanted if h not in checked.handlers]
    if missing:
        _run(host, args, cleanup)
        return _fail(state, host, f"the new containerd configuration does not define handler(s) {', '.join(missing)} "
                     "(a site template overlay may have dropped them); nothing was changed")
    # 2. keep the previous files, swap, restart
    swap = []
    for path in files.files:
        p, prev = shlex.quote(path), shlex.quote(path + cc.PREVIOUS_SUFFIX)
        swap.append(f"if [ -f {p} ]; then cp -p {p} {prev} && rm -f {prev}.absent; else rm -f {prev} && touch {prev}.absent; fi")
        if path == cc.MAIN_CONFIG:
            orig = shlex.quote(path + cc.ORIGINAL_SUFFIX)
            swap.append(f"if [ -f {p} ] && [ ! -e {orig} ] && ! grep -q '^# Managed by ccfactory' {p}; then cp -p {p} {orig}; fi")
    for path, want in files.files.items():
        p = shlex.quote(path)
        swap.append(f"rm -f {p}" if want is None else _write(path, want))
    swap.append(cleanup)
    ok, out = _run(host, args, "; ".join(swap))
    host.log(f"containerd: {files.mode} configuration changed ({', '.join(changed) or 'handlers'}), restarting", log_func=logger.info)
    _run(host, args, "systemctl restart containerd 2>&1")
    healthy, problems = _healthy(host, args, wanted, unwanted, timeout)
    if healthy:
        return True
    # 3. roll back
    journal = _journal(host, args)
    restore = []
    for path in files.files:
        p, prev = shlex.quote(path), shlex.quote(path + cc.PREVIOUS_SUFFIX)
        restore.append(f"if [ -e {prev}.absent ]; then rm -f {p} {prev}.absent; elif [ -f {prev} ]; then cp -p {prev} {p}; fi")
    _run(host, args, "; ".join(restore))
    _run(host, args, "systemctl restart containerd 2>&1")
    back, back_problems = _healthy(host, args, [h for h in now.handlers if h.startswith("kata-") and h in now.owned], [], timeout)
    status = "containerd is running again on the previous configuration" if back else (
        f"containerd is NOT healthy on the previous configuration either: {'; '.join(back_problems)}"
    )
    return _fail(
        state,
        host,
        f"containerd was not healthy with the new configuration ({'; '.join(problems)}); rolled back: {status}. "
        f"containerd's log: {journal or 'empty'}",
    )


@operation()
def runtimes_configured(
    handlers: list[Handler],
    drop_in: bool,
    config_version: int,
    guest_pull: bool = False,
    overlays: Sequence[str] = (),
    health_timeout: float = HEALTH_TIMEOUT,
):
    """containerd serves exactly ccfactory's Kata ``handlers`` (plus the operator's own).

    + handlers: ``Handler`` per shim (name, runtime_type, runtime_path, ConfigPath, snapshotter)
    + drop_in: own ``/etc/containerd/conf.d/ccfactory-kata.toml`` (containerd >= 2.0), else
      edit the main config (containerd 1.x)
    + config_version: the version of a root config ccfactory writes when the node has none (3 for
      containerd 2.x, 2 for 1.x); an existing root config's own version decides the drop-in's
    + guest_pull: add the nydus snapshotter for the Kata TEE handlers
    + overlays: site template directories searched before the packaged templates

    **Example:**

    .. code:: python

        containerd.runtimes_configured(handlers=[Handler.for_shim("qemu-snp")], drop_in=False,
                                       config_version=2, _sudo=True)
    """
    state = host.get_fact(ContainerdRuntimes)
    wanted = [h.name for h in handlers]
    owned_before = state.owned
    if state.installed:
        try:
            files = desired(state, handlers, drop_in, config_version, guest_pull, overlays)
        except cc.RootConfigError as exc:
            yield FunctionCommand(_fail, (f"nothing was changed: {exc}",), {})
            return
        unwanted = [h for h in owned_before if h not in wanted]
        changed = files.differs_from({cc.MAIN_CONFIG: state.main_config, cc.DROPIN: state.dropin})
        if not changed and not problems_with(state, wanted, unwanted):
            host.noop(f"containerd serves {', '.join(wanted)}")
            return
    yield _HostCallback(
        _apply, (handlers, drop_in, config_version, guest_pull, tuple(overlays), owned_before, health_timeout), {}
    )


@operation()
def release_installed(archive: str, sha256: str, version: str):
    """The BOM's containerd static release (``bin/containerd``, ``ctr``, shims) in ``/usr/local``.

    + archive: the release tarball already on the host
    + sha256: the BOM's checksum, checked again on the host
    + version: the release's version (``containerd --version`` is compared with it)
    """
    state = host.get_fact(ContainerdRuntimes)
    if state.installed and state.version == version and state.binary == "/usr/local/bin/containerd":
        host.noop(f"containerd {version} installed")
        return
    a = shlex.quote(archive)
    yield StringCommand(
        " && ".join(
            [
                f"echo {shlex.quote(f'{sha256}  {archive}')} | sha256sum -c --quiet -",
                f"tar -xzf {a} -C /usr/local --no-same-owner bin/",
                f"/usr/local/bin/containerd --version | grep -q {shlex.quote(version)}",
            ]
        )
    )
