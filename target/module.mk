# target/: the tgt backing-store module, build/bs_rackdisk.so.
#
# lunconf.c, fetch_client.c and lun.c know nothing of tgt and live in libtarget (unit
# tests link them); bs_rackdisk.c is compiled against the headers of the installed tgt
# version ($(TGT_SRC)/usr, `make deps`), with the defines Debian's tgt build uses, because
# the module's private data sits right after tgt's struct scsi_lu.
TARGET_SRCS += target/lunconf.c target/fetch_client.c target/lun.c
EXTRA_ALL   += $(BUILD)/bs_rackdisk.so

# USE_SYSTEMD (Debian builds with SD_NOTIFY=1) only adds an #include of sd-daemon.h to
# tgtd.h and changes no type, so it is left out rather than adding libsystemd-dev.
TGT_DEFS := -DUSE_SIGNALFD -DUSE_TIMERFD -DUSE_EVENTFD -fno-strict-aliasing
BS_RACKDISK_OBJ := $(call obj,target/bs_rackdisk.c)
BS_RACKDISK_LIBS := $(LIBTARGET) $(LIBCACHE) $(LIBIMAGES) $(LIBCOMMON)

$(BS_RACKDISK_OBJ): CPPFLAGS += -isystem $(TGT_SRC)/usr $(TGT_DEFS)
# The stamp changes when `make deps` fetches another tgt version's source (the headers'
# own times come from the tarball and may be older than the object).
$(BS_RACKDISK_OBJ): $(TGT_SRC)/usr/tgtd.h $(BUILD)/deps/tgt.version

$(BUILD)/bs_rackdisk.so: $(BS_RACKDISK_OBJ) $(BS_RACKDISK_LIBS) target/bs_rackdisk.map
	$(CC) -shared -fPIC $(LDFLAGS) -Wl,--version-script=target/bs_rackdisk.map \
		-Wl,--as-needed $(BS_RACKDISK_OBJ) $(BS_RACKDISK_LIBS) $(LDLIBS) -o $@
	@bash target/check-module.sh $@

# Checks the module links against what tgtd provides (part of `make test`).
.PHONY: check-bs-rackdisk
TEST_TARGETS += check-bs-rackdisk
check-bs-rackdisk: $(BUILD)/bs_rackdisk.so
	@bash target/check-module.sh $<
