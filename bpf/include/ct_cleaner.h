/* Conntrack cleaner: the structs shared by bpf/ct_cleaner.bpf.c and
 * calico_ebpf/dataplane/conntrack_gc.py.
 *
 * The cleaner is never attached. Python runs it with BPF_PROG_TEST_RUN and
 * passes its arguments as the "packet": struct ct_gc_args at offset 0, then
 * room for struct ct_gc_stats, which the program writes back (data_out).
 * That is how Calico runs conntrack_cleanup.c too, and it keeps the
 * program free of global state, so any number of sweepers can share it. */
#ifndef CALICO_EBPF_CT_CLEANER_H
#define CALICO_EBPF_CT_CLEANER_H

#include <linux/types.h>
#include "conntrack.h"

/* Why an entry expired; index into ct_gc_stats.expired. */
enum ct_gc_reason {
	CT_GC_ALIVE = 0,
	CT_GC_TCP_SYN_SENT = 1,    /* handshake never completed */
	CT_GC_TCP_ESTABLISHED = 2, /* established (or DSR) flow idle too long */
	CT_GC_TCP_FINS_SEEN = 3,   /* FIN both ways (either way for DSR) */
	CT_GC_TCP_RST_SEEN = 4,    /* a leg saw a RST */
	CT_GC_TCP_RST_IDLE = 5,    /* RST timestamp set and idle > 2 min */
	CT_GC_UDP = 6,
	CT_GC_ICMP = 7,
	CT_GC_GENERIC = 8,
	CT_GC_ORPHAN_FWD = 9,      /* NAT_FWD whose NAT_REV is gone */
	CT_GC_REASON_MAX = 10,
};

/* All in nanoseconds, resolved ("Auto" already read from the sysctls). */
struct ct_gc_timeouts {
	__u64 creation_grace; /* orphan NAT_FWD younger than this is kept */
	__u64 tcp_syn_sent;
	__u64 tcp_established;
	__u64 tcp_fins_seen;
	__u64 tcp_reset_seen;
	__u64 tcp_rst_idle;
	__u64 udp;
	__u64 generic;
	__u64 icmp;
};

struct ct_gc_args {
	__u64 now;   /* CLOCK_MONOTONIC ns, the clock of bpf_ktime_get_ns() */
	__u64 count; /* queue mode: number of queue slots in use */
	struct ct_gc_timeouts t; /* sweep mode only */
};

struct ct_gc_stats {
	__u64 scanned;   /* entries visited (sweep) or queue items processed */
	__u64 deleted;   /* CT entries deleted */
	__u64 refreshed; /* queue: skipped, last_seen changed since the scan */
	__u64 gone;      /* queue: already deleted by someone else */
	__u64 expired[CT_GC_REASON_MAX]; /* sweep: entries found expired, by reason */
};

/* One slot of the cleanup queue (an ARRAY map: Python writes it with one
 * batch update, no hashing). The entry and, for a NAT pair, its partner
 * are deleted only when both last_seen values are still the observed ones. */
struct ct_gc_item {
	struct ct_key_v4 key;
	struct ct_key_v4 partner;
	__u64 last_seen;
	__u64 partner_last_seen;
	__u32 has_partner;
	__u32 pad;
};

_Static_assert(sizeof(struct ct_gc_item) == 56, "ct_gc_item layout is mirrored in conntrack_gc.py");
_Static_assert(sizeof(struct ct_gc_args) == 88, "ct_gc_args layout is mirrored in conntrack_gc.py");
_Static_assert(sizeof(struct ct_gc_stats) == 112, "ct_gc_stats layout is mirrored in conntrack_gc.py");

#endif
