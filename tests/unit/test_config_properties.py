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
