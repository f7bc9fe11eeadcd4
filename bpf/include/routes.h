/* Routes LPM map, byte for byte Calico's cali_v4_routes / cali_v6_routes. */
#ifndef CALICO_EBPF_ROUTES_H
#define CALICO_EBPF_ROUTES_H

#include <linux/types.h>

enum route_flags {
	RT_IN_POOL = 0x1,
	RT_NAT_OUT = 0x2,
	RT_WORKLOAD = 0x4,
	RT_LOCAL = 0x8,
	RT_HOST = 0x10,
	RT_SAME_SUBNET = 0x20,
	RT_TUNNELED = 0x40,
	RT_NO_DSR = 0x80,
	RT_BLACKHOLE_DROP = 0x100,
	RT_BLACKHOLE_REJECT = 0x200,
	RT_VXLAN = 0x400,
	RT_SKIP_INGRESS_REDIRECT = 0x800,
};

struct route_key_v4 {
	__u32 prefixlen;
	__u32 addr;
};

struct route_key_v6 {
	__u32 prefixlen;
	__u8 addr[16];
};

/* next_hop for remote workloads/hosts; ifindex for local workloads. */
struct route_value_v4 {
	__u32 flags;
	union {
		__u32 next_hop;
		__u32 ifindex;
	};
};

struct route_value_v6 {
	__u32 flags;
	union {
		__u8 next_hop[16];
		__u32 ifindex;
	};
};

#endif
