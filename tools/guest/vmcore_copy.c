/*
 * kdlayout fixture helper for the kdump capture kernel: copy /proc/vmcore to a
 * block device at the same offsets, leaving all-zero blocks unwritten (the
 * fresh sparse disk image on the host keeps them as holes).
 *
 * /proc/vmcore is mapped with mmap (the kernel then maps old memory in large
 * ranges) instead of read(), which copies page by page through a temporary
 * mapping and is very slow under TCG.  Falls back to pread if mmap fails.
 *
 * Usage: vmcore_copy SRC DST      prints "KDL-VMCORE-SIZE n" first.
 * Statically linked on the host: gcc -static -O2 -o vmcore_copy vmcore_copy.c
 */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#define CHUNK (8UL << 20)
#define BLOCK (64UL << 10)

static int all_zero(const unsigned char *p, size_t n)
{
	const uint64_t *q = (const uint64_t *)p;
	size_t i;
	for (i = 0; i < n / 8; i++)
		if (q[i])
			return 0;
	for (i = n & ~7UL; i < n; i++)
		if (p[i])
			return 0;
	return 1;
}

static int write_all(int fd, const unsigned char *p, size_t n, off_t off)
{
	while (n) {
		ssize_t w = pwrite(fd, p, n, off);
		if (w < 0) {
			if (errno == EINTR)
				continue;
			return -1;
		}
		p += w;
		n -= (size_t)w;
		off += w;
	}
	return 0;
}

int main(int argc, char **argv)
{
	const char *src = argc > 1 ? argv[1] : "/proc/vmcore";
	const char *dst = argc > 2 ? argv[2] : "/dev/vda";
	unsigned char *buf = NULL;
	unsigned long long written = 0, skipped = 0;
	int in, out, use_mmap = 1;
	struct stat st;
	off_t off, size;

	in = open(src, O_RDONLY);
	out = open(dst, O_WRONLY);
	if (in < 0 || out < 0 || fstat(in, &st)) {
		printf("KDL-VMCORE-FAILED open: %s\n", strerror(errno));
		return 1;
	}
	size = st.st_size;
	printf("KDL-VMCORE-SIZE %lld\n", (long long)size);
	fflush(stdout);
	for (off = 0; off < size; off += CHUNK) {
		size_t len = (size_t)(size - off < (off_t)CHUNK ? size - off : (off_t)CHUNK);
		unsigned char *p = NULL;
		size_t b;
		if (use_mmap) {
			p = mmap(NULL, len, PROT_READ, MAP_PRIVATE, in, off);
			if (p == MAP_FAILED) {
				printf("KDL-INFO {\"kind\":\"vmcore_copy\",\"mmap_failed_at\":%lld,\"errno\":%d}\n",
				       (long long)off, errno);
				use_mmap = 0;
				p = NULL;
			}
		}
		if (!p) {
			size_t got = 0;
			if (!buf && !(buf = malloc(CHUNK)))
				return 1;
			while (got < len) {
				ssize_t r = pread(in, buf + got, len - got, off + (off_t)got);
				if (r <= 0) {
					if (r < 0 && errno == EINTR)
						continue;
					printf("KDL-VMCORE-FAILED read at %lld: %s\n", (long long)(off + got),
					       r ? strerror(errno) : "EOF");
					return 1;
				}
				got += (size_t)r;
			}
		}
		for (b = 0; b < len; b += BLOCK) {
			const unsigned char *q = (p ? p : buf) + b;
			size_t n = len - b < BLOCK ? len - b : BLOCK;
			if (all_zero(q, n)) {
				skipped += n;
				continue;
			}
			if (write_all(out, q, n, off + (off_t)b)) {
				printf("KDL-VMCORE-FAILED write at %lld: %s\n", (long long)(off + b), strerror(errno));
				return 1;
			}
			written += n;
		}
		if (p)
			munmap(p, len);
	}
	fsync(out);
	printf("KDL-INFO {\"kind\":\"vmcore_copy\",\"size\":%lld,\"written\":%llu,\"zero_skipped\":%llu,\"mmap\":%d}\n",
	       (long long)size, written, skipped, use_mmap);
	printf("KDL-VMCORE-DONE\n");
	fflush(stdout);
	return 0;
}
