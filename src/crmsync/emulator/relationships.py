"""Relationship definitions: each lookup is a one-to-many relationship between its table
(referencing) and its target (referenced), named as on Dataverse's standard tables
(``contact_customer_accounts``, ``opportunity_parent_account``) or ``lk_<table>_<column>``
for the system's user lookups. Used by ``EntityDefinitions``, ``$metadata`` and ``$expand``.
"""

from __future__ import annotations

import uuid
from typing import Any

from crmsync.emulator.conditions import logical_name
from crmsync.emulator.model import ENTITIES, LOOKUP, Entity

Row = dict[str, Any]


def _id(*parts: str) -> str:
    return str(uuid.uuid5(uuid.NAMESPACE_URL, "crmsync-emulator/" + "/".join(parts)))


def relationship_name(entity_logical: str, attr_name: str) -> str:
    """Schema names of the standard relationships; ``lk_<table>_<column>`` for users."""
    known = {
        "parentcustomerid": "contact_customer_accounts",
        "parentaccountid": "opportunity_parent_account",
    }
    return known.get(attr_name, f"lk_{entity_logical}_{attr_name}")


def relationships(e: Entity, side: str) -> list[Row]:
    """``ManyToOne`` (this table's lookups) or ``OneToMany`` (lookups pointing at it)."""
    out = []
    for other in ENTITIES.values():
        for attr in other.attributes.values():
            if attr.type != LOOKUP or not attr.target:
                continue
            target = ENTITIES[attr.target]
            if (side == "ManyToOne" and other is not e) or (
                side == "OneToMany" and target is not e
            ):
                continue
            name = logical_name(attr)
            schema = relationship_name(other.logical, name)
            out.append(
                {
                    "MetadataId": _id("relationship", schema),
                    "SchemaName": schema,
                    "RelationshipType": "OneToManyRelationship",
                    "ReferencedEntity": target.logical,
                    "ReferencedAttribute": target.primary_id,
                    "ReferencingEntity": other.logical,
                    "ReferencingAttribute": name,
                    "ReferencedEntityNavigationPropertyName": schema,
                    "ReferencingEntityNavigationPropertyName": attr.navigation or name,
                    "IsCustomRelationship": False,
                    "IsManaged": True,
                }
            )
    return out
