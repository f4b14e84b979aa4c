"""Dataverse's error responses: status, hex code and message, as clients see them.

Messages follow ``shared/reference/dataverse-web-api.md`` section 5, which quotes the
Dataverse docs and support articles. Where Dataverse documents no code, the choice made
here is marked "(inferred)".
"""

from __future__ import annotations

from typing import Any


class DataverseFault(Exception):
    """An error answered the way Dataverse answers it: ``{"error": {"code", "message"}}``."""

    def __init__(
        self,
        status: int,
        code: str,
        message: str,
        *,
        headers: dict[str, str] | None = None,
    ) -> None:
        super().__init__(message)
        self.status = status
        self.code = code
        self.message = message
        self.headers = headers or {}
        self.processed = 0  # bulk targets executed before this one failed (costs)

    def body(self) -> dict[str, Any]:
        return {"error": {"code": self.code, "message": self.message}}


def not_found(logical: str, record_id: str) -> DataverseFault:
    # "account With Id = <id> Does Not Exist": conditional-operations docs.
    return DataverseFault(404, "0x80040217", f"{logical} With Id = {record_id} Does Not Exist")


def too_long(logical: str, attribute: str, max_length: int) -> DataverseFault:
    # Two spaces after "occurred." exactly as in the execute-batch docs' example.
    return DataverseFault(
        400,
        "0x80044331",
        f"A validation error occurred.  The length of the '{attribute}' attribute of the "
        f"'{logical}' entity exceeded the maximum allowed length of '{max_length}'.",
    )


def invalid_choice(
    logical: str, attribute: str, value: object, accepted: list[int]
) -> DataverseFault:
    # Code and shape from the Project Operations docs (reference section 5).
    values = ",".join(str(v) for v in accepted)
    return DataverseFault(
        400,
        "0x8004431a",
        f"A validation error occurred. The value {value} of '{attribute}' on record of type "
        f"'{logical}' is outside the valid range. Accepted Values: {values}.",
    )


def out_of_range(
    logical: str, attribute: str, value: object, low: object, high: object
) -> DataverseFault:
    # (inferred) The shape of invalid_choice's message, with the range Dataverse
    # quotes for numbers ("is outside the valid range(-100000000000 to 100000000000)").
    return DataverseFault(
        400,
        "0x8004431a",
        f"A validation error occurred. The value {value} of '{attribute}' on record of type "
        f"'{logical}' is outside the valid range({low} to {high}).",
    )


def duplicate_detected() -> DataverseFault:
    # manage-duplicate-detection-create-update.md shows this as a 500.
    return DataverseFault(
        500,
        "0x80040333",
        "A record was not created or updated because a duplicate of the current record "
        "already exists.",
    )


def privilege_denied(user_id: str, privilege: str, otc: int, logical: str) -> DataverseFault:
    return DataverseFault(
        403,
        "0x80040220",
        f"Principal user (Id={user_id}, type=8, roleCount=1, privilegeCount=0, accessMode=4), "
        f"is missing {privilege} privilege (Id=00000000-0000-0000-0000-000000000000) "
        f"on OTC={otc} for entity '{logical}'.",
    )


def unknown_property(logical: str, name: str) -> DataverseFault:
    return DataverseFault(
        400,
        "0x0",
        f"Could not find a property named '{name}' on type 'Microsoft.Dynamics.CRM.{logical}'.",
    )


def invalid_body_property(logical: str, name: str) -> DataverseFault:
    return DataverseFault(
        400,
        "0x0",
        "An error occurred while validating input parameters: Microsoft.Crm.CrmException: "
        f"Invalid property '{name}' was found in entity 'Microsoft.Dynamics.CRM.{logical}'.",
    )


def unknown_segment(segment: str) -> DataverseFault:
    return DataverseFault(404, "0x8006088a", f"Resource not found for the segment '{segment}'.")


def no_resource(url: str) -> DataverseFault:
    return DataverseFault(
        404, "", f"No HTTP resource was found that matches the request URI '{url}'."
    )


def bad_payload(entity_set: str, inner: str) -> DataverseFault:
    return DataverseFault(
        400,
        "0x80048d19",
        f"Error identified in Payload provided by the user for Entity :'{entity_set}'  ---->  "
        f"InnerException : {inner}",
    )


def bad_query(message: str) -> DataverseFault:
    # (inferred) Dataverse answers OData query errors with 0x80060888.
    return DataverseFault(400, "0x80060888", message)


def version_mismatch() -> DataverseFault:
    return DataverseFault(
        412,
        "",
        "The version of the existing record doesn't match the RowVersion property provided.",
    )


def already_exists() -> DataverseFault:
    return DataverseFault(412, "", "A record with matching key values already exists.")


def delta_expired() -> DataverseFault:
    # Message from MicrosoftDocs/powerapps-docs#3845; status and code undocumented:
    # 400 and ExpiredVersionStamp 0x80044352 (inferred).
    return DataverseFault(
        400,
        "0x80044352",
        "Version stamp associated with the client has expired. Please perform a full sync.",
    )


def track_changes_option(option: str) -> DataverseFault:
    return DataverseFault(
        400,
        "0x80060888",
        f'The "{option}" query parameter isn\'t supported when Change Tracking is enabled.',
    )


def too_many_requests(limit: int, window_s: float, retry_after: int) -> DataverseFault:
    return DataverseFault(
        429,
        "0x80072322",
        f"Number of requests exceeded the limit of {limit} over time window of "
        f"{_seconds(window_s)} seconds.",
        headers={"Retry-After": str(retry_after)},
    )


def execution_time_exceeded(limit_ms: int, window_s: float, retry_after: int) -> DataverseFault:
    # Two spaces before "milliseconds" as in api-limits.md.
    return DataverseFault(
        429,
        "0x80072321",
        f"Combined execution time of incoming requests exceeded limit of {limit_ms:,}  "
        f"milliseconds over time window of {_seconds(window_s)} seconds. Decrease number of "
        "concurrent requests or reduce the duration of requests and try again later.",
        headers={"Retry-After": str(retry_after)},
    )


def too_many_concurrent(limit: int, retry_after: int) -> DataverseFault:
    return DataverseFault(
        429,
        "0x80072326",
        f"Number of concurrent requests exceeded the limit of {limit}.",
        headers={"Retry-After": str(retry_after)},
    )


def unavailable() -> DataverseFault:
    # (inferred) Dataverse documents 503 without a body shape; this one is the emulator's.
    return DataverseFault(503, "", "The service is temporarily unavailable (injected fault).")


def _seconds(window_s: float) -> str:
    return str(int(window_s)) if float(window_s).is_integer() else str(window_s)
