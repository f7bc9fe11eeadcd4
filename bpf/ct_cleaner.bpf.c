/* Conntrack cleaner, run by Python with BPF_PROG_TEST_RUN (never attached).
 *
 * Two programs over the dataplane's conntrack map (Python makes this
 * object's cebpf_ct the dataplane's map with bpf_map__reuse_fd):
 *
 *   ct_gc_clean_queue: userspace scanned the map and found entries expired;
 *     it queued their keys with the last_seen values it saw. Delete an entry
 *     (and its NAT partner) only if last_seen is unchanged, so a flow that
 *     traffic refreshed after the scan survives.
 *   ct_gc_sweep: walk the whole CT map in the kernel and apply the timeouts
 *     passed in the arguments; no copy of the map to userspace at all.
 *
 * The expiry rule is Calico's (felix/bpf/conntrack/timeouts): keep it in
 * step with calico_ebpf/dataplane/conntrack_timeouts.py:expiry_reasons. */
#include <linux/bpf.h>
#include <linux/in.h>
#include <linux/pkt_cls.h>
#include <bpf/bpf_helpers.h>

#include "conntrack.h"
#include "ct_cleaner.h"

/* Same name and layout as maps.h's cebpf_ct: replaced by the dataplane's
 * map before load, so its size here does not matter. */
struct {
	__uint(type, BPF_MAP_TYPE_LRU_HASH);
	__type(key, struct ct_key_v4);
	__type(value, struct ct_value_v4);
	__uint(max_entries, 512000);
} cebpf_ct SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__type(key, __u32);
	__type(value, struct ct_gc_item);
	__uint(max_entries, 65536);
} cebpf_ct_gcq SEC(".maps");

struct gc_ctx {
	struct ct_gc_args a;
	struct ct_gc_stats s;
};

#define TCP_SYN_ACK (CT_LEG_SYN_SEEN | CT_LEG_ACK_SEEN)

static __always_inline __u32 ct_flags32(const struct ct_value_v4 *v)
{
	return v->flags | ((__u32)v->flags2 << 8) | ((__u32)v->flags3 << 16) | ((__u32)v->flags4 << 24);
}

/* Why a NORMAL or NAT_REV entry has expired, or CT_GC_ALIVE. */
static __always_inline int ct_expiry_reason(__u32 proto, const struct ct_value_v4 *v,
					    const struct ct_gc_timeouts *t, __u64 now)
{
	__u64 last = v->last_seen;
	__u64 age = now > last ? now - last : 0;

	switch (proto) {
	case IPPROTO_TCP: {
		__u32 a = v->a_to_b.flags, b = v->b_to_a.flags;
		int dsr = (ct_flags32(v) & CT_FLAG_DSR_FWD) != 0;
		/* A DSR ingress node sees one direction only: one FIN is all it gets. */
		int fins = dsr ? ((a | b) & CT_LEG_FIN_SEEN) != 0 : ((a & b) & CT_LEG_FIN_SEEN) != 0;
		int established = dsr || (a & b & TCP_SYN_ACK) == TCP_SYN_ACK;

		if (((a | b) & CT_LEG_RST_SEEN) && age > t->tcp_reset_seen)
			return CT_GC_TCP_RST_SEEN;
		if (fins && age > t->tcp_fins_seen)
			return CT_GC_TCP_FINS_SEEN;
		if (v->rst_seen && age > t->tcp_rst_idle)
			return CT_GC_TCP_RST_IDLE;
		if (established)
			return age > t->tcp_established ? CT_GC_TCP_ESTABLISHED : CT_GC_ALIVE;
		return age > t->tcp_syn_sent ? CT_GC_TCP_SYN_SENT : CT_GC_ALIVE;
	}
	case IPPROTO_UDP:
		return age > t->udp ? CT_GC_UDP : CT_GC_ALIVE;
	case IPPROTO_ICMP:
	case 58: /* IPPROTO_ICMPV6, not in linux/in.h */
		return age > t->icmp ? CT_GC_ICMP : CT_GC_ALIVE;
	default:
		return age > t->generic ? CT_GC_GENERIC : CT_GC_ALIVE;
	}
}

/* A switch instead of expired[reason]++: a variable offset into the
 * caller's stack is something the verifier may refuse. */
static __always_inline void count_reason(struct ct_gc_stats *s, int reason)
{
	switch (reason) {
	case CT_GC_TCP_SYN_SENT: s->expired[CT_GC_TCP_SYN_SENT]++; break;
	case CT_GC_TCP_ESTABLISHED: s->expired[CT_GC_TCP_ESTABLISHED]++; break;
	case CT_GC_TCP_FINS_SEEN: s->expired[CT_GC_TCP_FINS_SEEN]++; break;
	case CT_GC_TCP_RST_SEEN: s->expired[CT_GC_TCP_RST_SEEN]++; break;
	case CT_GC_TCP_RST_IDLE: s->expired[CT_GC_TCP_RST_IDLE]++; break;
	case CT_GC_UDP: s->expired[CT_GC_UDP]++; break;
	case CT_GC_ICMP: s->expired[CT_GC_ICMP]++; break;
	case CT_GC_GENERIC: s->expired[CT_GC_GENERIC]++; break;
	case CT_GC_ORPHAN_FWD: s->expired[CT_GC_ORPHAN_FWD]++; break;
	default: break;
	}
}

static __always_inline void delete_counted(struct ct_gc_stats *s, const struct ct_key_v4 *k)
{
	if (bpf_map_delete_elem(&cebpf_ct, k) == 0)
		s->deleted++;
}

/* ---- in-kernel sweep --------------------------------------------------- */

/* REVs this walk deleted before reaching their FWD, with the reason: the
 * FWD, found later, is then known to be a pair partner rather than an
 * orphan (orphans get a grace period; partners go at once). Emptied at the
 * end of each run. If it overflows, such a FWD is treated as an orphan:
 * deleted by this sweep or, if recently hit, by the next one. */
struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__type(key, struct ct_key_v4);
	__type(value, __u32);
	__uint(max_entries, 65536);
} cebpf_ct_gcrev SEC(".maps");

static long sweep_one(void *map, struct ct_key_v4 *key, struct ct_value_v4 *v, struct gc_ctx *c)
{
	const struct ct_gc_timeouts *t = &c->a.t;
	__u64 now = c->a.now;
	int reason;

	if (v->type == CT_TYPE_NAT_FWD) {
		struct ct_key_v4 rev_key = v->nat_rev_key;
		struct ct_value_v4 *rev = bpf_map_lookup_elem(&cebpf_ct, &rev_key);
		__u32 *gone_reason;

		c->s.scanned++;

		if (rev && rev->type == CT_TYPE_NAT_REV) {
			reason = ct_expiry_reason(rev_key.protocol, rev, t, now);
			if (reason == CT_GC_ALIVE)
				return 0;
			/* Had the walk reached the REV, it would be deleted already
			 * (same now, same rule): it is ahead of us, count it here. */
			c->s.scanned++;
			count_reason(&c->s, reason);
			count_reason(&c->s, reason);
			delete_counted(&c->s, key);
			delete_counted(&c->s, &rev_key);
			return 0;
		}
		gone_reason = bpf_map_lookup_elem(&cebpf_ct_gcrev, &rev_key);
		if (gone_reason) {
			count_reason(&c->s, *gone_reason);
			bpf_map_delete_elem(&cebpf_ct_gcrev, &rev_key);
			delete_counted(&c->s, key);
			return 0;
		}
		/* The datapath may write the FWD entry a moment before its
		 * REV: an orphan gets the creation grace period. */
		if ((now > v->last_seen ? now - v->last_seen : 0) <= t->creation_grace)
			return 0;
		count_reason(&c->s, CT_GC_ORPHAN_FWD);
		delete_counted(&c->s, key);
		return 0;
	}
	reason = ct_expiry_reason(key->protocol, v, t, now);
	/* A REV deleted with its FWD a moment ago can still be reached: an
	 * unlinked hash node keeps its next pointer, so when the REV sat right
	 * behind its FWD in one bucket the walk steps onto it. Only expired
	 * REVs can be such ghosts, so only they pay for the check. */
	if (reason != CT_GC_ALIVE && v->type == CT_TYPE_NAT_REV && !bpf_map_lookup_elem(&cebpf_ct, key))
		return 0;
	c->s.scanned++;
	if (reason == CT_GC_ALIVE)
		return 0;
	count_reason(&c->s, reason);
	if (v->type == CT_TYPE_NAT_REV) {
		__u32 r = reason;

		bpf_map_update_elem(&cebpf_ct_gcrev, key, &r, BPF_ANY);
	}
	delete_counted(&c->s, key);
	return 0;
}

static long forget_rev(void *map, struct ct_key_v4 *key, __u32 *reason, void *ctx)
{
	bpf_map_delete_elem(&cebpf_ct_gcrev, key);
	return 0;
}

SEC("tc")
int ct_gc_sweep(struct __sk_buff *skb)
{
	struct gc_ctx c = {};

	if (bpf_skb_load_bytes(skb, 0, &c.a, sizeof(c.a)))
		return TC_ACT_SHOT;
	bpf_for_each_map_elem(&cebpf_ct, sweep_one, &c, 0);
	/* What is left are REVs that had no FWD. */
	bpf_for_each_map_elem(&cebpf_ct_gcrev, forget_rev, NULL, 0);
	if (bpf_skb_store_bytes(skb, sizeof(c.a), &c.s, sizeof(c.s), 0))
		return TC_ACT_SHOT;
	return TC_ACT_OK;
}

/* ---- queue-driven compare-and-delete ----------------------------------- */

static long clean_one(void *map, __u32 *idx, struct ct_gc_item *item, struct gc_ctx *c)
{
	struct ct_value_v4 *v, *p = NULL;
	struct ct_key_v4 key, partner;

	if (*idx >= c->a.count)
		return 1; /* past the slots Python filled this round */
	c->s.scanned++;
	key = item->key;
	v = bpf_map_lookup_elem(&cebpf_ct, &key);
	if (item->has_partner) {
		partner = item->partner;
		p = bpf_map_lookup_elem(&cebpf_ct, &partner);
	}
	if (!v && !p) {
		c->s.gone++;
		return 0;
	}
	/* Traffic after the scan moved last_seen on; keep the flow (both halves). */
	if ((v && v->last_seen != item->last_seen) || (p && p->last_seen != item->partner_last_seen)) {
		c->s.refreshed++;
		return 0;
	}
	if (v)
		delete_counted(&c->s, &key);
	if (p)
		delete_counted(&c->s, &partner);
	return 0;
}

SEC("tc")
int ct_gc_clean_queue(struct __sk_buff *skb)
{
	struct gc_ctx c = {};

	if (bpf_skb_load_bytes(skb, 0, &c.a, sizeof(c.a)))
		return TC_ACT_SHOT;
	bpf_for_each_map_elem(&cebpf_ct_gcq, clean_one, &c, 0);
	if (bpf_skb_store_bytes(skb, sizeof(c.a), &c.s, sizeof(c.s), 0))
		return TC_ACT_SHOT;
	return TC_ACT_OK;
}

char LICENSE[] SEC("license") = "GPL";
