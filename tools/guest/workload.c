/*
 * kdlayout fixture workload: runs inside the QEMU guest before the crash and
 * leaves behind every class of page a dump filter has to recognise, then
 * prints "KDL-READY" and sleeps until the kernel panics.
 *
 * Usage: workload TOTAL_MIB FILE_DIR
 * Every region reports itself as one line:  KDL-INFO {"kind":...}
 * PFNs come from /proc/self/pagemap (we run as root, so they are real).
 *
 * Statically linked on the host: gcc -static -O2 -o workload workload.c
 */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <signal.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <sys/types.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#ifndef MADV_PAGEOUT
#define MADV_PAGEOUT 21
#endif
#ifndef MADV_HWPOISON
#define MADV_HWPOISON 100
#endif
#ifndef MAP_HUGETLB
#define MAP_HUGETLB 0x40000
#endif

#define PAGE 4096UL
#define HUGE (2UL << 20)
#define MAX_PFNS 8

static void sleep_ms(long ms)
{
	struct timespec ts = { ms / 1000, (ms % 1000) * 1000000L };
	nanosleep(&ts, NULL);
}

static uint64_t pagemap_entry(void *addr)
{
	static int fd = -1;
	static pid_t owner = -1;
	uint64_t e = 0;
	if (owner != getpid()) { /* a forked child must read its own pagemap */
		if (fd >= 0)
			close(fd);
		fd = open("/proc/self/pagemap", O_RDONLY);
		owner = getpid();
	}
	if (fd < 0)
		return 0;
	if (pread(fd, &e, sizeof(e), ((uintptr_t)addr / PAGE) * sizeof(e)) != sizeof(e))
		return 0;
	return e;
}

/* PFN of a present page, or 0 (not present / swapped). */
static uint64_t pfn_of(void *addr)
{
	uint64_t e = pagemap_entry(addr);
	if (!(e & (1ULL << 63)))
		return 0;
	return e & ((1ULL << 55) - 1);
}

/* Print a region record: up to MAX_PFNS pfns spread over the region. */
static void report(const char *kind, void *base, size_t bytes, size_t stride, const char *extra)
{
	size_t n = bytes / stride, step = n > MAX_PFNS ? n / MAX_PFNS : 1, i, k = 0;
	printf("KDL-INFO {\"kind\":\"%s\",\"pid\":%d,\"vaddr\":%lu,\"bytes\":%zu,\"pfns\":[",
	       kind, getpid(), (unsigned long)(uintptr_t)base, bytes);
	for (i = 0; i < n && k < MAX_PFNS; i += step, k++)
		printf("%s%llu", k ? "," : "", (unsigned long long)pfn_of((char *)base + i * stride));
	printf("]%s%s}\n", extra && *extra ? "," : "", extra ? extra : "");
	fflush(stdout);
}

static long read_long(const char *path)
{
	char buf[64] = { 0 };
	int fd = open(path, O_RDONLY);
	long v = -1;
	if (fd >= 0) {
		if (read(fd, buf, sizeof(buf) - 1) > 0)
			v = strtol(buf, NULL, 10);
		close(fd);
	}
	return v;
}

static long meminfo_kb(const char *key)
{
	char line[256];
	long v = -1;
	size_t kl = strlen(key);
	FILE *f = fopen("/proc/meminfo", "r");
	if (!f)
		return -1;
	while (fgets(line, sizeof(line), f))
		if (!strncmp(line, key, kl) && line[kl] == ':') {
			v = strtol(line + kl + 1, NULL, 10);
			break;
		}
	fclose(f);
	return v;
}

static void *map_anon(size_t bytes, int extra_flags)
{
	void *p = mmap(NULL, bytes, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS | extra_flags, -1, 0);
	if (p == MAP_FAILED) {
		printf("KDL-WARN mmap %zu flags %#x: %s\n", bytes, extra_flags, strerror(errno));
		return NULL;
	}
	return p;
}

/* Distinct non-zero content per page: first 8 bytes = index, rest = pattern. */
static void fill_pattern(char *p, size_t bytes, unsigned char seed)
{
	size_t i;
	for (i = 0; i < bytes; i += PAGE) {
		memset(p + i, seed ^ (unsigned char)(i / PAGE), PAGE);
		*(uint64_t *)(p + i) = 0x4b444c0000000000ULL | (i / PAGE);
	}
}

static void sleep_forever(void)
{
	for (;;)
		pause();
}

int main(int argc, char **argv)
{
	size_t total = (argc > 1 ? strtoul(argv[1], NULL, 10) : 256) << 20;
	const char *dir = argc > 2 ? argv[2] : "/mnt";
	size_t anon_b = total * 25 / 100 & ~(PAGE - 1);
	size_t zero_b = total * 8 / 100 & ~(PAGE - 1);
	size_t thp_b = total * 12 / 100 & ~(HUGE - 1);
	size_t huge_b = total * 10 / 100 & ~(HUGE - 1);
	size_t ksm_b = total * 8 / 100 & ~(PAGE - 1);
	size_t swap_b = total * 10 / 100 & ~(PAGE - 1);
	size_t file_b = total * 15 / 100 & ~(PAGE - 1);
	char extra[1024], path[512];
	char *p;
	size_t i;
	pid_t pid;
	int fd, status;

	setvbuf(stdout, NULL, _IOLBF, 0);
	printf("KDL-INFO {\"kind\":\"start\",\"pid\":%d,\"total_bytes\":%zu}\n", getpid(), total);

	/* 1. anonymous pages with a non-zero pattern */
	if ((p = map_anon(anon_b, 0))) {
		madvise(p, anon_b, MADV_NOHUGEPAGE); /* small pages; THP has its own region */
		fill_pattern(p, anon_b, 0x5a);
		report("anon", p, anon_b, PAGE, NULL);
	}

	/* 2. anonymous pages that were written but hold only zeroes */
	if ((p = map_anon(zero_b, 0))) {
		madvise(p, zero_b, MADV_NOHUGEPAGE);
		for (i = 0; i < zero_b; i += PAGE)
			((volatile char *)p)[i] = 0;
		report("anon_zero", p, zero_b, PAGE, NULL);
	}

	/* 3. transparent huge pages: 2 MiB aligned, MADV_HUGEPAGE */
	if (thp_b && (p = map_anon(thp_b + HUGE, 0))) {
		char *a = (char *)(((uintptr_t)p + HUGE - 1) & ~(HUGE - 1));
		madvise(a, thp_b, MADV_HUGEPAGE);
		fill_pattern(a, thp_b, 0x33);
		snprintf(extra, sizeof(extra), "\"anon_huge_kb\":%ld", meminfo_kb("AnonHugePages"));
		report("thp", a, thp_b, HUGE, extra);
	}

	/* 4. hugetlb pages (the init reserved nr_hugepages; some stay free) */
	if (huge_b && (p = map_anon(huge_b, MAP_HUGETLB))) {
		fill_pattern(p, huge_b, 0x77);
		snprintf(extra, sizeof(extra), "\"hugepages_free\":%ld,\"hugepages_total\":%ld",
			 meminfo_kb("HugePages_Free"), meminfo_kb("HugePages_Total"));
		report("hugetlb", p, huge_b, HUGE, extra);
	}

	/* 5. KSM: identical pages in a MADV_MERGEABLE area */
	if ((p = map_anon(ksm_b, 0))) {
		int waited = 0;
		madvise(p, ksm_b, MADV_NOHUGEPAGE);
		memset(p, 0x42, ksm_b);
		if (madvise(p, ksm_b, MADV_MERGEABLE))
			printf("KDL-WARN MADV_MERGEABLE: %s\n", strerror(errno));
		while (waited < 60000 && read_long("/sys/kernel/mm/ksm/pages_sharing") < (long)(ksm_b / PAGE / 2)) {
			sleep_ms(500);
			waited += 500;
		}
		snprintf(extra, sizeof(extra), "\"pages_shared\":%ld,\"pages_sharing\":%ld,\"waited_ms\":%d",
			 read_long("/sys/kernel/mm/ksm/pages_shared"),
			 read_long("/sys/kernel/mm/ksm/pages_sharing"), waited);
		report("ksm", p, ksm_b, PAGE, extra);
	}

	/* 6. swap cache: page out to zram, share the swap entries with a child,
	 *    then fault the pages back in; with two references to each swap entry
	 *    the pages stay in the swap cache. */
	if ((p = map_anon(swap_b, 0))) {
		long before;
		madvise(p, swap_b, MADV_NOHUGEPAGE);
		fill_pattern(p, swap_b, 0x1c);
		before = meminfo_kb("SwapFree");
		if (madvise(p, swap_b, MADV_PAGEOUT))
			printf("KDL-WARN MADV_PAGEOUT: %s\n", strerror(errno));
		pid = fork();
		if (pid == 0)
			sleep_forever();
		for (i = 0; i < swap_b / 2; i += PAGE)
			(void)((volatile char *)p)[i];
		snprintf(extra, sizeof(extra),
			 "\"child_pid\":%d,\"swapped_kb\":%ld,\"swap_cached_kb\":%ld,\"faulted_back_bytes\":%zu",
			 (int)pid, before - meminfo_kb("SwapFree"), meminfo_kb("SwapCached"), swap_b / 2);
		report("swapcache", p, swap_b, PAGE, extra);
	}

	/* 7. file cache with buffer heads on ext4/brd, one file kept mmapped */
	{
		size_t chunk = 1 << 20, done = 0;
		int nfiles = 0;
		char *buf = malloc(chunk);
		if (buf) {
			while (done < file_b) {
				snprintf(path, sizeof(path), "%s/data%03d", dir, nfiles++);
				fd = open(path, O_CREAT | O_RDWR | O_TRUNC, 0644);
				if (fd < 0) {
					printf("KDL-WARN open %s: %s\n", path, strerror(errno));
					break;
				}
				for (i = 0; i < 4 && done < file_b; i++, done += chunk) {
					fill_pattern(buf, chunk, 0x66 + nfiles);
					if (write(fd, buf, chunk) != (ssize_t)chunk)
						printf("KDL-WARN write %s: %s\n", path, strerror(errno));
				}
				fsync(fd);
				close(fd);
			}
			free(buf);
		}
		/* read back and map the first file */
		snprintf(path, sizeof(path), "%s/data000", dir);
		fd = open(path, O_RDONLY);
		if (fd >= 0) {
			struct stat st;
			if (!fstat(fd, &st) && st.st_size > 0) {
				p = mmap(NULL, st.st_size, PROT_READ, MAP_SHARED, fd, 0);
				if (p != MAP_FAILED) {
					volatile char s = 0;
					for (i = 0; i < (size_t)st.st_size; i += PAGE)
						s += p[i];
					(void)s;
					snprintf(extra, sizeof(extra), "\"files\":%d,\"file_bytes\":%zu,\"cached_kb\":%ld,\"path\":\"%s\"",
						 nfiles, done, meminfo_kb("Cached"), path);
					report("pagecache", p, st.st_size, PAGE, extra);
				}
			}
		}
		/* many small files: dentries and inodes in slab */
		snprintf(path, sizeof(path), "%s/small", dir);
		mkdir(path, 0755);
		for (i = 0; i < 3000; i++) {
			snprintf(path, sizeof(path), "%s/small/f%zu", dir, i);
			fd = open(path, O_CREAT | O_WRONLY, 0644);
			if (fd >= 0) {
				(void)!write(fd, path, strlen(path));
				close(fd);
			}
		}
		snprintf(extra, sizeof(extra), "\"small_files\":3000,\"slab_kb\":%ld", meminfo_kb("Slab"));
		printf("KDL-INFO {\"kind\":\"slab\",%s}\n", extra);
	}

	/* 8. hardware-poisoned pages: a child poisons its own page and is killed */
	for (int k = 0; k < 2; k++) {
		int pfd[2];
		uint64_t pfn = 0;
		if (pipe(pfd))
			break;
		pid = fork();
		if (pid == 0) {
			char *c = map_anon(PAGE, 0);
			if (!c)
				_exit(2);
			memset(c, 0xe1, PAGE);
			pfn = pfn_of(c);
			(void)!write(pfd[1], &pfn, sizeof(pfn));
			if (madvise(c, PAGE, MADV_HWPOISON))
				_exit(3);
			c[0] = 1; /* should not be reached */
			_exit(0);
		}
		close(pfd[1]);
		if (read(pfd[0], &pfn, sizeof(pfn)) != sizeof(pfn))
			pfn = 0;
		close(pfd[0]);
		waitpid(pid, &status, 0);
		printf("KDL-INFO {\"kind\":\"hwpoison\",\"pid\":%d,\"pfns\":[%llu],\"signaled\":%d,\"signal\":%d,\"exit\":%d,\"hwcorrupted_kb\":%ld}\n",
		       (int)pid, (unsigned long long)pfn, WIFSIGNALED(status), WIFSIGNALED(status) ? WTERMSIG(status) : 0,
		       WIFEXITED(status) ? WEXITSTATUS(status) : -1, meminfo_kb("HardwareCorrupted"));
	}

	printf("KDL-INFO {\"kind\":\"meminfo\",\"MemFree_kb\":%ld,\"Cached_kb\":%ld,\"SwapCached_kb\":%ld,\"AnonHugePages_kb\":%ld,\"HugePages_Free\":%ld,\"Slab_kb\":%ld}\n",
	       meminfo_kb("MemFree"), meminfo_kb("Cached"), meminfo_kb("SwapCached"), meminfo_kb("AnonHugePages"),
	       meminfo_kb("HugePages_Free"), meminfo_kb("Slab"));
	printf("KDL-READY\n");
	fflush(stdout);
	sleep_forever();
	return 0;
}
