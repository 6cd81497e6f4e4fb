/*
 * test_hugebuf.c - hugebuf: 2 MiB-aligned buffers that grow, keep their contents, and stay
 * mapped.
 */
#include <errno.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <string.h>

#include <cmocka.h>

#include "common/hugebuf.h"

static void test_reserve_aligns_and_rounds_up(void **state)
{
	struct hugebuf b = {0};

	assert_int_equal(hugebuf_reserve(&b, 1), 0);
	assert_non_null(b.p);
	assert_int_equal((uintptr_t)b.p % HUGEBUF_ALIGN, 0);
	assert_int_equal(b.cap, HUGEBUF_ALIGN);
	memset(b.p, 0xab, b.cap);
	hugebuf_release(&b);
	assert_null(b.p);
	assert_int_equal(b.cap, 0);
}

static void test_reserve_within_cap_keeps_the_mapping(void **state)
{
	struct hugebuf b = {0};
	void *p;

	assert_int_equal(hugebuf_reserve(&b, 1024 * 1024 + 4096), 0);
	p = b.p;
	assert_int_equal(hugebuf_reserve(&b, HUGEBUF_ALIGN), 0);
	assert_ptr_equal(b.p, p);
	assert_int_equal(hugebuf_reserve(&b, 0), 0);
	assert_ptr_equal(b.p, p);
	hugebuf_release(&b);
}

static void test_growing_keeps_the_contents(void **state)
{
	struct hugebuf b = {0};
	size_t first;

	assert_int_equal(hugebuf_reserve(&b, 100), 0);
	first = b.cap;
	for (size_t i = 0; i < first; i++)
		((uint8_t *)b.p)[i] = (uint8_t)(i * 7);
	assert_int_equal(hugebuf_reserve(&b, 3 * HUGEBUF_ALIGN + 1), 0);
	assert_int_equal(b.cap, 4 * HUGEBUF_ALIGN);
	assert_int_equal((uintptr_t)b.p % HUGEBUF_ALIGN, 0);
	for (size_t i = 0; i < first; i++)
		assert_int_equal(((uint8_t *)b.p)[i], (uint8_t)(i * 7));
	/* the new part is writable to its end */
	memset((uint8_t *)b.p + first, 1, b.cap - first);
	hugebuf_release(&b);
	hugebuf_release(&b); /* releasing an empty buffer is a no-op */
}

static void test_impossible_size_fails_and_leaves_the_buffer(void **state)
{
	struct hugebuf b = {0};
	void *p;

	assert_int_equal(hugebuf_reserve(&b, 10), 0);
	p = b.p;
	assert_int_equal(hugebuf_reserve(&b, SIZE_MAX - 10), -ENOMEM);
	/* larger than the address space: mmap fails */
	assert_int_equal(hugebuf_reserve(&b, (size_t)1 << 62), -ENOMEM);
	assert_ptr_equal(b.p, p);
	assert_int_equal(b.cap, HUGEBUF_ALIGN);
	hugebuf_release(&b);
}

int main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test(test_reserve_aligns_and_rounds_up),
		cmocka_unit_test(test_reserve_within_cap_keeps_the_mapping),
		cmocka_unit_test(test_growing_keeps_the_contents),
		cmocka_unit_test(test_impossible_size_fails_and_leaves_the_buffer),
	};

	return cmocka_run_group_tests(tests, NULL, NULL);
}
