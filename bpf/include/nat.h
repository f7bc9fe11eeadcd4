/* Service NAT map layouts: frontend ("level 1"), backend ("level 2") and
 * session affinity. Byte for byte Calico's cali_v4_nat_fe3 / cali_v4_nat_be /
 * cali_v4_nat_aff (and v6) so our Python codecs can read a Calico node too.
 * Multi-byte integers are host order; addresses are network order.
 * This file is the single source of truth: Python checks itself against the
 * BTF these structs leave in the compiled objects. */
#ifndef CALICO_EBPF_NAT_H
#define CALICO_EBPF_NAT_H

#include <linux/types.h>

/* Significant bits after prefixlen in a frontend key: addr + port + proto. */
#define NAT_FE_PREFIX_V4 56
#define NAT_FE_PREFIX_V6 152

/* count value marking a frontend that must drop (source range mismatch). */
#define NAT_FE_DROP_COUNT 0xffffffff

enum nat_fe_flags {
	NAT_FLG_EXTERNAL_LOCAL = 0x1,
	NAT_FLG_INTERNAL_LOCAL = 0x2,
	NAT_FLG_NAT_EXCLUDE = 0x4,
	NAT_FLG_MAGLEV = 0x8,
};

/* LPM key: destination, port and protocol come first so that a full-length
 * lookup only varies on the source prefix (loadBalancerSourceRanges). */
struct nat_fe_key_v4 {
	__u32 prefixlen;
	__u32 addr;
	__u16 port;
	__u8 protocol;
	__u32 saddr;
	__u8 pad;
} __attribute__((packed));

struct nat_fe_key_v6 {
	__u32 prefixlen;
	__u8 addr[16];
	__u16 port;
	__u8 protocol;
	__u8 saddr[16];
	__u8 pad;
} __attribute__((packed));

struct nat_fe_value {
	__u32 id;             /* service id, indexes the backend map */
	__u32 count;          /* backends; NAT_FE_DROP_COUNT = drop */
	__u32 local;          /* local backends, at ordinals 0..local-1 */
	__u32 affinity_timeo; /* seconds, 0 = no session affinity */
	__u32 flags;          /* enum nat_fe_flags */
};

struct nat_be_key {
	__u32 id;
	__u32 ordinal;
};

struct nat_be_value_v4 {
	__u32 addr;
	__u16 port;
	__u16 pad;
};

struct nat_be_value_v6 {
	__u8 addr[16];
	__u16 port;
	__u16 pad;
};

/* The affinity key is the frontend tuple (not the service id) + client. */
struct nat_aff_fe_v4 {
	__u32 addr;
	__u16 port;
	__u8 protocol;
	__u8 pad;
};

struct nat_aff_key_v4 {
	struct nat_aff_fe_v4 nat_key;
	__u32 client_ip;
	__u32 pad;
};

struct nat_aff_value_v4 {
	struct nat_be_value_v4 backend;
	__u64 ts; /* bpf_ktime_get_ns() when last used */
};

struct nat_aff_fe_v6 {
	__u8 addr[16];
	__u16 port;
	__u8 protocol;
	__u8 pad;
};

struct nat_aff_key_v6 {
	struct nat_aff_fe_v6 nat_key;
	__u8 client_ip[16];
	__u32 pad;
};

struct nat_aff_value_v6 {
	struct nat_be_value_v6 backend;
	__u32 pad;
	__u64 ts;
};

#endif
