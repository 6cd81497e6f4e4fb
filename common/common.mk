COMMON_SRCS += common/hash.c common/util.c common/log.c common/hugebuf.c
