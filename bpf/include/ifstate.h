/* Interface state, byte for byte Calico's cali_iface4: what kind of
 * interface an ifindex is and which policy slots serve it, so one object
 * serves every interface without recompiling. */
#ifndef CALICO_EBPF_IFSTATE_H
#define CALICO_EBPF_IFSTATE_H

#include <linux/types.h>

enum ifstate_flags {
	IFACE_WEP = 0x1,
	IFACE_V4_READY = 0x2,
	IFACE_V6_READY = 0x4,
	IFACE_HEP = 0x8,
	IFACE_BOND = 0x10,
	IFACE_BOND_SLAVE = 0x20,
	IFACE_VXLAN = 0x40,
	IFACE_IPIP = 0x80,
	IFACE_WIREGUARD = 0x100,
	IFACE_L3 = 0x200,
	IFACE_NOT_MANAGED = 0x400,
};

struct ifstate_value {
	__u32 flags;
	char name[16];
	/* Jump-map slots of the policy programs, -1 = none. */
	__s32 xdp_policy_v4;
	__s32 ingress_policy_v4;
	__s32 egress_policy_v4;
	__s32 xdp_policy_v6;
	__s32 ingress_policy_v6;
	__s32 egress_policy_v6;
	__s32 tc_filter_ingress;
	__s32 tc_filter_egress;
};

_Static_assert(sizeof(struct ifstate_value) == 52, "ifstate value is 52 bytes in Calico");

#endif
