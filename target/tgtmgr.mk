# target/tgtmgr: drives tgtd (spawn, supervise, tgtadm calls); part of libtarget.
TARGET_SRCS += target/tgtmgr.c
