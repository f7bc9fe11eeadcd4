/* Baseline for benchmarks/bench_map_ops.py: the same batched hash-map update
 * done straight against libbpf, so the benchmark can report how close the
 * Python layer gets to C.
 *
 * usage: batch_update N KEY_SIZE VALUE_SIZE CHUNK REPEATS
 * Keys are i * 2654435761 (as a little-endian u64 in the first 8 bytes),
 * values are filled with i; each repeat writes all N entries into a fresh
 * preallocated hash map. Prints the best wall time in ns: "update_ns <ns>". */
#include <errno.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>
#include <bpf/bpf.h>

static uint64_t now_ns(void)
{
	struct timespec ts;
	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (uint64_t)ts.tv_sec * 1000000000ull + ts.tv_nsec;
}

int main(int argc, char **argv)
{
	if (argc != 6) {
		fprintf(stderr, "usage: %s N KEY_SIZE VALUE_SIZE CHUNK REPEATS\n", argv[0]);
		return 2;
	}
	uint32_t n = strtoul(argv[1], NULL, 0), ks = strtoul(argv[2], NULL, 0);
	uint32_t vs = strtoul(argv[3], NULL, 0), chunk = strtoul(argv[4], NULL, 0);
	int repeats = atoi(argv[5]);
	char *keys = calloc(n, ks), *values = calloc(n, vs);
	uint64_t best = UINT64_MAX;

	if (!keys || !values || ks < 8 || vs < 8)
		return 2;
	for (uint32_t i = 0; i < n; i++) {
		uint64_t k = (uint64_t)i * 2654435761ull, v = i;
		memcpy(keys + (size_t)i * ks, &k, 8);
		memcpy(values + (size_t)i * vs, &v, 8);
	}
	LIBBPF_OPTS(bpf_map_batch_opts, opts);
	for (int r = 0; r < repeats; r++) {
		int fd = bpf_map_create(BPF_MAP_TYPE_HASH, "c_bench", ks, vs, n, NULL);
		if (fd < 0) {
			fprintf(stderr, "map_create: %s\n", strerror(-fd));
			return 1;
		}
		uint64_t t0 = now_ns();
		for (uint32_t done = 0; done < n;) {
			uint32_t count = n - done < chunk ? n - done : chunk;
			int err = bpf_map_update_batch(fd, keys + (size_t)done * ks, values + (size_t)done * vs,
						       &count, &opts);
			if (err) {
				fprintf(stderr, "update_batch: %s\n", strerror(-err));
				return 1;
			}
			done += count;
		}
		uint64_t dt = now_ns() - t0;
		if (dt < best)
			best = dt;
		close(fd);
	}
	printf("update_ns %llu\n", (unsigned long long)best);
	return 0;
}
