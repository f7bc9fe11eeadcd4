/* TCP RST for flows conntrack marked SEND_RESET (their backend left the
 * service, dataplane/conntrack.py remove_stale_nat): the flow's next packet
 * is answered with a RST in its place, so the client fails over at once
 * instead of retransmitting to a backend that is gone (as Calico does). */
#ifndef CALICO_EBPF_DP_RESET_H
#define CALICO_EBPF_DP_RESET_H

#include "dp_packet.h"

/* Rewrite the packet in place into the RST its sender must get (RFC 793,
 * "reset generation"): from the address and port it was sent to, back to
 * its source, MACs swapped so the caller can send it back out of the
 * interface it came in on.  If the segment carried an ACK the RST takes
 * its sequence number from that ACK; otherwise it has sequence 0 and
 * acknowledges everything the segment occupied.  Works on the packet's
 * own bytes (little stack: the datapath's frame is nearly full), then cuts
 * it to the bare headers.  Returns 0 or -1. */
static __always_inline int dp_tcp_rst_reply(struct __sk_buff *skb)
{
	if (dp_ensure(skb, DP_L4_OFF + sizeof(struct tcphdr)))
		return -1;
	void *data = (void *)(long)skb->data;
	void *data_end = (void *)(long)skb->data_end;
	struct ethhdr *eth = data;
	struct iphdr *ip = data + DP_IP_OFF;
	struct tcphdr *tcp = data + DP_L4_OFF;
	if ((void *)(tcp + 1) > data_end)
		return -1;

	__u8 mac[ETH_ALEN];
	__builtin_memcpy(mac, eth->h_source, ETH_ALEN);
	__builtin_memcpy(eth->h_source, eth->h_dest, ETH_ALEN);
	__builtin_memcpy(eth->h_dest, mac, ETH_ALEN);

	__u32 seg = bpf_ntohs(ip->tot_len) - ip->ihl * 4 - tcp->doff * 4 + tcp->syn + tcp->fin;
	__u32 addr = ip->saddr;
	ip->saddr = ip->daddr;
	ip->daddr = addr;
	ip->tot_len = bpf_htons(sizeof(struct iphdr) + sizeof(struct tcphdr));
	ip->id = 0;
	ip->frag_off = 0;
	ip->tos = 0;
	ip->ttl = 64;
	ip->check = 0;
	ip->check = dp_csum_fold(bpf_csum_diff(0, 0, (__be32 *)ip, sizeof(*ip), 0));

	__u16 port = tcp->source;
	tcp->source = tcp->dest;
	tcp->dest = port;
	__u32 seq = tcp->seq, ack_seq = tcp->ack_seq;
	int had_ack = tcp->ack;
	/* flags byte 13 and the data offset / window / urgent pointer */
	((__u8 *)tcp)[12] = 5 << 4;
	((__u8 *)tcp)[13] = had_ack ? TCP_FL_RST : (TCP_FL_RST | TCP_FL_ACK);
	tcp->seq = had_ack ? ack_seq : 0;
	tcp->ack_seq = had_ack ? 0 : bpf_htonl(bpf_ntohl(seq) + seg);
	tcp->window = 0;
	tcp->urg_ptr = 0;
	tcp->check = 0;
	__be32 ph[3] = {ip->saddr, ip->daddr, bpf_htonl((IPPROTO_TCP << 16) | sizeof(struct tcphdr))};
	__u32 sum = bpf_csum_diff(0, 0, ph, sizeof(ph), 0);
	tcp->check = dp_csum_fold(bpf_csum_diff(0, 0, (__be32 *)tcp, sizeof(*tcp), sum));

	if (bpf_skb_change_tail(skb, DP_L4_OFF + sizeof(struct tcphdr), 0))
		return -1;
	return 0;
}

#endif
