/* IP set membership LPM map, byte for byte Calico's cali_v4_ip_sets.
 * One map serves CIDR members (prefix = 64 + CIDR bits) and named-port
 * members (full length: addr + port + protocol). */
#ifndef CALICO_EBPF_IPSETS_H
#define CALICO_EBPF_IPSETS_H

#include <linux/types.h>

#define IPSET_PREFIX_ID 64 /* bits of set_id */
#define IPSET_FULL_V4 (64 + 32 + 16 + 8)
#define IPSET_FULL_V6 (64 + 128 + 16 + 8)

struct ipset_key_v4 {
	__u32 mask;
	__u64 set_id; /* big-endian so the LPM trie compares it first */
	__u32 addr;
	__u16 port;
	__u8 protocol;
	__u8 pad;
} __attribute__((packed));

struct ipset_key_v6 {
	__u32 mask;
	__u64 set_id;
	__u8 addr[16];
	__u16 port;
	__u8 protocol;
	__u8 pad;
} __attribute__((packed));

#endif
