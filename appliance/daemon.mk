# appliance/: rackdiskd (the daemon) and libappliance.a, the pieces it shares with the CLI
# and the unit tests (config, disk records, request validation, ...).
APPLIANCE_SRCS := appliance/config.c appliance/diskrec.c appliance/api_req.c \
	appliance/images_local.c appliance/disks.c appliance/chap.c appliance/exports.c \
	appliance/fetchsrv.c appliance/metrics.c appliance/api.c
LIBAPPLIANCE := $(BUILD)/libappliance.a

PROGRAMS += $(BUILD)/rackdiskd

$(LIBAPPLIANCE): $(call obj,$(APPLIANCE_SRCS))
	@mkdir -p $(dir $@)
	@rm -f $@
	$(AR) rcs $@ $^

$(BUILD)/rackdiskd: $(call obj,appliance/rackdiskd.c) $(LIBAPPLIANCE) $(RD_LIBS)
	$(CC) $(LDFLAGS) $(filter %.o,$^) -o $@ $(LIBAPPLIANCE) $(RD_LIBS) $(LDLIBS)

# Unit tests of appliance/ also need libappliance.a (the generic rule links RD_LIBS only).
APPLIANCE_UNIT := $(patsubst tests/unit/%.c,$(BUILD)/tests/unit/%,$(wildcard tests/unit/appliance/test_*.c))
$(APPLIANCE_UNIT): $(BUILD)/tests/unit/appliance/%: tests/unit/appliance/%.c $(LIBAPPLIANCE) $(RD_LIBS)
	@mkdir -p $(dir $@)
	$(CC) $(CPPFLAGS) $(CFLAGS) $< -o $@ $(LDFLAGS) $(LIBAPPLIANCE) $(RD_LIBS) $(LDLIBS) -lcmocka
