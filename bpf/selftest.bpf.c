/* Tiny programs for the kernel layer's own tests (tests/kernel/test_*.py).
 * Not part of the dataplane. */
#include <linux/bpf.h>
#include <linux/pkt_cls.h>
#include <bpf/bpf_helpers.h>

/* retval of selftest_rewrite when it rewrote the packet: an arbitrary
 * value no real tc action uses, so a test cannot pass by accident. */
#define SELFTEST_REWRITTEN 42
#define SELFTEST_MARK 0xab

struct selftest_kv {
	__u32 id;
	__u16 port;
	__u8 proto;
	__u8 pad;
};

struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__type(key, __u32);
	__type(value, __u64);
	__uint(max_entries, 64);
} selftest_hits SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__type(key, struct selftest_kv);
	__type(value, __u64);
	__uint(max_entries, 1024);
} selftest_kv SEC(".maps");

/* Overwrites byte 14 (the first byte after the Ethernet header). */
SEC("tc")
int selftest_rewrite(struct __sk_buff *skb)
{
	__u8 *data = (__u8 *)(long)skb->data;
	__u8 *end = (__u8 *)(long)skb->data_end;

	if (data + 15 > end)
		return TC_ACT_SHOT;
	data[14] = SELFTEST_MARK;
	return SELFTEST_REWRITTEN;
}

/* Counts packets by length into selftest_hits. */
SEC("tc")
int selftest_count(struct __sk_buff *skb)
{
	__u32 len = skb->len;
	__u64 one = 1, *n;

	n = bpf_map_lookup_elem(&selftest_hits, &len);
	if (n)
		__sync_fetch_and_add(n, 1);
	else
		bpf_map_update_elem(&selftest_hits, &len, &one, BPF_NOEXIST);
	return TC_ACT_OK;
}

/* XDP_PASS for frames whose first byte is 0xff (broadcast), else XDP_DROP. */
SEC("xdp")
int selftest_xdp(struct xdp_md *ctx)
{
	__u8 *data = (__u8 *)(long)ctx->data;
	__u8 *end = (__u8 *)(long)ctx->data_end;

	if (data + 1 > end)
		return XDP_ABORTED;
	return data[0] == 0xff ? XDP_PASS : XDP_DROP;
}

char LICENSE[] SEC("license") = "GPL";
