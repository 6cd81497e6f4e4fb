# target/trace.c: the read trace of a LUN (lun.json "trace"), part of libtarget.
TARGET_SRCS += target/trace.c
