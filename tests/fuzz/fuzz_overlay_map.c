/*
 * fuzz_overlay_map.c - libFuzzer target for the overlay map parser (cache/overlay.c).
 *
 * The input is a whole overlay.map image. Whatever it holds, overlay_parse() must return
 * 0 or a negative errno without crashing, leaking or reading out of bounds; when it
 * accepts the map, every grain must be in a valid state and runs must agree with the
 * states one by one.
 */
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>

#include "cache/overlay.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	struct overlay *o = NULL;
	uint64_t n, g = 0;

	if (overlay_parse(data, size, NULL, NULL, &o) < 0)
		return 0;
	n = overlay_ngrains(o);
	/* Walk by runs (bounded: at most 64 Ki runs), checking each run's ends. */
	for (int i = 0; g < n && i < 65536; i++) {
		enum overlay_state st, st2;
		uint64_t run = overlay_run(o, g, n - g, &st);

		if (run == 0 || run > n - g || st > OVL_ZERO)
			abort();
		st2 = overlay_state_of(o, g + run - 1);
		if (st2 != st)
			abort();
		if (g + run < n && overlay_state_of(o, g + run) == st)
			abort(); /* a run stops only where the state changes */
		g += run;
	}
	overlay_close(o);
	return 0;
}
