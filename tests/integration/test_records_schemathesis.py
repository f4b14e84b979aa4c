"""Schemathesis over the records API's own OpenAPI: no 500s, responses match the schema.

Bounded (a few examples per operation) so that it stays a fast part of the suite; the
records API tests cover the behaviour in detail. Runs on SQLite and PostgreSQL.
"""

from __future__ import annotations

import pytest
import schemathesis
from hypothesis import HealthCheck, given, settings
from schemathesis.specs.openapi.checks import positive_data_acceptance

from crmsync.config import load_settings
from crmsync.mapping import activate, default_objects
from crmsync.store import migrate
from crmsync.web.app import create_app

TOKEN = "schemathesis-token"
AUTH = {"Authorization": f"Bearer {TOKEN}"}
# Per-object routes whose schemas say all there is: no lookups (which must name an
# existing record) and no decimals (a JSON number's places are not a schema's to limit).
# Their writes, that is (a cursor is opaque: any string fits the schema, not every one
# is a cursor this API returned).
TYPED = {"POST /api/v1/records/lead", "PATCH /api/v1/records/lead/{id}"}


# Every field type, on a standard object and a custom one with a lookup.
MAPPING = {
    "lead": {
        "fields": {
            "score": {"attribute": "new_score", "type": "integer", "minimum": 0, "maximum": 100},
            "rating": {"attribute": "new_rating", "type": "choice", "choices": {"hot": 1}},
            "vip": {"attribute": "new_vip", "type": "boolean"},
            "met_on": {"attribute": "new_meton", "type": "date"},
            "seen_at": {"attribute": "new_seenat", "type": "datetime"},
            "notes": {"attribute": "new_notes", "type": "memo", "max_length": 2000},
        }
    },
    "event_registration": {
        "entity_set": "new_eventregistrations",
        "logical_name": "new_eventregistration",
        "primary_key": "new_eventregistrationid",
        "label": "name",
        "fields": {
            "name": {"attribute": "new_name", "type": "string", "max_length": 20},
            "fee": {"attribute": "new_fee", "type": "decimal", "precision": 2},
            "budget": {"attribute": "new_budget", "type": "money"},
            "contact_id": {"type": "lookup", "target": "contact", "attribute": "new_contactid"},
        },
    },
}


@pytest.fixture(autouse=True)
def _default_mapping_after():
    yield
    activate(default_objects())


def test_records_api_conforms_to_its_openapi(db_url, engine):
    mapped = load_settings(database_url=db_url, api_token=TOKEN, objects=MAPPING)
    migrate.upgrade(engine, mapped.object_specs().values())
    app = create_app(mapped, engine=engine)
    schema = schemathesis.openapi.from_asgi("/api/v1/openapi.json", app)
    operations = [result.ok() for result in schema.get_all_operations()]
    assert {op.label for op in operations} >= {
        "POST /api/v1/records/{object}",
        "GET /api/v1/records/{object}",
        "GET /api/v1/records/{object}/{id}",
        "PATCH /api/v1/records/{object}/{id}",
        "DELETE /api/v1/records/{object}/{id}",
        "POST /api/v1/records/lead",
        "PATCH /api/v1/records/event_registration/{id}",
    }
    # The per-object paths are the {object} routes again: only their typed bodies are new.
    typed_paths = {f"/api/v1/records/{name}" for name in mapped.object_specs()}
    typed_paths |= {f"{path}/{{id}}" for path in typed_paths}
    for operation in operations:
        if operation.path in typed_paths and operation.method.upper() not in ("POST", "PATCH"):
            continue

        @given(case=operation.as_strategy())
        @settings(
            max_examples=25,
            deadline=None,
            database=None,
            suppress_health_check=list(HealthCheck),
        )
        def conforms(case: schemathesis.Case) -> None:
            # On the shared {object} route the body's fields depend on the object in the
            # path, and a lookup (account_id) must name an existing record, which a JSON
            # schema cannot say: there schema-valid bodies are legitimately refused.
            # Every body valid for an object without lookups must be taken.
            case.call_and_validate(
                headers=AUTH,
                excluded_checks=[] if operation.label in TYPED else [positive_data_acceptance],
            )

        conforms()
