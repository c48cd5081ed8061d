"""Redfish error bodies: DMTF Base registry messages and the exception that carries them.

Every 4xx/5xx the lab BMC answers has the DMTF shape
``{"error": {"code", "message", "@Message.ExtendedInfo": [Message, ...]}}`` so a client
can show *which* attribute failed and why. Message texts follow the DMTF Base message
registry (Base.1.x); the lab only fills in the arguments.

Example::

    >>> err = RedfishError(400, [message("PropertyNotWritable", "Rmp", prop="Rmp")])
    >>> err.body()["error"]["@Message.ExtendedInfo"][0]["MessageId"]
    'Base.1.0.PropertyNotWritable'
"""

from __future__ import annotations

from typing import Any

# MessageId suffix -> (message template with %1.., severity, resolution). DMTF Base registry.
BASE_MESSAGES: dict[str, tuple[str, str, str]] = {
    "Success": ("Successfully Completed Request", "OK", "None"),
    "GeneralError": (
        "A general error has occurred. See Resolution for information on how to resolve the error.",
        "Critical",
        "None.",
    ),
    "InternalError": (
        "The request failed due to an internal service error.  The service is still operational.",
        "Critical",
        "Resubmit the request.  If the problem persists, consider resetting the service.",
    ),
    "ServiceTemporarilyUnavailable": (
        "The service is temporarily unavailable.  Retry in %1 seconds.",
        "Critical",
        "Wait for the indicated retry duration and retry the operation.",
    ),
    "MalformedJSON": (
        "The request body submitted was malformed JSON and could not be parsed by the receiving service.",
        "Critical",
        "Ensure that the request body is valid JSON and resubmit the request.",
    ),
    "PropertyUnknown": (
        "The property %1 is not in the list of valid properties for the resource.",
        "Warning",
        "Remove the unknown property from the request body and resubmit the request if the operation failed.",
    ),
    "PropertyNotWritable": (
        "The property %1 is a read only property and cannot be assigned a value.",
        "Warning",
        "Remove the property from the request body and resubmit the request if the operation failed.",
    ),
    "PropertyValueNotInList": (
        "The value %1 for the property %2 is not in the list of acceptable values.",
        "Warning",
        "Choose a value from the enumeration list that the implementation can support and resubmit the "
        "request if the operation failed.",
    ),
    "PropertyValueTypeError": (
        "The value %1 for the property %2 is of a different type than the property can accept.",
        "Warning",
        "Correct the value for the property in the request body and resubmit the request if the operation failed.",
    ),
    "PropertyValueOutOfRange": (
        "The value %1 for the property %2 is not in the supported range of acceptable values.",
        "Warning",
        "Correct the value for the property in the request body and resubmit the request if the operation failed.",
    ),
    "PropertyValueFormatError": (
        "The value %1 for the property %2 is of a different format than the property can accept.",
        "Warning",
        "Correct the value for the property in the request body and resubmit the request if the operation failed.",
    ),
    "PropertyMissing": (
        "The property %1 is a required property and must be included in the request.",
        "Warning",
        "Ensure that the property is in the request body and has a valid value and resubmit the request if "
        "the operation failed.",
    ),
    "PreconditionFailed": (
        "The ETag supplied did not match the ETag required to change this resource.",
        "Critical",
        "Try the operation again using the appropriate ETag.",
    ),
    "OperationNotAllowed": (
        "The HTTP method is not allowed on this resource.",
        "Critical",
        "None.",
    ),
    "ResourceNotFound": (
        "The requested resource of type %1 named %2 was not found.",
        "Critical",
        "Provide a valid resource identifier and resubmit the request.",
    ),
    "ResourceInUse": (
        "The change to the requested resource failed because the resource is in use or in transition.",
        "Warning",
        "Remove the condition and resubmit the request if the operation failed.",
    ),
    "ActionParameterMissing": (
        "The action %1 requires the parameter %2 to be present in the request body.",
        "Critical",
        "Supply the action with the required parameter in the request body when the request is resubmitted.",
    ),
    "ActionParameterValueNotInList": (
        "The value %1 for the parameter %2 in the action %3 is not in the list of acceptable values.",
        "Warning",
        "Choose a value from the enumeration list that the implementation can support and resubmit the "
        "request if the operation failed.",
    ),
    "NoValidSession": (
        "There is no valid session established with the implementation.",
        "Critical",
        "Establish a session before attempting any operations.",
    ),
    "SessionTerminated": ("The session was successfully terminated.", "OK", "No resolution is required."),
    "SettingsFailed": (
        "Settings update failed.",
        "Critical",
        "Fix the settings and retry.",
    ),
}


def message(
    key: str,
    *args: Any,
    prop: str | None = None,
    registry: str = "Base.1.0",
    text: str | None = None,
    severity: str | None = None,
    resolution: str | None = None,
    message_id: str | None = None,
) -> dict[str, Any]:
    """One ``Message`` object for ``@Message.ExtendedInfo`` or ``@Redfish.Settings.Messages``.

    ``prop`` names a BIOS attribute (rendered as ``#/Attributes/<prop>``) or, if it starts
    with ``#/``, a JSON pointer used as is.

    Example: ``message("PropertyValueNotInList", "Maybe", "Sme", prop="Sme")``
    """
    template, default_severity, default_resolution = BASE_MESSAGES.get(key, ("%1", "Warning", "None."))
    if text is None:
        text = template
        for i, arg in enumerate(args, start=1):
            text = text.replace(f"%{i}", str(arg))
    msg: dict[str, Any] = {
        "@odata.type": "#Message.v1_1_1.Message",
        "MessageId": message_id or f"{registry}.{key}",
        "Message": text,
        "MessageArgs": [str(a) for a in args],
        "Severity": severity or default_severity,
        "Resolution": resolution or default_resolution,
    }
    if prop is not None:
        msg["RelatedProperties"] = [prop if prop.startswith("#/") else f"#/Attributes/{prop}"]
    return msg


class RedfishError(Exception):
    """An HTTP error answered with a Redfish ``error`` body (never contains secrets).

    Example: ``raise RedfishError(412, [message("PreconditionFailed")])``
    """

    def __init__(
        self,
        status: int,
        messages: list[dict[str, Any]],
        *,
        headers: dict[str, str] | None = None,
        code: str | None = None,
    ) -> None:
        self.status = status
        self.messages = messages
        self.headers = headers or {}
        first = messages[0] if messages else message("GeneralError")
        # A single message makes the top-level code/message that one; several -> GeneralError.
        if len(messages) == 1:
            self.code = code or first["MessageId"]
            self.text = first["Message"]
        else:
            self.code = code or "Base.1.0.GeneralError"
            self.text = "A general error has occurred. See ExtendedInfo for more information."
        super().__init__(f"{status} {self.code}: {self.text}")

    def body(self) -> dict[str, Any]:
        """The JSON error body."""
        return {"error": {"code": self.code, "message": self.text, "@Message.ExtendedInfo": self.messages}}


def error_body(key: str = "GeneralError", *args: Any) -> dict[str, Any]:
    """A one-message error body (used outside Flask, e.g. by the WSGI middlewares).

    Example: ``error_body("ServiceTemporarilyUnavailable", 5)``
    """
    return RedfishError(500, [message(key, *args)]).body()
