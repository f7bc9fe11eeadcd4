/* NodePort forwarding to a backend on another node, over VXLAN, with the
 * client's source address preserved (reference 3.4).
 *
 * Like Calico, the program builds the outer headers itself
 * (bpf_skb_adjust_room + one store) and redirects out of the data
 * interface; the kernel's vxlan device is not involved.  That keeps the
 * whole path inside the datapath: no flow-based device to create per node,
 * the outer headers are visible to BPF_PROG_TEST_RUN (so tests check them
 * byte by byte), and the decapsulating node learns the forwarding node's
 * address (tun_ip) from the outer header, which a kernel-decapsulated
 * packet would no longer carry.
 *
 * The flow, ingress node A, backend's node B (both run this object):
 *  A from-hep, new flow: service lookup picks a backend whose route is not
 *    local and has a next hop (node B).  Conntrack gets NAT_FWD/NAT_REV with
 *    CT_FLAG_NP_FWD (+ DSR_FWD in DSR mode) and tun_ip = B; the packet is
 *    NOT translated (B does the NAT, so B knows the service address it
 *    must answer from) and leaves encapsulated to B.  Later packets of the
 *    flow hit NAT_FWD and take the same way.
 *  B from-hep: VXLAN to our host_ip with our VNI from a known remote host
 *    is decapsulated (tun_ip = outer source); the inner packet, still the
 *    client's, is looked up against local backends only and DNATed there;
 *    NAT_REV records tun_ip = A.
 *  B from-wep, the backend's reply: NAT_REV translates it back to the
 *    service address; in tunnel mode it is encapsulated to A, in DSR mode it
 *    goes straight to the client; either way out of the interface the
 *    request came in on.
 *  A from-hep, tunnel mode: the decapsulated reply matches NAT_FWD as a
 *    reply (already translated by B) and is sent to the client.
 * A packet that would not fit the tunnel MTU with DF set is answered with
 * ICMP fragmentation needed carrying the tunnel MTU. */
#ifndef CALICO_EBPF_DP_TUNNEL_H
#define CALICO_EBPF_DP_TUNNEL_H

#include "maps.h"
#include "dp_packet.h"
#include "dp_route.h"

#define DP_VXLAN_FLAG_VNI 0x08000000 /* "I" flag: the VNI is valid */
#define DP_IP_DF 0x4000

struct dp_vxlanhdr {
	__be32 flags;
	__be32 vni; /* VNI << 8 */
};

/* Everything encapsulation inserts after the outer Ethernet header (its
 * first TUNNEL_OVERHEAD bytes; the struct is padded to 52 for alignment). */
struct dp_encap_hdr {
	struct iphdr ip;
	struct udphdr udp;
	struct dp_vxlanhdr vxlan;
	struct ethhdr eth;
};

_Static_assert(__builtin_offsetof(struct dp_encap_hdr, eth) + ETH_HLEN == TUNNEL_OVERHEAD,
	       "VXLAN overhead is 50 bytes");

/* The node's tunnel settings, or NULL when NodePort forwarding is off. */
static __always_inline struct tunnel_config *dp_tunnel_cfg(void)
{
	__u32 k = 0;
	struct tunnel_config *cfg = bpf_map_lookup_elem(&cebpf_tunnel, &k);
	return cfg && cfg->host_ip ? cfg : 0;
}

static __always_inline int dp_tunnel_dsr(struct tunnel_config *cfg)
{
	return cfg->flags & TUNNEL_F_DSR;
}

/* Would the packet exceed the tunnel MTU once encapsulated, and may it not
 * be fragmented?  GSO packets are cut to size after us, so they never are. */
static __always_inline int dp_tunnel_too_big(struct __sk_buff *skb, struct tunnel_config *cfg)
{
	struct iphdr ip;
	if (skb->gso_size || bpf_skb_load_bytes(skb, DP_IP_OFF, &ip, sizeof(ip)))
		return 0;
	return (ip.frag_off & bpf_htons(DP_IP_DF)) && bpf_ntohs(ip.tot_len) > cfg->mtu;
}

/* Encapsulate the frame in VXLAN from this node to node dst.  The inner
 * frame is the packet as it is (the client's addresses), the outer source
 * port carries the flow hash for ECMP (as the kernel's vxlan does), the
 * outer UDP checksum is 0 (allowed over IPv4, as Calico sends it).
 * Returns 0 or -1. */
static __always_inline int dp_vxlan_encap(struct __sk_buff *skb, __u32 host_ip, __u32 vni, __u16 port, __u32 dst)
{
	struct dp_encap_hdr h = {};
	struct iphdr inner;
	if (bpf_skb_load_bytes(skb, 0, &h.eth, sizeof(h.eth)))
		return -1;
	if (bpf_skb_load_bytes(skb, DP_IP_OFF, &inner, sizeof(inner)))
		return -1;
	__u32 hash = bpf_get_hash_recalc(skb);
	__u16 inner_len = bpf_ntohs(inner.tot_len);

	h.ip.version = 4;
	h.ip.ihl = 5;
	h.ip.tos = inner.tos;
	h.ip.tot_len = bpf_htons(inner_len + TUNNEL_OVERHEAD);
	/* DF follows the inner packet: PMTU discovery still works end to end. */
	h.ip.frag_off = inner.frag_off & bpf_htons(DP_IP_DF);
	h.ip.ttl = 64;
	h.ip.protocol = IPPROTO_UDP;
	h.ip.saddr = host_ip;
	h.ip.daddr = dst;
	h.ip.check = dp_csum_fold(bpf_csum_diff(0, 0, (__be32 *)&h.ip, sizeof(h.ip), 0));
	h.udp.source = bpf_htons(49152 | (hash & 0x3fff));
	h.udp.dest = bpf_htons(port);
	h.udp.len = bpf_htons(inner_len + TUNNEL_OVERHEAD - sizeof(struct iphdr));
	h.vxlan.flags = bpf_htonl(DP_VXLAN_FLAG_VNI);
	h.vxlan.vni = bpf_htonl(vni << 8);

	__u64 fl = BPF_F_ADJ_ROOM_ENCAP_L3_IPV4 | BPF_F_ADJ_ROOM_ENCAP_L4_UDP | BPF_F_ADJ_ROOM_ENCAP_L2_ETH |
		   BPF_F_ADJ_ROOM_ENCAP_L2(ETH_HLEN);
	if (bpf_skb_adjust_room(skb, TUNNEL_OVERHEAD, BPF_ADJ_ROOM_MAC, fl))
		return -1;
	return bpf_skb_store_bytes(skb, ETH_HLEN, &h, TUNNEL_OVERHEAD, 0);
}

enum dp_decap_rc {
	DP_DECAP_NOT_OURS = 0,
	DP_DECAP_DONE = 1,
	DP_DECAP_DROP = 2,
};

/* A parsed packet on a data interface: if it is our NodePort VXLAN (to our
 * host_ip, our port and VNI, Ethernet/IPv4 inside), strip the outer
 * headers and return the sending node in *tun_ip.  Only known remote hosts
 * may send it: anything else could inject packets with any client source. */
static __always_inline int dp_vxlan_decap(struct __sk_buff *skb, struct dp_pkt *p, struct tunnel_config *cfg,
					  __u32 *tun_ip)
{
	if (p->proto != IPPROTO_UDP || p->dport != cfg->port || p->daddr != cfg->host_ip)
		return DP_DECAP_NOT_OURS;
	if (p->ip_len < TUNNEL_OVERHEAD + sizeof(struct iphdr))
		return DP_DECAP_NOT_OURS;
	struct {
		struct dp_vxlanhdr vxlan;
		struct ethhdr eth;
	} __attribute__((packed)) in;
	if (bpf_skb_load_bytes(skb, DP_L4_OFF + sizeof(struct udphdr), &in, sizeof(in)))
		return DP_DECAP_NOT_OURS;
	if (!(in.vxlan.flags & bpf_htonl(DP_VXLAN_FLAG_VNI)) || in.vxlan.vni != bpf_htonl(cfg->vni << 8))
		return DP_DECAP_NOT_OURS;
	struct route_value_v4 *rs = dp_route(p->saddr);
	if (!rs || (rs->flags & RT_LOCAL_HOST) != RT_HOST)
		return DP_DECAP_DROP;
	if (in.eth.h_proto != bpf_htons(ETH_P_IP))
		return DP_DECAP_DROP;
	if (bpf_skb_adjust_room(skb, -(__s32)TUNNEL_OVERHEAD, BPF_ADJ_ROOM_MAC, 0))
		return DP_DECAP_DROP;
	*tun_ip = p->saddr;
	return DP_DECAP_DONE;
}

#endif
