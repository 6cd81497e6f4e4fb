# cache/: the copy-on-write overlay and the disk (the chunk store has its own fragment).
CACHE_SRCS += cache/overlay.c cache/disk.c
