"""Objects and fields as data: the default mapping, a user's additions, and their checks."""

from crmsync.mapping.build import MappingError, build, default_objects
from crmsync.mapping.registry import activate, active, spec_of

__all__ = ["MappingError", "activate", "active", "build", "default_objects", "spec_of"]
