"""Objects and fields as data: the default mapping, a user's additions, and their checks."""

from crmsync.mapping.build import MappingError, build, default_objects

__all__ = ["MappingError", "build", "default_objects"]
