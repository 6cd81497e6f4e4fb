# tests/boottrace: the boot image and its read trace (issue 6, "Boot trace").
#
#   make build/boot/boot.raw     a small bootable Debian-kernel + busybox disk image
#   make build/boot/boot.trace   boots it under QEMU (TCG) from a rackdisk LUN and saves
#                                the reads the guest issued (target/trace.h format)
BOOT_DIR := build/boot

$(BOOT_DIR)/boot.raw: images/mkbootimage.sh $(wildcard images/boot/*)
	bash images/mkbootimage.sh $@

$(BOOT_DIR)/boot.trace: $(BOOT_DIR)/boot.raw tests/boottrace/record.py \
		tests/boottrace/tracefile.py $(BUILD)/rackdiskd $(BUILD)/rackdisk $(BUILD)/bs_rackdisk.so
	$(PYTHON) tests/boottrace/record.py --image $(BOOT_DIR)/boot.raw --out $@
