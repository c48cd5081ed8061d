"""containerd configuration for the Kata handlers (pure): render, merge, compare.

Two ways to reach containerd (kata-deploy does the same, ``runtime/manager.rs``
``is_containerd_capable_of_drop_in``: drop-ins only from containerd 2.0):

* **drop-in** (containerd >= 2.0): ccfactory owns ``/etc/containerd/conf.d/ccfactory-kata.toml``
  and adds that one path to the main config's ``imports``; nothing else of the operator's
  file is touched. containerd 2.x merges imported files table by table.
* **main config** (containerd 1.x): 1.x replaces a whole plugin section with an imported
  file's, which would drop the operator's CRI settings, so ccfactory edits the main config:
  the operator's settings are kept, ccfactory's handlers are set, and the handlers it added
  earlier and no longer wants are removed. The list of handlers ccfactory added is kept in
  the file's header line ``# ccfactory-handlers: ...``. The operator's original file is kept
  once as ``config.toml.ccfactory-orig``.

Config version and plugin ids follow the **root** config (``/etc/containerd/config.toml``), as
kata-deploy does (``get_containerd_pluginid``, kata-containers@4.1.0:
tools/packaging/kata-deploy/binary/src/runtime/containerd.rs:93-107): containerd 2.x refuses a
drop-in whose version is higher than the root's (containerd@v2.3.4:
cmd/containerd/server/config/config.go:475-481) and migrates a lower one, plugin by plugin
(config.go:483-506; the CRI runtime plugin moves ``io.containerd.grpc.v1.cri`` to
``io.containerd.cri.v1.runtime``, plugins/cri/runtime/plugin.go:204-219). So an operator's
version-2 root gets a version-2 drop-in with version-2 plugin ids; a version 3 or 4 root gets
the split CRI plugins (``CRI_PLUGIN_BY_VERSION``). A node without a root config gets one of the
version ``containerd config default`` of its containerd writes (2 for 1.x, 3 from 2.0).

Example::

    >>> h = [Handler.for_shim("qemu-snp")]
    >>> text = render_dropin(h, config_version=2)
    >>> sorted(handlers_in(tomllib.loads(text)))
    ['kata-qemu-snp']
"""

from __future__ import annotations

import fnmatch
import re
import tomllib
from collections.abc import Sequence
from dataclasses import dataclass

import tomli_w

from ccfactory.templating import render
from ccfactory.coco import spec

MAIN_CONFIG = "/etc/containerd/config.toml"
DROPIN = "/etc/containerd/conf.d/ccfactory-kata.toml"
ORIGINAL_SUFFIX = ".ccfactory-orig"
PREVIOUS_SUFFIX = ".ccfactory-prev"
HANDLERS_MARK = "# ccfactory-handlers:"
V2_CRI = "io.containerd.grpc.v1.cri"
V3_RUNTIME = "io.containerd.cri.v1.runtime"
SOURCE = "runtime stage"
LEGACY_CRI = "cri"
# root config version -> CRI runtime plugin id (kata-deploy containerd.rs:30-35, 93-107);
# versions 3 and 4 both split the CRI plugin (version 4 only moves server settings:
# containerd@v2.3.4:cmd/containerd/server/config/config.go:48-54)
CRI_PLUGIN_BY_VERSION = {1: LEGACY_CRI, 2: V2_CRI, 3: V3_RUNTIME, 4: V3_RUNTIME}
V3_IMAGES = "io.containerd.cri.v1.images"


class RootConfigError(ValueError):
    """The operator's root config cannot take ccfactory's handlers (message names the fix)."""


@dataclass(frozen=True)
class Handler:
    name: str
    shim: str
    runtime_type: str
    runtime_path: str
    config_path: str
    pod_annotations: tuple[str, ...] = spec.POD_ANNOTATIONS
    container_annotations: tuple[str, ...] = spec.CONTAINER_ANNOTATIONS
    snapshotter: str = ""

    @classmethod
    def for_shim(cls, shim: str, snapshotter: str = "") -> Handler:
        return cls(
            name=spec.handler_name(shim),
            shim=shim,
            runtime_type=spec.runtime_type(shim),
            runtime_path=spec.SHIM_BINARY,
            config_path=spec.shim_config(shim),
            snapshotter=snapshotter,
        )


def runtime_plugin(config_version: int) -> str:
    if config_version not in CRI_PLUGIN_BY_VERSION:
        raise RootConfigError(
            f"containerd config version {config_version} is not one ccfactory knows "
            f"({', '.join(map(str, CRI_PLUGIN_BY_VERSION))}); fix: set `version` in {MAIN_CONFIG} to one of them"
        )
    return CRI_PLUGIN_BY_VERSION[config_version]


def root_version(main_current: str | None, default: int) -> int:
    """The version the root config has (or will have): its ``version`` key; a file without one
    is version 1 to containerd (containerd@v1.7.29:services/server/config/config.go:91-95;
    v2.3.4 migrates it from 1); no file or an empty one: ``default`` (ccfactory writes it).

    >>> root_version('version = 2\n[plugins]\n', 3), root_version(None, 3), root_version('root = "/x"\n', 3)
    (2, 3, 1)
    """
    if main_current is None or not main_current.strip():
        return default
    try:
        doc = tomllib.loads(main_current)
    except tomllib.TOMLDecodeError as exc:
        raise RootConfigError(f"{MAIN_CONFIG} is not valid TOML ({exc}); fix: repair it (containerd would not start either)") from exc
    version = doc.get("version", 1)
    if not isinstance(version, int) or isinstance(version, bool):
        raise RootConfigError(f"{MAIN_CONFIG}: version = {version!r} is not an integer; fix: set version = 2 or 3")
    return max(version, 1)


def root_config_problem(main_current: str | None, drop_in: bool, config_version: int) -> str:
    """Why the operator's root config cannot take ccfactory's handlers ("" when it can)."""
    try:
        desired_files(drop_in=drop_in, main_current=main_current, dropin_current=None, default_config="",
                      handlers=(), config_version=config_version)
    except RootConfigError as exc:
        return str(exc)
    return ""


def dropin_document(handlers: Sequence[Handler], config_version: int, guest_pull: bool = False) -> dict:
    """The drop-in as data: version and plugin ids of ``config_version`` (the root's)."""
    plugin = runtime_plugin(config_version)
    runtimes = {}
    for h in handlers:
        table: dict = {
            "runtime_type": h.runtime_type,
            "runtime_path": h.runtime_path,
            "privileged_without_host_devices": True,
            "pod_annotations": list(h.pod_annotations),
            "container_annotations": list(h.container_annotations),
        }
        if h.snapshotter:
            table["snapshotter"] = h.snapshotter
        table["options"] = {"ConfigPath": h.config_path}
        runtimes[h.name] = table
    plugins: dict = {plugin: {"containerd": {"runtimes": runtimes}}}
    doc: dict = {"version": config_version, "plugins": plugins}
    if guest_pull:
        # kata-deploy configure_nydus_snapshotter (snapshotters.rs:164-199) and, for split CRI
        # plugins, runtime_platforms.<handler>.snapshotter (containerd.rs:276-300)
        if plugin == V3_RUNTIME:
            images = plugins.setdefault(V3_IMAGES, {})
            images["disable_snapshot_annotations"] = False
            images["runtime_platforms"] = {h.name: {"snapshotter": h.snapshotter} for h in handlers if h.snapshotter}
        else:
            plugins[plugin]["containerd"]["disable_snapshot_annotations"] = False
        doc["proxy_plugins"] = {
            spec.NYDUS_SNAPSHOTTER: {"type": "snapshot", "address": spec.NYDUS_ADDRESS, "exports": {"root": spec.NYDUS_ROOT}}
        }
    return doc


def render_dropin(handlers: Sequence[Handler], config_version: int, guest_pull: bool = False, overlays: Sequence[str] = ()) -> str:
    """ccfactory's containerd TOML for ``handlers`` (template ``runtime/containerd-kata.toml.j2``)."""
    document = dropin_document(handlers, config_version, guest_pull)
    return render(
        "runtime/containerd-kata.toml.j2",
        overlays,
        config_version=config_version,
        runtime_plugin=runtime_plugin(config_version),
        handlers=list(handlers),
        document=document,
        ccfactory_source=SOURCE,
    )


def _runtimes(doc: dict) -> dict:
    plugins = doc.get("plugins", {})
    for plugin in (V3_RUNTIME, V2_CRI, LEGACY_CRI):
        runtimes = plugins.get(plugin, {}).get("containerd", {}).get("runtimes")
        if isinstance(runtimes, dict):
            return runtimes
    return {}


def handlers_in(doc: dict) -> dict[str, dict]:
    """Runtime handlers of a parsed config or ``config dump``: name -> settings."""
    out = {}
    for name, table in _runtimes(doc).items():
        if isinstance(table, dict):
            out[name] = {
                "runtime_type": table.get("runtime_type", ""),
                "runtime_path": table.get("runtime_path", ""),
                "config_path": (table.get("options") or {}).get("ConfigPath", ""),
                "pod_annotations": list(table.get("pod_annotations") or []),
                "snapshotter": table.get("snapshotter", ""),
            }
    return out


def owned_handlers(text: str | None) -> list[str]:
    """Handler names recorded in a ccfactory-written file's header line."""
    for line in (text or "").splitlines():
        if line.startswith(HANDLERS_MARK):
            return [n for n in line.removeprefix(HANDLERS_MARK).strip().split(",") if n]
    return []


def deep_merge(base: dict, update: dict) -> dict:
    for key, value in update.items():
        if isinstance(value, dict) and isinstance(base.get(key), dict):
            deep_merge(base[key], value)
        else:
            base[key] = value
    return base


def main_config_with_handlers(
    current: str | None,
    default: str,
    handlers: Sequence[Handler],
    config_version: int,
    guest_pull: bool = False,
    overlays: Sequence[str] = (),
) -> str:
    """The main config (containerd 1.x): ``containerd config default`` with the operator's file
    over it, ccfactory's handlers set and its earlier ones removed."""
    # containerd 1.x replaces a whole map (e.g. the CRI runtimes) when a config file sets it,
    # dropping the built-in runc; so the file states containerd's defaults explicitly, with the
    # operator's settings over them
    doc = tomllib.loads(default) if default.strip() else {}
    if current is not None and current.strip():
        operator = tomllib.loads(current)
        operator.pop("version", None)
        deep_merge(doc, operator)
    previous = owned_handlers(current)
    wanted = {h.name for h in handlers}
    runtimes = _runtimes(doc)
    for name in previous:
        if name not in wanted:
            runtimes.pop(name, None)
    ours = tomllib.loads(render_dropin(handlers, config_version, guest_pull, overlays))
    ours.pop("version", None)
    for name in wanted:  # replace, not merge: a handler's table is ccfactory's alone
        runtimes.pop(name, None)
    deep_merge(doc, ours)
    doc["version"] = config_version
    header = render("_managed_header.j2", ccfactory_source=SOURCE).rstrip("\n")
    lines = [
        header,
        "# containerd 1.x: ccfactory keeps the operator's settings in this file and sets its Kata",
        f"# handlers here (an imported file would replace whole plugin sections). Original: {MAIN_CONFIG}{ORIGINAL_SUFFIX}",
        f"{HANDLERS_MARK} {','.join(h.name for h in handlers)}",
    ]
    return "\n".join(lines) + "\n" + tomli_w.dumps(_version_first(doc))


def _version_first(doc: dict) -> dict:
    return {"version": doc["version"], **{k: v for k, v in doc.items() if k != "version"}}


_IMPORTS = re.compile(r"^imports\s*=\s*\[(?P<body>[^\]]*)\]\s*$", re.M)


def imports_of(text: str | None) -> list[str]:
    try:
        return list(tomllib.loads(text or "").get("imports", []))
    except tomllib.TOMLDecodeError:
        return []


def imports_cover(imports: Sequence[str], path: str) -> bool:
    return any(path == pattern or fnmatch.fnmatch(path, pattern) for pattern in imports)


def main_config_importing(current: str | None, path: str = DROPIN, config_version: int = 3) -> str:
    """The operator's main config with ``path`` added to ``imports`` (text edit: comments and
    layout stay); unchanged when an import already covers it."""
    text = current or ""
    if imports_cover(imports_of(text), path):
        return text
    m = _IMPORTS.search(text)
    if m:
        body = m.group("body").strip().rstrip(",")
        new = f'imports = [{body + ", " if body else ""}"{path}"]'
        return text[: m.start()] + new + text[m.end() :]
    if not text.strip():
        return f"version = {config_version}\nimports = [\"{path}\"]\n"
    lines = text.splitlines(keepends=True)
    # before the first table header, after any top-level keys such as version
    index = next((i for i, line in enumerate(lines) if line.lstrip().startswith("[")), len(lines))
    lines.insert(index, f'imports = ["{path}"]\n')
    return "".join(lines)


def main_config_without_import(current: str, path: str = DROPIN) -> str:
    """Undo ``main_config_importing`` (when ccfactory stops using a drop-in)."""
    m = _IMPORTS.search(current)
    if not m:
        return current
    items = [i.strip() for i in m.group("body").split(",") if i.strip()]
    items = [i for i in items if i.strip("\"'") != path]
    if not items:
        return current[: m.start()] + current[m.end() :].lstrip("\n")
    return current[: m.start()] + f"imports = [{', '.join(items)}]" + current[m.end() :]


@dataclass(frozen=True)
class ConfigFiles:
    """The files ccfactory wants: path -> content (None: remove)."""

    files: dict[str, str | None]
    mode: str  # "drop-in" | "main"

    def differs_from(self, current: dict[str, str | None]) -> list[str]:
        return [p for p, want in self.files.items() if _norm(current.get(p)) != _norm(want)]


def _norm(text: str | None) -> str | None:
    return None if text is None else text.rstrip("\n")


def desired_files(
    *,
    drop_in: bool,
    main_current: str | None,
    dropin_current: str | None,
    default_config: str,
    handlers: Sequence[Handler],
    config_version: int,
    guest_pull: bool = False,
    overlays: Sequence[str] = (),
) -> ConfigFiles:
    """Everything the node's containerd config should be (pure)."""
    if drop_in:
        # the drop-in follows the root config's version (``config_version``: what ccfactory writes
        # when there is no root config yet)
        version = root_version(main_current, config_version)
        files: dict[str, str | None] = {
            DROPIN: render_dropin(handlers, version, guest_pull, overlays),
            MAIN_CONFIG: main_config_importing(main_current, DROPIN, config_version),
        }
        return ConfigFiles(files, "drop-in")
    if root_version(main_current, config_version) == 1 and main_current and main_current.strip():
        raise RootConfigError(
            f"{MAIN_CONFIG} is a version 1 config (no `version` key, or version = 1) and this containerd "
            "1.x cannot import a version 2 one; fix: run `containerd config migrate` (containerd >= 1.7) or "
            "add `version = 2` with io.containerd.* plugin ids, then re-run"
        )
    main = main_config_with_handlers(main_current, default_config, handlers, config_version, guest_pull, overlays)
    files = {MAIN_CONFIG: main}
    if dropin_current is not None:
        files[DROPIN] = None  # a drop-in from a 2.x era would be read by nothing useful: remove it
        files[MAIN_CONFIG] = main_config_without_import(main, DROPIN)
    return ConfigFiles(files, "main")
