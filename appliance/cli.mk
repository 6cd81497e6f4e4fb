# appliance/: the rackdisk CLI. Its daemon commands (cli.c) talk to rackdiskd's API; fsck
# and config parsing come from libappliance.a (appliance/daemon.mk).
PROGRAMS += $(BUILD)/rackdisk

CLI_SRCS := appliance/rackdisk.c appliance/cli.c appliance/fsck_cmd.c

$(BUILD)/rackdisk: $(call obj,$(CLI_SRCS)) $(BUILD)/libappliance.a $(RD_LIBS)
	$(CC) $(LDFLAGS) $(filter %.o,$^) -o $@ $(BUILD)/libappliance.a $(RD_LIBS) $(LDLIBS)
