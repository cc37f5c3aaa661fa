"""`CacheLoadError` lives in `resilience_kit.errors`; re-exported here for the caching package."""

from resilience_kit.errors import CacheLoadError as CacheLoadError

__all__ = ("CacheLoadError",)
