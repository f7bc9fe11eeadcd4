/* Route lookups (routes map, Calico's layout) and the workload RPF rule. */
#ifndef CALICO_EBPF_DP_ROUTE_H
#define CALICO_EBPF_DP_ROUTE_H

#include "maps.h"

#define RT_LOCAL_WEP (RT_LOCAL | RT_WORKLOAD)
#define RT_LOCAL_HOST (RT_LOCAL | RT_HOST)

/* Full-length lookup, as Calico: the most specific route of one address. */
static __always_inline struct route_value_v4 *dp_route(__u32 addr)
{
	struct route_key_v4 k = { .prefixlen = 32, .addr = addr };
	return bpf_map_lookup_elem(&cebpf_routes, &k);
}

/* Strict RPF for workloads: the source must be a local workload route
 * pointing at this very interface. */
static __always_inline int dp_rpf_ok(struct route_value_v4 *rs, __u32 ifindex)
{
	return rs && (rs->flags & RT_LOCAL_WEP) == RT_LOCAL_WEP && rs->ifindex == ifindex;
}

#endif
