# target/fetch_proto.c: the fetch socket's request lines, read by rackdiskd (appliance/
# fetchsrv.c) and written by the module (fetch_client.c); part of libtarget.
TARGET_SRCS += target/fetch_proto.c
