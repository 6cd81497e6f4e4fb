# Unit tests of images/ that need more than the pattern rule in the top-level Makefile.

# Fault injection on publish's reads of its input (the test defines the wrapper).
$(BUILD)/tests/unit/images/test_publish_faults: LDFLAGS += -Wl,--wrap=read
