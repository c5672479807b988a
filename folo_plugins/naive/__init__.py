"""Plugin ``naive``: the reference attention backend, KV-cache manager and scheduler.

Clear and slow on purpose; the faster plugins are tested against these.
"""

from folo_core.hookspecs import hookimpl
from folo_plugins.naive.attention import NaiveAttentionBackend
from folo_plugins.naive.kv_cache_manager import NaiveKVCacheManager
from folo_plugins.naive.scheduler import SimpleScheduler


@hookimpl
def register_attention_backends(register):
    register(NaiveAttentionBackend.name, NaiveAttentionBackend, priority=0)


@hookimpl
def register_kv_cache_managers(register):
    register("naive", NaiveKVCacheManager, priority=0)


@hookimpl
def register_schedulers(register):
    register("simple", SimpleScheduler, priority=0)
