/* ICMP the datapath writes itself (port unreachable for services without
 * backends) and ICMP errors it translates (inner header of an error about a
 * DNATed flow). */
#ifndef CALICO_EBPF_DP_ICMP_H
#define CALICO_EBPF_DP_ICMP_H

#include "dp_packet.h"
#include "dp_ct.h"

/* The reply quotes the offending IP header and 8 bytes of its payload. */
struct dp_icmp_unreach {
	struct iphdr ip;
	struct icmphdr icmp;
	__u8 quote[sizeof(struct iphdr) + 8];
};

/* Turn the packet into an ICMP destination-unreachable error (code) for
 * its sender, and swap the MACs so it can be sent back out of the
 * interface it came in on; the caller redirects it.  The error comes from
 * saddr, or from the address the packet was sent to (the service) when
 * saddr is 0.  mtu (host order) fills the "next-hop MTU" of fragmentation
 * needed.  Returns 0 or -1. */
static __always_inline int dp_icmp_dest_unreach(struct __sk_buff *skb, __u8 code, __u16 mtu, __u32 saddr)
{
	struct ethhdr eth;
	struct dp_icmp_unreach m = {};
	__u8 mac[ETH_ALEN];

	if (bpf_skb_load_bytes(skb, 0, &eth, sizeof(eth)))
		return -1;
	if (bpf_skb_load_bytes(skb, DP_IP_OFF, m.quote, sizeof(m.quote)))
		return -1;
	__builtin_memcpy(mac, eth.h_source, ETH_ALEN);
	__builtin_memcpy(eth.h_source, eth.h_dest, ETH_ALEN);
	__builtin_memcpy(eth.h_dest, mac, ETH_ALEN);

	struct iphdr *orig = (struct iphdr *)m.quote;
	m.ip.version = 4;
	m.ip.ihl = 5;
	m.ip.tos = 0xc0; /* internetwork control, as Linux sends ICMP errors */
	m.ip.tot_len = bpf_htons(sizeof(m));
	m.ip.ttl = 64;
	m.ip.protocol = IPPROTO_ICMP;
	m.ip.saddr = saddr ? saddr : orig->daddr;
	m.ip.daddr = orig->saddr;
	m.ip.check = dp_csum_fold(bpf_csum_diff(0, 0, (__be32 *)&m.ip, sizeof(m.ip), 0));

	m.icmp.type = ICMP_DEST_UNREACH;
	m.icmp.code = code;
	m.icmp.un.frag.mtu = bpf_htons(mtu);
	m.icmp.checksum = dp_csum_fold(bpf_csum_diff(0, 0, (__be32 *)&m.icmp,
						     sizeof(m.icmp) + sizeof(m.quote), 0));

	if (bpf_skb_change_tail(skb, ETH_HLEN + sizeof(m), 0))
		return -1;
	if (bpf_skb_store_bytes(skb, 0, &eth, sizeof(eth), 0))
		return -1;
	if (bpf_skb_store_bytes(skb, ETH_HLEN, &m, sizeof(m), 0))
		return -1;
	return 0;
}

/* "Destination port unreachable" from the service, for a service without
 * backends. */
static __always_inline int dp_icmp_port_unreach(struct __sk_buff *skb)
{
	return dp_icmp_dest_unreach(skb, ICMP_PORT_UNREACH, 0, 0);
}

/* Rewrite one endpoint (address and port) of the quoted packet, and the
 * outer address at outer_off when it equals the old one.  The quoted IP
 * checksum change balances its address change, so the ICMP checksum only
 * follows the port and the quoted UDP checksum (which covers the pseudo
 * header too); TCP's checksum is beyond the 8 quoted bytes. */
static __always_inline int dp_icmp_inner_rewrite(struct __sk_buff *skb, struct dp_pkt *p, __u8 proto, int src_side,
						 __u32 old_ip, __u32 new_ip, __u16 old_port, __u16 new_port,
						 __u16 old_ucsum)
{
	__u32 ip_off = DP_INNER_IP_OFF + (src_side ? offsetof(struct iphdr, saddr) : offsetof(struct iphdr, daddr));
	__u32 port_off = DP_INNER_L4_OFF + (src_side ? 0 : 2);
	if (bpf_l3_csum_replace(skb, DP_INNER_IP_OFF + offsetof(struct iphdr, check), old_ip, new_ip, 4))
		return -1;
	if (bpf_skb_store_bytes(skb, ip_off, &new_ip, 4, 0))
		return -1;
	if (proto == IPPROTO_UDP && old_ucsum) {
		__u32 uoff = DP_INNER_L4_OFF + 6;
		__u16 o = bpf_htons(old_port), n = bpf_htons(new_port), new_ucsum;
		if (bpf_l4_csum_replace(skb, uoff, old_ip, new_ip, 4) || bpf_l4_csum_replace(skb, uoff, o, n, 2))
			return -1;
		if (bpf_skb_load_bytes(skb, uoff, &new_ucsum, 2))
			return -1;
		if (bpf_l4_csum_replace(skb, DP_ICMP_CSUM_OFF, old_ucsum, new_ucsum, 2))
			return -1;
	}
	if (proto != IPPROTO_ICMP && old_port != new_port) {
		__u16 o = bpf_htons(old_port), n = bpf_htons(new_port);
		if (bpf_l4_csum_replace(skb, DP_ICMP_CSUM_OFF, o, n, 2))
			return -1;
		if (bpf_skb_store_bytes(skb, port_off, &n, 2, 0))
			return -1;
	}
	/* The outer address on the same side of the flow: the error came from
	 * (or goes to) that very endpoint. */
	__u32 outer_off = src_side ? DP_IP_DST_OFF : DP_IP_SRC_OFF;
	__u32 outer = src_side ? p->daddr : p->saddr;
	if (outer == old_ip) {
		if (bpf_l3_csum_replace(skb, DP_IP_CSUM_OFF, old_ip, new_ip, 4))
			return -1;
		if (bpf_skb_store_bytes(skb, outer_off, &new_ip, 4, 0))
			return -1;
		if (src_side)
			p->daddr = new_ip;
		else
			p->saddr = new_ip;
	}
	return 0;
}

/* An ICMP error quotes a packet of some flow; find the flow through the
 * quoted (inner) tuple and undo, in the quoted header, the translation its
 * receiver never saw:
 *  - quoted client -> backend (error from the backend side, going to the
 *    client): show the service as the quoted destination, and as the outer
 *    source when the backend itself sent it;
 *  - quoted service -> client (error from the client side about a reply,
 *    going to the service): show the backend as the quoted source and the
 *    outer destination.
 * Returns 1 if related to a known flow (the caller forwards it), 0 if not,
 * -1 on a rewrite failure. */
static __always_inline int dp_icmp_related(struct __sk_buff *skb, struct dp_pkt *p, __u32 *flags)
{
	if (p->ip_len < sizeof(struct iphdr) + sizeof(struct icmphdr) + sizeof(struct iphdr) + 8)
		return 0;
	if (dp_ensure(skb, DP_ICMP_ERR_LEN))
		return 0;
	void *data = (void *)(long)skb->data;
	void *data_end = (void *)(long)skb->data_end;
	struct iphdr *in = data + DP_INNER_IP_OFF;
	__u8 *l4 = data + DP_INNER_L4_OFF;
	if ((void *)(l4 + 8) > data_end)
		return 0;
	if (in->version != 4 || in->ihl != 5)
		return 0;

	struct dp_pkt q = {};
	q.saddr = in->saddr;
	q.daddr = in->daddr;
	q.proto = in->protocol;
	if (q.proto == IPPROTO_TCP || q.proto == IPPROTO_UDP) {
		q.sport = bpf_ntohs(*(__u16 *)l4);
		q.dport = bpf_ntohs(*(__u16 *)(l4 + 2));
	} else if (q.proto == IPPROTO_ICMP && l4[0] == ICMP_ECHO) {
		q.sport = bpf_ntohs(*(__u16 *)(l4 + 4));
	} else {
		return 0;
	}
	__u16 old_ucsum = *(__u16 *)(l4 + 6);

	struct dp_ct_res r;
	dp_ct_lookup(&q, &r);
	if (!r.v)
		return 0;
	struct ct_value_v4 *v = r.v;
	if (v->type != CT_TYPE_NAT_REV || (v->flags2 & (CT_FLAG_SVC_SELF >> 8)))
		return 1; /* related, nothing to translate */

	int rc;
	if (!r.has_fwd && !r.reply) {
		/* Quoted client -> backend, as the backend received it. */
		rc = dp_icmp_inner_rewrite(skb, p, q.proto, 0, q.daddr, v->orig_ip, q.dport, v->orig_port, old_ucsum);
	} else if (r.has_fwd && r.reply) {
		/* Quoted service -> client, as the client received the reply. */
		__u32 be_ip;
		__u16 be_port;
		dp_ct_other(&r.key, q.daddr, q.dport, &be_ip, &be_port);
		rc = dp_icmp_inner_rewrite(skb, p, q.proto, 1, q.saddr, be_ip, q.sport, be_port, old_ucsum);
	} else {
		return 1;
	}
	if (rc)
		return -1;
	*flags |= DP_ST_ICMP_INNER_NAT;
	return 1;
}

#endif
