/* Packet parsing and rewriting for the datapath (IPv4 only).
 *
 * The datapath handles IPv4 without options (IHL 5), so every header has a
 * fixed offset; that keeps the verifier's job simple and the code fast.
 * Packets with IP options and fragments are dropped and counted, like
 * Calico does by default. */
#ifndef CALICO_EBPF_DP_PACKET_H
#define CALICO_EBPF_DP_PACKET_H

#include <linux/bpf.h>
#include <linux/if_ether.h>
#include <linux/in.h>
#include <linux/ip.h>
#include <linux/tcp.h>
#include <linux/udp.h>
#include <linux/pkt_cls.h>
#include <bpf/bpf_helpers.h>
#include <bpf/bpf_endian.h>

#include "counters.h"

/* <linux/icmp.h> drags in libc socket headers that do not build for BPF. */
#define ICMP_ECHOREPLY 0
#define ICMP_DEST_UNREACH 3
#define ICMP_ECHO 8
#define ICMP_TIME_EXCEEDED 11
#define ICMP_PARAMETERPROB 12
#define ICMP_PORT_UNREACH 3
#define ICMP_FRAG_NEEDED 4

struct icmphdr {
	__u8 type;
	__u8 code;
	__sum16 checksum;
	union {
		struct {
			__be16 id;
			__be16 sequence;
		} echo;
		__be32 gateway;
		struct {
			__be16 __unused;
			__be16 mtu;
		} frag;
	} un;
};

#define DP_IP_OFF ETH_HLEN
#define DP_L4_OFF (ETH_HLEN + sizeof(struct iphdr))
#define DP_IP_CSUM_OFF (DP_IP_OFF + offsetof(struct iphdr, check))
#define DP_IP_SRC_OFF (DP_IP_OFF + offsetof(struct iphdr, saddr))
#define DP_IP_DST_OFF (DP_IP_OFF + offsetof(struct iphdr, daddr))
#define DP_TCP_CSUM_OFF (DP_L4_OFF + offsetof(struct tcphdr, check))
#define DP_UDP_CSUM_OFF (DP_L4_OFF + offsetof(struct udphdr, check))
#define DP_ICMP_CSUM_OFF (DP_L4_OFF + offsetof(struct icmphdr, checksum))
#define DP_SPORT_OFF DP_L4_OFF
#define DP_DPORT_OFF (DP_L4_OFF + 2)
/* ICMP error: inner IP header and the first 8 bytes of its L4 header. */
#define DP_INNER_IP_OFF (DP_L4_OFF + sizeof(struct icmphdr))
#define DP_INNER_L4_OFF (DP_INNER_IP_OFF + sizeof(struct iphdr))
#define DP_ICMP_ERR_LEN (DP_INNER_L4_OFF + 8)

#ifndef offsetof
#define offsetof(t, m) __builtin_offsetof(t, m)
#endif

#define TCP_FL_FIN 0x01
#define TCP_FL_SYN 0x02
#define TCP_FL_RST 0x04
#define TCP_FL_ACK 0x10

enum dp_parse_rc {
	DP_PARSE_OK = 0,
	DP_PARSE_NOT_IPV4 = 1, /* ARP, IPv6, ...: the caller decides */
	DP_PARSE_DROP = 2,     /* malformed: reason says why */
};

/* What the datapath needs of a packet; ports host order, IPs network order. */
struct dp_pkt {
	__u32 saddr;
	__u32 daddr;
	__u16 sport; /* ICMP echo: id for requests, 0 for replies */
	__u16 dport; /* ICMP echo: 0 for requests, id for replies */
	__u8 proto;
	__u8 tcp_flags;
	__u8 icmp_type;
	__u8 icmp_code;
	__u16 ip_len;
	__u16 csum_off; /* L4 checksum offset, 0 = none (ICMP handled apart) */
	__u16 eth_proto; /* network order */
	__u8 icmp_err;   /* ICMP destination unreachable / time exceeded / param problem */
	__u8 pad;
};

static __always_inline int dp_is_icmp_error(__u8 type)
{
	return type == ICMP_DEST_UNREACH || type == ICMP_TIME_EXCEEDED || type == ICMP_PARAMETERPROB;
}

/* Make sure the first len bytes are in the linear area. */
static __always_inline int dp_ensure(struct __sk_buff *skb, __u32 len)
{
	if ((void *)(long)skb->data + len <= (void *)(long)skb->data_end)
		return 0;
	if (skb->len < len)
		return -1;
	if (bpf_skb_pull_data(skb, len))
		return -1;
	if ((void *)(long)skb->data + len > (void *)(long)skb->data_end)
		return -1;
	return 0;
}

static __always_inline int dp_parse(struct __sk_buff *skb, struct dp_pkt *p, __u32 *reason)
{
	if (dp_ensure(skb, ETH_HLEN)) {
		*reason = CNT_DROP_SHORT;
		return DP_PARSE_DROP;
	}
	void *data = (void *)(long)skb->data;
	void *data_end = (void *)(long)skb->data_end;
	struct ethhdr *eth = data;
	if ((void *)(eth + 1) > data_end) {
		*reason = CNT_DROP_SHORT;
		return DP_PARSE_DROP;
	}
	p->eth_proto = eth->h_proto;
	if (eth->h_proto != bpf_htons(ETH_P_IP))
		return DP_PARSE_NOT_IPV4;

	if (dp_ensure(skb, DP_L4_OFF)) {
		*reason = CNT_DROP_SHORT;
		return DP_PARSE_DROP;
	}
	data = (void *)(long)skb->data;
	data_end = (void *)(long)skb->data_end;
	struct iphdr *ip = data + DP_IP_OFF;
	if ((void *)(ip + 1) > data_end) {
		*reason = CNT_DROP_SHORT;
		return DP_PARSE_DROP;
	}
	if (ip->version != 4 || ip->ihl < 5) {
		*reason = CNT_DROP_MALFORMED_IP;
		return DP_PARSE_DROP;
	}
	if (ip->ihl > 5) {
		*reason = CNT_DROP_IP_OPTIONS;
		return DP_PARSE_DROP;
	}
	__u16 tot = bpf_ntohs(ip->tot_len);
	/* A total length beyond the frame means a truncated packet. */
	if (tot < sizeof(struct iphdr) || tot > skb->len - ETH_HLEN) {
		*reason = CNT_DROP_MALFORMED_IP;
		return DP_PARSE_DROP;
	}
	if (ip->frag_off & bpf_htons(0x3fff)) {
		*reason = CNT_FRAG_UNSUPPORTED;
		return DP_PARSE_DROP;
	}
	p->saddr = ip->saddr;
	p->daddr = ip->daddr;
	p->proto = ip->protocol;
	p->ip_len = tot;
	p->sport = 0;
	p->dport = 0;
	p->tcp_flags = 0;
	p->icmp_type = 0;
	p->icmp_code = 0;
	p->csum_off = 0;
	p->icmp_err = 0;

	__u32 l4len = tot - sizeof(struct iphdr);
	switch (p->proto) {
	case IPPROTO_TCP: {
		if (l4len < sizeof(struct tcphdr) || dp_ensure(skb, DP_L4_OFF + sizeof(struct tcphdr))) {
			*reason = CNT_DROP_SHORT;
			return DP_PARSE_DROP;
		}
		data = (void *)(long)skb->data;
		data_end = (void *)(long)skb->data_end;
		struct tcphdr *tcp = data + DP_L4_OFF;
		if ((void *)(tcp + 1) > data_end) {
			*reason = CNT_DROP_SHORT;
			return DP_PARSE_DROP;
		}
		if (tcp->doff < 5 || (__u32)tcp->doff * 4 > l4len) {
			*reason = CNT_DROP_MALFORMED_IP;
			return DP_PARSE_DROP;
		}
		p->sport = bpf_ntohs(tcp->source);
		p->dport = bpf_ntohs(tcp->dest);
		p->tcp_flags = ((__u8 *)tcp)[13];
		p->csum_off = DP_TCP_CSUM_OFF;
		break;
	}
	case IPPROTO_UDP: {
		if (l4len < sizeof(struct udphdr) || dp_ensure(skb, DP_L4_OFF + sizeof(struct udphdr))) {
			*reason = CNT_DROP_SHORT;
			return DP_PARSE_DROP;
		}
		data = (void *)(long)skb->data;
		data_end = (void *)(long)skb->data_end;
		struct udphdr *udp = data + DP_L4_OFF;
		if ((void *)(udp + 1) > data_end) {
			*reason = CNT_DROP_SHORT;
			return DP_PARSE_DROP;
		}
		p->sport = bpf_ntohs(udp->source);
		p->dport = bpf_ntohs(udp->dest);
		p->csum_off = DP_UDP_CSUM_OFF;
		break;
	}
	case IPPROTO_SCTP: {
		/* Only the ports (the first 4 bytes, laid out as in UDP), so SCTP
		 * associations get a conntrack key of their own and a new one in the
		 * reverse direction is not mistaken for a reply. Never translated:
		 * csum_off stays 0 (SCTP's CRC32c covers the payload). */
		if (l4len < sizeof(struct udphdr) || dp_ensure(skb, DP_L4_OFF + sizeof(struct udphdr))) {
			*reason = CNT_DROP_SHORT;
			return DP_PARSE_DROP;
		}
		data = (void *)(long)skb->data;
		data_end = (void *)(long)skb->data_end;
		struct udphdr *ports = data + DP_L4_OFF;
		if ((void *)(ports + 1) > data_end) {
			*reason = CNT_DROP_SHORT;
			return DP_PARSE_DROP;
		}
		p->sport = bpf_ntohs(ports->source);
		p->dport = bpf_ntohs(ports->dest);
		break;
	}
	case IPPROTO_ICMP: {
		if (l4len < sizeof(struct icmphdr) || dp_ensure(skb, DP_L4_OFF + sizeof(struct icmphdr))) {
			*reason = CNT_DROP_SHORT;
			return DP_PARSE_DROP;
		}
		data = (void *)(long)skb->data;
		data_end = (void *)(long)skb->data_end;
		struct icmphdr *icmp = data + DP_L4_OFF;
		if ((void *)(icmp + 1) > data_end) {
			*reason = CNT_DROP_SHORT;
			return DP_PARSE_DROP;
		}
		p->icmp_type = icmp->type;
		p->icmp_code = icmp->code;
		/* Echo flows are tracked with the identifier as the requester's
		 * port, so a request and its reply share one conntrack key. */
		if (icmp->type == ICMP_ECHO)
			p->sport = bpf_ntohs(icmp->un.echo.id);
		else if (icmp->type == ICMP_ECHOREPLY)
			p->dport = bpf_ntohs(icmp->un.echo.id);
		else if (dp_is_icmp_error(icmp->type))
			p->icmp_err = 1;
		break;
	}
	default:
		break;
	}
	return DP_PARSE_OK;
}

/* Rewrite the IPv4 address at off (saddr or daddr) and fix both checksums. */
static __always_inline int dp_rewrite_ip(struct __sk_buff *skb, struct dp_pkt *p, __u32 off, __u32 old_ip, __u32 new_ip)
{
	if (old_ip == new_ip)
		return 0;
	if (p->csum_off) {
		__u64 fl = BPF_F_PSEUDO_HDR | sizeof(new_ip);
		if (p->proto == IPPROTO_UDP)
			fl |= BPF_F_MARK_MANGLED_0; /* a zero UDP checksum means "none": keep it */
		if (bpf_l4_csum_replace(skb, p->csum_off, old_ip, new_ip, fl))
			return -1;
	}
	if (bpf_l3_csum_replace(skb, DP_IP_CSUM_OFF, old_ip, new_ip, sizeof(new_ip)))
		return -1;
	return bpf_skb_store_bytes(skb, off, &new_ip, sizeof(new_ip), 0);
}

/* Rewrite the L4 port at off (host-order values) and fix the L4 checksum. */
static __always_inline int dp_rewrite_port(struct __sk_buff *skb, struct dp_pkt *p, __u32 off, __u16 old_port, __u16 new_port)
{
	if (old_port == new_port || !p->csum_off)
		return 0;
	__u16 o = bpf_htons(old_port), n = bpf_htons(new_port);
	__u64 fl = sizeof(n);
	if (p->proto == IPPROTO_UDP)
		fl |= BPF_F_MARK_MANGLED_0;
	if (bpf_l4_csum_replace(skb, p->csum_off, o, n, fl))
		return -1;
	return bpf_skb_store_bytes(skb, off, &n, sizeof(n), 0);
}

static __always_inline __u16 dp_csum_fold(__u64 sum)
{
	sum = (sum & 0xffff) + (sum >> 16);
	sum = (sum & 0xffff) + (sum >> 16);
	sum = (sum & 0xffff) + (sum >> 16);
	return (__u16)~sum;
}

#endif
