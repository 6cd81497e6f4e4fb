# Unit tests of images/ that need more than the pattern rule in the top-level Makefile.

# Fault injection on publish's reads of its input and its fstat of a converted qcow2 (the
# test defines the wrappers; with a 64-bit off_t, fstat is fstat64).
$(BUILD)/tests/unit/images/test_publish_faults: LDFLAGS += -Wl,--wrap=read -Wl,--wrap=fstat64

# A file replaced at its path while qemu-img runs (the test wraps posix_spawnp), or growing
# while it is copied (ioctl: FICLONE; copy_file_range counts the bytes copied).
$(BUILD)/tests/unit/images/test_source: LDFLAGS += -Wl,--wrap=posix_spawnp -Wl,--wrap=ioctl \
	-Wl,--wrap=copy_file_range

# publish's sweep of tmp/ where flock answers as NFSv4 does, or fails (the test wraps flock).
$(BUILD)/tests/unit/images/test_publish_sweep: LDFLAGS += -Wl,--wrap=flock
