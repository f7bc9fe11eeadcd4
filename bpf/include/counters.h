/* Per-interface, per-hook packet counters (per-CPU).  Indices 0..26 are
 * Calico's enum calico_reason; 27.. are ours (NAT detail Calico does not
 * count).  The value is therefore 32 u64 where Calico's is 27. */
#ifndef CALICO_EBPF_COUNTERS_H
#define CALICO_EBPF_COUNTERS_H

#include <linux/types.h>

enum counter_hook {
	HOOK_TC_INGRESS = 0,
	HOOK_TC_EGRESS = 1,
	HOOK_XDP = 2,
};

enum counter_reason {
	CNT_TOTAL = 0,
	CNT_ACCEPTED_FAILSAFE = 1,
	CNT_ACCEPTED_POLICY = 2,
	CNT_ACCEPTED_BYPASS = 3,
	CNT_DROP_POLICY = 4,
	CNT_DROP_SHORT = 5,
	CNT_DROP_CSUM = 6,
	CNT_DROP_IP_OPTIONS = 7,
	CNT_DROP_MALFORMED_IP = 8,
	CNT_DROP_ENCAP = 9,
	CNT_DROP_DECAP = 10,
	CNT_DROP_UNAUTH_SOURCE = 11,
	CNT_DROP_UNKNOWN_ROUTE = 12,
	CNT_DROP_BLACKHOLE = 13,
	CNT_SRC_COLLISION = 14,
	CNT_SRC_COLLISION_FAIL = 15,
	CNT_DROP_CT_CREATE = 16,
	CNT_REDIRECT = 17,
	CNT_REDIRECT_NEIGH = 18,
	CNT_REDIRECT_PEER = 19,
	CNT_FRAG_WAIT = 20,
	CNT_FRAG_REORDER = 21,
	CNT_FRAG_UNSUPPORTED = 22,
	CNT_DROP_QOS = 23,
	CNT_RESERVED = 24,
	CNT_MAGLEV_NO_BACKEND = 25,
	CNT_NO_HOST_IP = 26,
	/* ours */
	CNT_NAT_NEW = 27,        /* new flows DNATed to a backend */
	CNT_NAT_NO_BACKEND = 28, /* answered with ICMP port-unreachable */
	CNT_DROP_SRC_RANGE = 29, /* loadBalancerSourceRanges mismatch */
	CNT_CT_HIT = 30,         /* packets of known flows */
	CNT_CT_NEW = 31,         /* conntrack entries created */
	CNT_MAX = 32,
};

struct counters_key {
	__u32 ifindex;
	__u32 hook; /* enum counter_hook */
};

struct counters_value {
	__u64 counts[CNT_MAX];
};

#endif
