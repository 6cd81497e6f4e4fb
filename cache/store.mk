# cache/store.mk: the chunk store, its eviction policy and the libaio read layer.
CACHE_SRCS += cache/chunkstore.c cache/chunkstore_scan.c cache/chunkstore_fdcache.c cache/evict.c cache/aio.c
