/* Failsafe ports LPM map, byte for byte Calico's cali_v4_fsafes2. */
#ifndef CALICO_EBPF_FAILSAFES_H
#define CALICO_EBPF_FAILSAFES_H

#include <linux/types.h>

#define FSAFE_PREFIX_BASE 32 /* port + proto + flags before the CIDR */
#define FSAFE_FLAG_OUTBOUND 0x1

struct failsafe_key_v4 {
	__u32 prefixlen;
	__u16 port;
	__u8 ip_proto;
	__u8 flags;
	__u32 addr;
};

struct failsafe_key_v6 {
	__u32 prefixlen;
	__u16 port;
	__u8 ip_proto;
	__u8 flags;
	__u8 addr[16];
};

#endif
