/* NodePort forwarding over VXLAN: the node's tunnel settings (one entry of
 * cebpf_tunnel).  Calico passes these as per-program globals (HOST_IP,
 * VXLAN_PORT, TUNNEL_MTU, the dsr_ program variants); one object serves
 * every interface here, so they live in a map the agent writes. */
#ifndef CALICO_EBPF_TUNNEL_H
#define CALICO_EBPF_TUNNEL_H

#include <linux/types.h>

/* Calico's NodePort VNI: distinct from the overlay's (4096), so the node's
 * kernel vxlan device never takes these packets and the overlay's never
 * reach our decapsulation. */
#define TUNNEL_DEFAULT_VNI 0xca11c0
#define TUNNEL_DEFAULT_PORT 4789
/* Outer IPv4 (20) + UDP (8) + VXLAN (8) + inner Ethernet (14). */
#define TUNNEL_OVERHEAD 50

enum tunnel_flags {
	/* bpfExternalServiceMode: DSR.  Replies of forwarded NodePort flows go
	 * from the backend's node straight to the client. */
	TUNNEL_F_DSR = 0x1,
};

struct tunnel_config {
	__u32 host_ip; /* this node's underlay address (network order); 0 = forwarding off */
	__u32 vni;     /* 24 bits, host order */
	__u16 port;    /* VXLAN UDP port, host order */
	__u16 mtu;     /* tunnel MTU: the largest inner IP packet that fits the underlay */
	__u32 flags;   /* enum tunnel_flags */
};

_Static_assert(sizeof(struct tunnel_config) == 16, "tunnel_config layout is read by Python");

#endif
