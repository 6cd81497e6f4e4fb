# cluster/: seed client and fetcher (this fragment); the directory and peers add their
# own fragments.
CLUSTER_SRCS += cluster/seed.c cluster/fetcher.c
