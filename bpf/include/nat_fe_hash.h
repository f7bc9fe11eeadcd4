/* Exact-match service frontend map (ours, not Calico's).
 *
 * Calico keys every frontend in one LPM trie so that
 * loadBalancerSourceRanges can be matched on the source prefix.  An LPM
 * lookup costs more as the trie grows (measured in
 * benchmarks/bench_datapath.py), so the datapath first looks the packet's
 * (dst, port, proto) up in this hash map, whose cost does not depend on the
 * number of services.  Only frontends carrying NAT_FLG_SRC_RANGES send the
 * lookup on to the Calico-layout LPM map cebpf_nat_fe, which holds their
 * per-source-CIDR entries and the zero-source drop entry
 * (count == NAT_FE_DROP_COUNT).  The value is Calico's struct nat_fe_value,
 * so one codec serves both maps. */
#ifndef CALICO_EBPF_NAT_FE_HASH_H
#define CALICO_EBPF_NAT_FE_HASH_H

#include <linux/types.h>

/* nat_fe_value.flags bit (ours): the frontend has source ranges, consult
 * cebpf_nat_fe with the packet's source for the real entry. */
#define NAT_FLG_SRC_RANGES 0x100

/* Address used for NodePort frontends valid on every host IP (Calico's). */
#define NAT_FE_WILDCARD_ADDR 0xffffffff

struct nat_feh_key_v4 {
	__u32 addr;   /* network order */
	__u16 port;   /* host order */
	__u8 protocol;
	__u8 pad;
};

#endif
