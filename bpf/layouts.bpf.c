// SPDX-License-Identifier: GPL-2.0
/* Never loaded: this object only carries the BTF of every layout in
 * include/, IPv4 and IPv6, so Python can check each codec against the C
 * struct it encodes (sizes and member offsets). The IPv4 maps come from
 * maps.h as the datapath declares them; the IPv6 layouts, which no program
 * uses yet, are pinned into BTF through placeholder map declarations. */
#include "maps.h"

#define LAYOUT_MAP(name, K, V)                       \
	struct {                                     \
		__uint(type, BPF_MAP_TYPE_HASH);     \
		__type(key, K);                      \
		__type(value, V);                    \
		__uint(max_entries, 1);              \
	} name SEC(".maps")

LAYOUT_MAP(layout_nat_fe6, struct nat_fe_key_v6, struct nat_fe_value);
LAYOUT_MAP(layout_nat_be6, struct nat_be_key, struct nat_be_value_v6);
LAYOUT_MAP(layout_nat_aff6, struct nat_aff_key_v6, struct nat_aff_value_v6);
LAYOUT_MAP(layout_ct6, struct ct_key_v6, struct ct_value_v6);
LAYOUT_MAP(layout_routes6, struct route_key_v6, struct route_value_v6);
LAYOUT_MAP(layout_ipsets6, struct ipset_key_v6, __u32);
LAYOUT_MAP(layout_fsafes6, struct failsafe_key_v6, __u32);

char LICENSE[] SEC("license") = "GPL";
