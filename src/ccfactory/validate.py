"""Validators for hostile inventory input: addresses, URLs, KBS resource paths, host names
and controller files, taken apart by real parsers (``ipaddress``, ``urllib.parse``, the IDNA
codec), never by string surgery.

Below the config layer (``tests/unit/test_layering.py``): ``ccfactory.config`` applies them to
the inventory, and stage libraries that take values from elsewhere (``coco.initdata``) apply
the same rules without importing config.

Example::

    url_problem("https://kbs.example:8080", https_only=True, path=False)   # None: fine
    url_problem("https://user:pw@kbs.example", https_only=True, path=False)  # (SECRET_IN_URL, True)
"""

from __future__ import annotations

import ipaddress
import os
import re
import stat
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit


# ---------------------------------------------------------------- hostile-input rules
#
# Addresses and URLs are taken apart by real parsers (ipaddress, urllib.parse, the IDNA
# codec) and never by string surgery; a value that is a secret (user information in a URL)
# is never printed back. Each rule is listed in the README's "Validation rules" section,
# generated from VALIDATION_RULES below.

# Characters no address or URL of an inventory needs: whitespace, controls, quotes and the
# characters RFC 3986 (section 2) leaves out of URIs. A newline would also forge log lines.
_URL_BAD_CHARS = re.compile(r"[\x00-\x20\x7f-\x9f\"'<>\\^`{|}]")
# RFC 1123 section 2.1 host-name label (after IDNA), at most 63 octets
_LABEL = re.compile(r"[a-z0-9](?:[a-z0-9-]{0,61}[a-z0-9])?")
SECRET_IN_URL = "contains user information ('user:password@'): a literal secret is not allowed in the inventory"


def _idna_hostname(name: str) -> str | None:
    """``name`` as an ASCII host name (IDNA, RFC 3490 via Python's ``idna`` codec), lower case,
    or None when it is not one: labels per RFC 1123, at most 253 octets, last label not numeric
    (RFC 3696 section 2, so ``10.0.0.256`` is not taken for a name)."""
    if not name or name.endswith("."):
        return None
    try:
        ascii_name = name.encode("idna").decode("ascii").lower()
    except (UnicodeError, ValueError):
        return None
    labels = ascii_name.split(".")
    if len(ascii_name) > 253 or not all(_LABEL.fullmatch(label) for label in labels) or labels[-1].isdigit():
        return None
    return ascii_name


def normalize_host(value: str) -> str:
    """Canonical form of a validated host: IP addresses compressed and without brackets,
    names in lower-case ASCII (IDNA). ``BMC1.example.net`` and ``bmc1.example.net`` are one host."""
    bare = value[1:-1] if value.startswith("[") and value.endswith("]") else value
    try:
        return ipaddress.ip_address(bare).compressed
    except ValueError:
        return _idna_hostname(bare) or bare.lower()


def url_host(host: str) -> str:
    """``host`` as the host part of a URL: an IPv6 address bracketed exactly once (RFC 3986
    section 3.2.2), anything else as is."""
    bare = normalize_host(host)
    return f"[{bare}]" if ":" in bare else bare


def https_base_url(host: str, port: int) -> str:
    """``https://<host>:<port>``, the Redfish base URL of a BMC, built from parts."""
    return f"https://{url_host(host)}:{int(port)}"


def host_problem(value: str) -> tuple[str, str] | None:
    """(message, fix) when ``value`` is not a bare host name or IP address (``bmc_address``)."""
    fix = "give the BMC's name or IP, no URL"
    if "@" in value:
        return SECRET_IN_URL, "give only the BMC's name or IP; the user goes in bmc_username, the password in bmc_password_env or bmc_password_file"
    if _URL_BAD_CHARS.search(value):
        return "not a host name or IP address (it contains whitespace, control characters or quotes)", fix
    if "://" in value or any(c in value for c in "/?#"):
        return "not a host name or IP address (it looks like a URL)", fix
    if "%" in value:
        return "not a host name or IP address (IPv6 zone indexes are not supported)", "give a global or unique-local address"
    if value.startswith("[") or value.endswith("]"):
        inner = value[1:-1] if value.startswith("[") and value.endswith("]") else None
        try:
            if inner is None:
                raise ValueError
            ipaddress.IPv6Address(inner)
        except ValueError:
            # "[fe80::1]:443" and friends
            return "not a host name or IP address (brackets only enclose an IPv6 address, no port)", "put the port in bmc_port"
        return None
    try:
        ipaddress.ip_address(value)
        return None
    except ValueError:
        pass
    if ":" in value:
        return "not a host name or IP address (host:port is not allowed here)", "put the port in bmc_port"
    if _idna_hostname(value) is None:
        return "not a host name or IP address", fix
    return None


def url_problem(value: str, *, https_only: bool, path: bool) -> tuple[str, bool] | None:
    """(message, is_secret) when ``value`` is not a plain http(s) URL: parsed with
    ``urllib.parse.urlsplit``; no user information, query, fragment, whitespace or quotes; a
    host name (IDNA) or IP address; a port in 1-65535; a path only when ``path`` (no ``..``).
    The value is never part of the message (it may hold a secret)."""
    if "@" in value:
        return SECRET_IN_URL, True
    if _URL_BAD_CHARS.search(value):
        return "not a valid URL (it contains whitespace, control characters or quotes)", False
    try:
        parts = urlsplit(value)
        port = parts.port
    except ValueError as exc:
        return f"not a valid URL ({exc})", False
    if parts.scheme not in ("http", "https") or not parts.hostname:
        return "not an http(s) URL with a host", False
    if https_only and parts.scheme != "https":
        return "must use https", False
    if "?" in value or "#" in value:
        return "not a valid URL for this key (no query or fragment allowed)", False
    host = parts.netloc.rsplit(":", 1)[0] if port is not None or parts.netloc.endswith(":") else parts.netloc
    if parts.netloc.endswith(":"):
        return "not a valid URL (empty port)", False
    if port is not None and not 1 <= port <= 65535:
        return "not a valid URL (port must be 1-65535)", False
    if host_problem(host) is not None:
        return "not a valid URL (its host is not a host name or IP address)", False
    if not path and parts.path not in ("", "/"):
        return "has a path; the KBS serves /kbs/v0 at the root", False
    if ".." in parts.path.split("/"):
        return "not a valid URL ('..' in the path)", False
    return None


def url_identity(value: str) -> tuple[str, str, int] | None:
    """(scheme, host, port) of a validated URL, defaults filled in, host canonical."""
    try:
        parts = urlsplit(value)
        port = parts.port or (443 if parts.scheme == "https" else 80)
    except ValueError:
        return None
    if not parts.hostname:
        return None
    return parts.scheme, normalize_host(parts.hostname), port


# KBS resource path rule (Trustee kbs/src/plugins/implementations/resource/backend.rs,
# ResourceDesc): three segments, each a letter/digit/_/- then letters/digits/_/-/.
_RESOURCE_SEGMENT = r"[a-zA-Z0-9_\-]+[a-zA-Z0-9_\-.]*"
_RESOURCE_PATH = rf"(?P<repo>{_RESOURCE_SEGMENT})/(?P<type>{_RESOURCE_SEGMENT})/(?P<tag>{_RESOURCE_SEGMENT})"
# \A...\Z, not ^...$: '$' also matches before a trailing newline, so even .match() is exact
RESOURCE_PATH_RE = re.compile(rf"\A{_RESOURCE_PATH}\Z")
# A resource URI as the CDH takes it (guest-components confidential-data-hub: kbs:///<path>)
RESOURCE_URI_RE = re.compile(rf"\Akbs:///{_RESOURCE_PATH}\Z")


def resource_uri_problem(uri: Any) -> str | None:
    if not isinstance(uri, str) or not RESOURCE_URI_RE.fullmatch(uri):
        return "is not kbs:///<repository>/<type>/<tag> (three segments of letters, digits, '_', '-', '.', not starting with '.')"
    return None


# Host names become controller paths (sites/<host>/pki, reports/<host>.json, k8s/<host>...):
# one path component, printable ASCII, no separator, not '.' or '..'.
# A pyinfra connector prefix (@local, @docker/, @fake/ ...) is allowed in front.
_SAFE_HOST_NAME = re.compile(r"(@[A-Za-z0-9_\-]+/?)?[A-Za-z0-9_][A-Za-z0-9_.:@\-]*|@[A-Za-z0-9_\-]+")


def host_name_problem(name: str) -> str | None:
    if not isinstance(name, str) or not _SAFE_HOST_NAME.fullmatch(name) or ".." in name:
        return "host name must be one path component of letters, digits, '.', '-', '_', ':', '@' (it names controller files)"
    return None


def safe_path_component(name: str) -> str:
    """``name`` as one safe controller path component (never '.', '..', or with a separator)."""
    cleaned = re.sub(r"[^A-Za-z0-9_.\-]", "_", name).lstrip(".")
    return cleaned.replace("..", "__") or "_"


def secret_file_problem(path: Path) -> str | None:
    """Why ``path`` is not a private file of this controller user: it must be a regular file,
    not a symlink (checked with ``os.lstat``), owned by the user running ccfactory, with no
    group or other permission bits (0600 or stricter), like ssh(1) requires of private keys."""
    try:
        st = os.lstat(path)
    except FileNotFoundError:
        return f"file {path} does not exist on the controller"
    except OSError as exc:
        return f"file {path} cannot be inspected ({exc.strerror})"
    if stat.S_ISLNK(st.st_mode):
        return f"{path} is a symbolic link; a secret file must be a regular file"
    if not stat.S_ISREG(st.st_mode):
        return f"{path} is not a regular file"
    if st.st_uid != os.geteuid():
        return f"{path} is not owned by the controller user (uid {os.geteuid()})"
    if st.st_mode & 0o077:
        return f"{path} has mode {stat.S_IMODE(st.st_mode):04o}; a secret file must be 0600 or stricter"
    if not os.access(path, os.R_OK):
        return f"file {path} is not readable"
    return None


_PSEUDO_FS = ("/proc", "/sys", "/dev")


def regular_file_problem(path: Path) -> str | None:
    """Why ``path`` is not an ordinary readable file: it must resolve to a regular file outside
    /proc, /sys and /dev (no devices, FIFOs, sockets, directories, process environments)."""
    try:
        real = path.resolve(strict=True)
        st = os.stat(real)
    except FileNotFoundError:
        return f"file {path} does not exist on the controller"
    except (OSError, RuntimeError) as exc:
        return f"file {path} cannot be inspected ({getattr(exc, 'strerror', None) or exc})"
    if any(real == Path(p) or Path(p) in real.parents for p in _PSEUDO_FS):
        return f"{path} is in {real.parts[0]}{real.parts[1]}, not an ordinary file"
    if not stat.S_ISREG(st.st_mode):
        return f"{path} is not a regular file"
    if not os.access(real, os.R_OK):
        return f"file {path} is not readable"
    return None
