# appliance/: the rackdisk CLI (and, later, rackdiskd).
PROGRAMS += $(BUILD)/rackdisk

$(BUILD)/rackdisk: $(call obj,appliance/rackdisk.c) $(RD_LIBS)
	$(CC) $(LDFLAGS) $(filter %.o,$^) -o $@ $(RD_LIBS) $(LDLIBS)
