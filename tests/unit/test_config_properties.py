"""Property tests around the config models (hypothesis): bad input never slips through,
never crashes the validator, and never echoes a secret."""

from __future__ import annotations

import string

from hypothesis import given, settings
from hypothesis import strategies as st

from ccfactory.config import HostData, InventoryError, load_node_config

KEYS = sorted(HostData.model_fields)
key_text = st.text(alphabet=string.ascii_lowercase + "_", min_size=1, max_size=24)
anything = st.one_of(
    st.none(), st.booleans(), st.integers(), st.floats(allow_nan=False), st.text(max_size=40),
    st.lists(st.integers(), max_size=3), st.dictionaries(st.text(max_size=5), st.integers(), max_size=2),
)
groups = st.lists(st.sampled_from(["workers", "kbs", "snp", "tdx", "gpu", "site"]), unique=True, max_size=5)


@settings(max_examples=300, deadline=None)
@given(data=st.dictionaries(st.sampled_from(KEYS), anything, max_size=8), groups=groups)
def test_validator_never_crashes(data, groups):
    try:
        cfg = load_node_config("h1", groups, data, check_files=False)
    except InventoryError as exc:
        assert exc.problems, "an InventoryError always carries its problems"
        for problem in exc.problems:
            assert problem.host == "h1" and problem.field and problem.message
    else:
        assert cfg.name == "h1"


@settings(max_examples=200, deadline=None)
@given(key=key_text.filter(lambda k: k not in HostData.model_fields and not k.startswith("_")), value=anything)
def test_unknown_keys_are_always_rejected(key, value):
    from ccfactory.config import connector_keys

    if key in connector_keys():
        return
    try:
        load_node_config("h1", ("kbs",), {"tee": "none", key: value}, check_files=False)
    except InventoryError as exc:
        assert any(p.field == key for p in exc.problems)
    else:
        raise AssertionError(f"unknown key {key!r} was accepted")


@settings(max_examples=200, deadline=None)
@given(
    prefix=st.sampled_from(["bmc", "kbs_admin", "model", "site"]),
    suffix=st.sampled_from(["password", "secret", "token", "private_key", "api_key"]),
    secret=st.text(alphabet=string.ascii_letters + string.digits + "!@#%", min_size=8, max_size=30),
)
def test_literal_secrets_rejected_and_never_echoed(prefix, suffix, secret):
    key = f"{prefix}_{suffix}"
    secret = f"Zq9{secret}"  # a value no message could contain by chance ("environm" once did)
    try:
        load_node_config("h1", ("kbs",), {"tee": "none", key: secret}, check_files=False)
    except InventoryError as exc:
        assert secret not in str(exc)
        assert any(p.field == key and "literal secret" in p.message for p in exc.problems)
    else:
        raise AssertionError(f"{key} with a literal value was accepted")


# ---------------------------------------------------------------- around the other models
# (issue 9) BOM files, BIOS profile files, KBS settings and whole host records: every bad input
# is refused with a message naming where, and nothing else escapes (no crash, no echo).

import re  # noqa: E402

import tomli_w  # noqa: E402
from hypothesis import assume, example  # noqa: E402

from ccfactory.bom import BomError, parse_bom  # noqa: E402
from ccfactory.firmware.errors import ProfileError  # noqa: E402
from ccfactory.firmware.profile import parse_profile  # noqa: E402
from ccfactory.kbs.errors import KbsSettingsError, ResourcePathError  # noqa: E402
from ccfactory.kbs.settings import check_resource_path, kbs_settings  # noqa: E402

SHA = "a" * 64
GOOD_ARTIFACT = {
    "name": "demo", "version": "1.0", "filename": "demo-1.0.tar.gz",
    "url": "https://example.invalid/demo-1.0.tar.gz", "sha256": SHA, "source": "test", "pin": "upstream-checksum-file",
}  # fmt: skip
# one-line text: messages are one problem per line, so a value with a line break would split one
line_text = st.text(alphabet=st.characters(blacklist_categories=("Cc", "Cs", "Zl", "Zp")), max_size=30)
toml_scalar = st.one_of(
    st.booleans(), st.integers(-(2**31), 2**31), line_text, st.floats(allow_nan=False, allow_infinity=False)
)
toml_value = st.recursive(
    toml_scalar, lambda inner: st.lists(inner, max_size=3) | st.dictionaries(key_text, inner, max_size=3), max_leaves=6
)


@settings(max_examples=200, deadline=None)
@given(
    entry=st.dictionaries(st.sampled_from([*GOOD_ARTIFACT, "note", "colour"]), toml_value, max_size=8),
    extra_top=st.dictionaries(st.sampled_from(["pending", "schema_version", "artefacts", "mirror"]), toml_value, max_size=2),
    lab=st.booleans(),
)
@example(entry=GOOD_ARTIFACT, extra_top={"pending": 5}, lab=False)  # found by this test: TypeError, not BomError
@example(entry=GOOD_ARTIFACT, extra_top={"pending": [{"name": "x"}]}, lab=False)  # pydantic ValidationError
@example(entry=GOOD_ARTIFACT, extra_top={"schema_version": "one"}, lab=False)  # pydantic ValidationError
def test_bom_parser_refuses_with_artifact_and_field_never_crashes(entry, extra_top, lab):
    text = tomli_w.dumps({"schema_version": 1, "artifact": [entry], **extra_top})
    try:
        bom = parse_bom(text, "site-bom.toml", lab_overlay=lab)
    except BomError as exc:
        name = entry.get("name", "artifact #1")
        for line in str(exc).splitlines():
            assert line.startswith("site-bom.toml: "), line
            if isinstance(name, str):  # (a non-text name is shown as its repr; TOML may reorder a table)
                where = line.removeprefix("site-bom.toml: ")
                assert where.startswith((f"{name}: ", *extra_top)) or "unknown top-level key" in line, line
    else:
        (artifact,) = bom.artifacts
        assert re.fullmatch(r"[0-9a-f]{64}", artifact.sha256)
        assert artifact.url.startswith(("https://", "pip:")) or (lab and artifact.url.startswith("http://"))
        assert "/" not in artifact.filename and not set(extra_top) - {"schema_version", "artifact", "pending"}


@settings(max_examples=200, deadline=None)
@given(
    field_name=st.sampled_from(sorted(GOOD_ARTIFACT)),
    value=st.one_of(st.none(), toml_scalar),
    lab=st.booleans(),
)
def test_bom_one_bad_field_is_named(field_name, value, lab):
    entry = dict(GOOD_ARTIFACT)
    if value is None:
        del entry[field_name]
    else:
        entry[field_name] = value
    text = tomli_w.dumps({"schema_version": 1, "artifact": [entry]})
    try:
        parse_bom(text, "b.toml", lab_overlay=lab)
    except BomError as exc:
        assert f": {field_name}: " in str(exc), str(exc)
    else:  # accepted only if the value is one the model allows
        assert value is not None and isinstance(value, str)
        if field_name == "sha256":
            assert re.fullmatch(r"[0-9a-f]{64}", value)
        if field_name == "url":
            assert value.startswith(("https://", "pip:")) or (lab and value.startswith("http://"))


@settings(max_examples=150, deadline=None)
@given(sha=st.text(alphabet="0123456789abcdefABCDEF", min_size=60, max_size=68))
def test_bom_sha256_must_be_64_lower_case_hex(sha):
    entry = {**GOOD_ARTIFACT, "sha256": sha}
    ok = bool(re.fullmatch(r"[0-9a-f]{64}", sha))
    try:
        parse_bom(tomli_w.dumps({"artifact": [entry]}))
    except BomError as exc:
        assert not ok and "demo: sha256: " in str(exc)
    else:
        assert ok


PROFILE_SETTING = {"names": ["SMEE"], "value": "Enabled", "source": "vendor guide"}
SETTING_KEYS = ["names", "display_names", "value", "kind", "value_aliases", "one_shot", "trigger", "optional",
                "unconfirmed", "source", "note", "valeu"]  # fmt: skip


def _profile(setting: dict, *, stage_name: str = "sme", setting_name: str = "smee", tee: str = "snp") -> str:
    return tomli_w.dumps(
        {"vendor": "acme", tee: {"stages": [{"name": stage_name, "settings": {setting_name: setting}}]}}
    )


@settings(max_examples=250, deadline=None)
@given(setting=st.dictionaries(st.sampled_from(SETTING_KEYS), toml_value, max_size=7))
def test_profile_parser_names_file_tee_stage_and_setting(setting):
    try:
        profile = parse_profile(_profile(setting), "/oem/acme.toml")
    except ProfileError as exc:
        for line in str(exc).splitlines():
            assert line.startswith("/oem/acme.toml: "), line
            assert "snp: stage 1 'sme': setting 'smee'" in line or "snp: stages" in line, line
    else:
        (stage,) = profile.snp.stages
        s = stage.settings["smee"]
        assert (s.names or s.display_names) and s.source
        assert not s.one_shot or (s.trigger and s.value is not None)


@settings(max_examples=150, deadline=None)
@given(
    stage_name=st.text(min_size=1, max_size=12),
    setting_name=st.text(min_size=1, max_size=12),
    tee=st.sampled_from(["snp", "tdx", "sev", "TDX"]),
)
def test_profile_names_must_be_snake_case_and_tees_known(stage_name, setting_name, tee):
    text = _profile(PROFILE_SETTING, stage_name=stage_name, setting_name=setting_name, tee=tee)
    ident = re.compile(r"^[a-z][a-z0-9_]*$")
    try:
        parse_profile(text, "acme.toml")
    except ProfileError as exc:
        assert str(exc).startswith("acme.toml: ")
        assert tee not in ("snp", "tdx") or not ident.match(stage_name) or not ident.match(setting_name)
        if tee not in ("snp", "tdx"):
            assert f"{tee}: unknown key" in str(exc)
    else:
        assert tee in ("snp", "tdx") and ident.match(stage_name) and ident.match(setting_name)


segment = st.text(alphabet=string.ascii_letters + string.digits + "_-.", min_size=1, max_size=8)
path_char_soup = st.text(alphabet=string.ascii_letters + string.digits + "_-./ ?*:", max_size=30)
file_text = st.text(alphabet=string.ascii_letters + string.digits + "_-./ ~", max_size=20)


def _kbs_rule(path: str) -> bool:
    parts = path.split("/")
    return len(parts) == 3 and all(p and not p.startswith(".") and re.fullmatch(r"[A-Za-z0-9_.\-]+", p) for p in parts)


@settings(max_examples=300, deadline=None)
@given(path=st.one_of(path_char_soup, st.lists(segment, min_size=1, max_size=4).map("/".join)))
def test_resource_paths_follow_the_kbs_rule_exactly(path):
    try:
        assert check_resource_path(path) == path
    except ResourcePathError as exc:
        assert not _kbs_rule(path), path
        assert repr(path) in str(exc) and "fix:" in str(exc)
    else:
        assert _kbs_rule(path), path


def _kbs_cfg(url: str, lab: bool = False):
    cfg = load_node_config("kbs-01", ["kbs"], {"tee": "none", "kbs_url": url}, check_files=False)
    return cfg.model_copy(update={"lab": lab})


maybe_file = st.one_of(st.none(), file_text, st.just("/etc/hostname"))
kbs_data = st.fixed_dictionaries(
    {},
    optional={
        "kbs_resources": st.dictionaries(path_char_soup, st.one_of(file_text, st.just("/etc/hostname")), max_size=3),
        "kbs_gpu_resources": st.one_of(st.none(), st.lists(path_char_soup, max_size=3)),
        "kbs_reference_values": st.dictionaries(
            st.one_of(file_text, st.just("snp_launch_measurement")),
            st.lists(st.one_of(line_text, st.integers(), st.booleans()), max_size=2), max_size=2,
        ),
        "kbs_nvidia_verifier": st.sampled_from(["Remote", "Local"]),
        "kbs_lab_permissive": st.booleans(),
        "kbs_policy_file": maybe_file,
        "kbs_admin_key_file": maybe_file,
        "kbs_reference_values_file": maybe_file,
    },
)


@settings(max_examples=250, deadline=None)
@given(data=kbs_data, lab=st.booleans())
@example(data={"kbs_policy_file": "~ccf-no-such-user/policy.rego"}, lab=False)  # found by this test: RuntimeError
def test_kbs_settings_accept_only_what_they_can_use_and_name_the_key(data, lab):
    try:  # what the inventory validator lets through is what the stage sees
        HostData(**data)
    except Exception:  # noqa: BLE001 - the validator refuses it first (covered above)
        assume(False)
    try:
        settings_ = kbs_settings(_kbs_cfg("https://kbs-01:8443", lab), data)
    except KbsSettingsError as exc:
        lines = str(exc).splitlines()
        assert lines[0].startswith("KBS settings are not usable, nothing was touched")
        for line in lines[1:]:
            assert re.match(r"  - kbs-01: kbs_[a-z_]+(\[[^\]]*\])?: ", line), line
    else:
        assert all(_kbs_rule(p) for p in settings_.resources)
        assert all(_kbs_rule(p) for p in settings_.gpu_resources or ())
        assert settings_.lab_permissive <= lab
        assert settings_.nvidia_verifier in ("Remote", "Local")


VALID_WORKER = {
    "bmc_vendor": "dell", "bmc_address": "10.0.0.5", "bmc_username": "root", "bmc_password_env": "BMC_W1",
    "gpu_count": 8, "gpu_model": "H100", "kbs_url": "https://kbs.example.net:8443",
}  # fmt: skip
WORKER_GROUPS = ("workers", "snp", "gpu")
wrong_typed = st.one_of(st.just([]), st.just({}), st.just(object.__name__), st.floats(allow_nan=True), st.just(-1))


@settings(max_examples=250, deadline=None)
@given(key=st.sampled_from(KEYS), value=wrong_typed)
def test_one_bad_key_in_a_valid_worker_is_named_with_its_host(key, value):
    from ccfactory.config import load_fleet

    data = {**VALID_WORKER, key: value}
    try:
        fleet = load_fleet([("w1", WORKER_GROUPS, data), ("w2", WORKER_GROUPS, {**VALID_WORKER, "bmc_address": "10.0.0.6"})],
                           check_files=False)
    except InventoryError as exc:
        assert {p.host for p in exc.problems} <= {"w1", "w2"}
        assert all(p.host == "w1" or p.field == "reboot_batch_size" for p in exc.problems), exc
        assert exc.problems
    else:  # accepted: the value was valid for that key, and it is what the config holds
        assert set(fleet) == {"w1", "w2"}
