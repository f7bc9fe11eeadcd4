/* Conntrack layouts, byte for byte Calico's cali_v4_ct4 / cali_v6_ct4.
 * The endpoint that compares lower (address as a host-endian word, then
 * port) is always "A", so both directions of a flow share one key. */
#ifndef CALICO_EBPF_CONNTRACK_H
#define CALICO_EBPF_CONNTRACK_H

#include <linux/types.h>

enum ct_type {
	CT_TYPE_NORMAL = 0,
	CT_TYPE_NAT_FWD = 1, /* keyed by the pre-DNAT tuple, points at the NAT_REV key */
	CT_TYPE_NAT_REV = 2, /* keyed by the post-DNAT tuple, holds the original dst */
};

/* Logical 32-bit flags, stored across flags/flags2/flags3/flags4. */
enum ct_flags {
	CT_FLAG_NAT_OUT = 0x1,
	CT_FLAG_DSR_FWD = 0x2,
	CT_FLAG_NP_FWD = 0x4,
	CT_FLAG_SKIP_FIB = 0x8,
	CT_FLAG_EXT_LOCAL = 0x40,
	CT_FLAG_VIA_NAT_IF = 0x80,
	CT_FLAG_BA = 0x100,
	CT_FLAG_HOST_PSNAT = 0x200,
	CT_FLAG_SVC_SELF = 0x400,
	CT_FLAG_NP_LOOP = 0x800,
	CT_FLAG_NP_REMOTE = 0x1000,
	CT_FLAG_NP_NO_DSR = 0x2000,
	CT_FLAG_SKIP_REDIR_PEER = 0x4000,
	CT_FLAG_SET_DSCP = 0x8000,
	CT_FLAG_MAGLEV = 0x10000,
	CT_FLAG_SEND_RESET = 0x20000,
};

/* Bits of ct_leg.flags (a C bit field in Calico; a plain word here). */
enum ct_leg_flags {
	CT_LEG_SYN_SEEN = 0x1,
	CT_LEG_ACK_SEEN = 0x2,
	CT_LEG_FIN_SEEN = 0x4,
	CT_LEG_RST_SEEN = 0x8,
	CT_LEG_APPROVED = 0x10,
	CT_LEG_OPENER = 0x20,
	CT_LEG_WORKLOAD = 0x40,
};

struct ct_key_v4 {
	__u32 protocol;
	__u32 addr_a;
	__u32 addr_b;
	__u16 port_a;
	__u16 port_b;
};

struct ct_key_v6 {
	__u32 protocol;
	__u8 addr_a[16];
	__u8 addr_b[16];
	__u16 port_a;
	__u16 port_b;
};

struct ct_leg {
	__u64 bytes;
	__u32 packets;
	__u32 seqno;   /* TCP sequence as seen in the packet, network order */
	__u32 flags;   /* enum ct_leg_flags */
	__u32 ifindex; /* where packets of this leg came in, 0 = from host */
};

struct ct_value_v4 {
	__u64 rst_seen;  /* ktime of the last RST, 0 = none */
	__u64 last_seen; /* ktime ns, updated on every hit */
	__u8 type;       /* enum ct_type */
	__u8 flags;      /* ct_flags bits 0-7 */
	__u8 flags3;     /* bits 16-23 */
	__u8 flags4;     /* bits 24-31 */
	__u8 pad0[3];
	__u8 flags2;     /* bits 8-15 */
	union {
		struct { /* NORMAL and NAT_REV */
			struct ct_leg a_to_b;
			struct ct_leg b_to_a;
			__u32 tun_ip;    /* NAT_REV: node that tunnelled a NodePort flow */
			__u32 orig_ip;   /* NAT_REV: pre-DNAT destination */
			__u16 orig_port;
			__u16 orig_sport;
			__u32 orig_sip;
		};
		struct { /* NAT_FWD */
			struct ct_key_v4 nat_rev_key;
			__u16 nat_sport;
		};
	};
};

struct ct_value_v6 {
	__u64 rst_seen;
	__u64 last_seen;
	__u8 type;
	__u8 flags;
	__u8 flags3;
	__u8 flags4;
	__u8 pad0[3];
	__u8 flags2;
	union {
		struct {
			struct ct_leg a_to_b;
			struct ct_leg b_to_a;
			__u8 tun_ip[16];
			__u8 orig_ip[16];
			__u16 orig_port;
			__u16 orig_sport;
			__u8 orig_sip[16];
			__u32 pad1;
		};
		struct {
			struct ct_key_v6 nat_rev_key;
			__u16 nat_sport;
		};
	};
};

_Static_assert(sizeof(struct ct_value_v4) == 88, "ct_value_v4 is 88 bytes in Calico");
_Static_assert(sizeof(struct ct_value_v6) == 128, "ct_value_v6 is 128 bytes in Calico");

#endif
