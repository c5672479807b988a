"""KV-cache manager contract."""

from folo_core.kv_cache.interface import KVCacheManager, PrefixCacheStats

__all__ = ["KVCacheManager", "PrefixCacheStats"]
