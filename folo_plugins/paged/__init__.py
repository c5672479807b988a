"""Plugin ``paged``: block pool, paged KV-cache manager (with prefix caching) and the
paged SDPA attention backend, the CPU default."""

from folo_core.hookspecs import hookimpl
from folo_plugins.paged.attention import PagedSDPABackend
from folo_plugins.paged.kv_cache_manager import PagedKVCacheManager


@hookimpl
def register_kv_cache_managers(register):
    register("paged", PagedKVCacheManager, priority=100)


@hookimpl
def register_attention_backends(register):
    register(PagedSDPABackend.name, PagedSDPABackend, priority=50)
