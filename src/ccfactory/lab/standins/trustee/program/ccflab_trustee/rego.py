"""Rego evaluation with regorus, as Trustee v0.21.0's policy engine does it.

Upstream: ``deps/policy-engine/src/policy/rego.rs:202-279`` (trustee@v0.21.0): a fresh
``regorus::Engine`` per evaluation, ``add_policy("", policy)``, optional ``add_data(data)``,
``set_input_json(input)``, then ``eval_rule`` for each rule; a "not a valid rule path" error
means "rule not defined" (``None``), any other error fails the evaluation. Trustee builds
regorus 0.10.1 with its default Rego v1 syntax (``Cargo.toml:50``; no ``set_rego_v0`` call
anywhere in the tree); the stand-in uses the ``regorus`` Python module (same engine, PyPI
``celine-regorus``), whose ``Engine()`` has the same default.

``query_reference_value(id)`` is a regorus *extension* the built-in AS registers
(``attestation-service/src/ear_token/broker.rs:170-236``): it returns the RVPS value or
``null``. The Python module cannot register extensions, so the stand-in adds a Rego
function of that name to the policy's package(s) that reads the values from a private data
document (``data.ccflab_rvps``); same results for every id.
"""

from __future__ import annotations

import json
import os

os.environ.setdefault("RUST_BACKTRACE", "0")  # regorus (anyhow) errors without backtraces

import regorus  # noqa: E402  (packed under lib/regorus by the stand-in's tarball)

RV_DOCUMENT = "ccflab_rvps"


class RegoError(Exception):
    """``PolicyError`` of deps/policy-engine/src/error.rs (``kind`` = variant, message = Display)."""

    def __init__(self, kind: str, message: str):
        super().__init__(message)
        self.kind = kind


def _clean(exc: Exception) -> str:
    return str(exc).split("\n\nStack backtrace:")[0].strip()


def evaluate(policy: str, data: dict | None, input_json: str, rules: list[str],
             reference_values: dict | None = None) -> dict:  # fmt: skip
    """``Regorus::evaluate`` (rego.rs:202-279); returns ``{rule: value or None}``."""
    engine = regorus.Engine()
    try:
        engine.add_policy("", policy)
    except Exception as exc:  # noqa: BLE001 - regorus raises RuntimeError/ValueError
        raise RegoError("LoadPolicyFailed", f"Failed to load policy: {_clean(exc)}") from None
    if reference_values is not None:
        for package in engine.get_packages():
            helper = (f"package {package.removeprefix('data.')}\n\n"
                      f"query_reference_value(id) := object.get(data.{RV_DOCUMENT}, id, null)\n")  # fmt: skip
            try:
                engine.add_policy(f"ccflab-query-reference-value-{package}.rego", helper)
            except Exception as exc:  # noqa: BLE001
                raise RegoError("AddRegorusExtensionFailed", "Failed to add regorus extension: "
                                f"query_reference_value with id 1: {_clean(exc)}") from None  # fmt: skip
        data = {**(data or {}), RV_DOCUMENT: reference_values}
    if data is not None:
        try:
            engine.add_data_json(json.dumps(data))
        except Exception as exc:  # noqa: BLE001
            raise RegoError("LoadReferenceDataFailed", f"Failed to load reference data: {_clean(exc)}") from None
    try:
        engine.set_input_json(input_json)
    except Exception as exc:  # noqa: BLE001
        raise RegoError("SetInputDataFailed", f"Failed to set input data: {_clean(exc)}") from None
    results: dict = {}
    for rule in rules:
        try:
            text = engine.eval_rule_as_json(rule)
        except Exception as exc:  # noqa: BLE001
            message = _clean(exc)
            if "not a valid rule path" in message:
                results[rule] = None
                continue
            raise RegoError("EvalPolicyFailed", f"Failed to eval policy: {message}") from None
        # as rego.rs:263-266: serde_json::to_value(regorus::Value); an undefined result is
        # regorus' serialisation of Value::Undefined, the string "<undefined>" (not a bool)
        results[rule] = json.loads(text)
    return results


def module_origin() -> str:
    return os.path.dirname(regorus.__file__)
