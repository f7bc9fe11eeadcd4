// SPDX-License-Identifier: GPL-2.0
/* Tiny programs for the attachment tests: each counts the packets it sees
 * (per IP protocol for tc/XDP) and lets them pass, so a test can prove
 * that an attachment is live by watching a counter move, and dead by
 * watching it stand still. Two tc (and two XDP) variants let a test replace one with the
 * other in place and see which one is running. */
#include <linux/bpf.h>
#include <linux/if_ether.h>
#include <linux/ip.h>
#include <linux/pkt_cls.h>
#include <bpf/bpf_helpers.h>
#include <bpf/bpf_endian.h>

/* Index = IPv4 protocol number; NON_IP counts everything else (ARP, IPv6). */
#define NON_IP 255

#define COUNTER_ARRAY(name)                          \
	struct {                                     \
		__uint(type, BPF_MAP_TYPE_ARRAY);    \
		__type(key, __u32);                  \
		__type(value, __u64);                \
		__uint(max_entries, 256);            \
	} name SEC(".maps")

COUNTER_ARRAY(tc_counts);
COUNTER_ARRAY(tc_counts_v2);
COUNTER_ARRAY(xdp_counts);
COUNTER_ARRAY(xdp_counts_v2);
COUNTER_ARRAY(cgroup_counts);

static __always_inline void count(void *map, __u32 key)
{
	__u64 *slot = bpf_map_lookup_elem(map, &key);

	if (slot)
		__sync_fetch_and_add(slot, 1);
}

static __always_inline __u32 ip_proto(void *data, void *data_end)
{
	struct ethhdr *eth = data;
	struct iphdr *ip = data + sizeof(*eth);

	if ((void *)(ip + 1) > data_end || eth->h_proto != bpf_htons(ETH_P_IP))
		return NON_IP;
	return ip->protocol;
}

SEC("tc")
int tc_count(struct __sk_buff *skb)
{
	count(&tc_counts, ip_proto((void *)(long)skb->data, (void *)(long)skb->data_end));
	return TC_ACT_OK;
}

SEC("tc")
int tc_count_v2(struct __sk_buff *skb)
{
	count(&tc_counts_v2, ip_proto((void *)(long)skb->data, (void *)(long)skb->data_end));
	return TC_ACT_OK;
}

SEC("xdp")
int xdp_count(struct xdp_md *ctx)
{
	count(&xdp_counts, ip_proto((void *)(long)ctx->data, (void *)(long)ctx->data_end));
	return XDP_PASS;
}

SEC("xdp")
int xdp_count_v2(struct xdp_md *ctx)
{
	count(&xdp_counts_v2, ip_proto((void *)(long)ctx->data, (void *)(long)ctx->data_end));
	return XDP_PASS;
}

/* cgroup_skb sees packets from the IP header on: key 0 = egress, 1 = ingress. */
SEC("cgroup_skb/egress")
int cgroup_count_egress(struct __sk_buff *skb)
{
	count(&cgroup_counts, 0);
	return 1;
}

SEC("cgroup_skb/ingress")
int cgroup_count_ingress(struct __sk_buff *skb)
{
	count(&cgroup_counts, 1);
	return 1;
}

char LICENSE[] SEC("license") = "GPL";
