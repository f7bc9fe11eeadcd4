/* Conntrack for the datapath: key ordering, lookup with NAT resolution,
 * per-leg TCP state, entry creation.
 *
 * Entries (bpf/include/conntrack.h, Calico's layout):
 *  - NORMAL, keyed by the flow's tuple;
 *  - NAT_REV, keyed by the post-NAT tuple (client or masquerade source <->
 *    backend), holding the legs and orig_ip/orig_port (the service) and
 *    orig_sip (the client, differs from the key only for hairpin);
 *  - NAT_FWD, keyed by the pre-NAT tuple (client <-> service), holding the
 *    NAT_REV key.
 * The opener is "A" unless CT_FLAG_BA is set (on both NAT entries). */
#ifndef CALICO_EBPF_DP_CT_H
#define CALICO_EBPF_DP_CT_H

#include "maps.h"
#include "dp_packet.h"

struct dp_ct_res {
	__u32 rc;                 /* enum dp_ct_rc */
	struct ct_value_v4 *v;    /* tracking entry (NORMAL or NAT_REV), NULL if none */
	struct ct_key_v4 key;     /* key of the tracking entry */
	struct ct_key_v4 fwd_key; /* key of the NAT_FWD entry, if any */
	__u8 src_is_a;            /* packet source is A in the tracking key */
	__u8 reply;               /* packet travels towards the opener */
	__u8 has_fwd;
	__u8 pad;
	/* Rewrites this packet needs (0 = none). */
	__u32 new_saddr;
	__u32 new_daddr;
	__u16 new_sport;
	__u16 new_dport;
};

/* Canonical key: the endpoint comparing lower (raw address word as loaded,
 * then port) is A, so both directions share one key (reference 2.7). */
static __always_inline int dp_ct_key(struct ct_key_v4 *k, __u8 proto, __u32 src, __u32 dst, __u16 sport, __u16 dport)
{
	k->protocol = proto;
	if (src < dst || (src == dst && sport < dport)) {
		k->addr_a = src;
		k->port_a = sport;
		k->addr_b = dst;
		k->port_b = dport;
		return 1;
	}
	k->addr_a = dst;
	k->port_a = dport;
	k->addr_b = src;
	k->port_b = sport;
	return 0;
}

static __always_inline int dp_ct_opener_is_a(struct ct_value_v4 *v)
{
	return !(v->flags2 & (CT_FLAG_BA >> 8));
}

static __always_inline void dp_ct_set_ba(struct ct_value_v4 *v, int opener_is_a)
{
	if (!opener_is_a)
		v->flags2 |= CT_FLAG_BA >> 8;
}

static __always_inline int dp_ct_closed(struct ct_value_v4 *v)
{
	__u32 a = v->a_to_b.flags, b = v->b_to_a.flags;
	if ((a | b) & CT_LEG_RST_SEEN)
		return 1;
	/* The ingress node of a DSR flow never sees the backend's half: one
	 * FIN closes it there (as Calico). */
	if (v->flags & CT_FLAG_DSR_FWD)
		return (a | b) & CT_LEG_FIN_SEEN;
	return (a & CT_LEG_FIN_SEEN) && (b & CT_LEG_FIN_SEEN);
}

static __always_inline void dp_ct_leg_update(struct ct_value_v4 *v, int src_is_a, struct dp_pkt *p, __u32 ifindex,
					     __u32 leg_flags, __u64 now)
{
	struct ct_leg *leg = src_is_a ? &v->a_to_b : &v->b_to_a;
	leg->packets++;
	leg->bytes += p->ip_len;
	__u32 fl = leg_flags;
	if (p->proto == IPPROTO_TCP) {
		if (p->tcp_flags & TCP_FL_SYN)
			fl |= CT_LEG_SYN_SEEN;
		if (p->tcp_flags & TCP_FL_ACK)
			fl |= CT_LEG_ACK_SEEN;
		if (p->tcp_flags & TCP_FL_FIN)
			fl |= CT_LEG_FIN_SEEN;
		if (p->tcp_flags & TCP_FL_RST) {
			fl |= CT_LEG_RST_SEEN;
			v->rst_seen = now;
		}
	}
	if ((leg->flags & fl) != fl)
		leg->flags |= fl;
	if (ifindex && leg->ifindex != ifindex)
		leg->ifindex = ifindex;
	v->last_seen = now;
}

/* Which endpoint of the NAT_REV key is not (addr, port): the backend seen
 * from the client, or the client seen from the backend. */
static __always_inline void dp_ct_other(struct ct_key_v4 *k, __u32 addr, __u16 port, __u32 *o_addr, __u16 *o_port)
{
	if (k->addr_a == addr && k->port_a == port) {
		*o_addr = k->addr_b;
		*o_port = k->port_b;
	} else {
		*o_addr = k->addr_a;
		*o_port = k->port_a;
	}
}

static __always_inline void dp_ct_delete_pair(struct dp_ct_res *r)
{
	if (r->has_fwd)
		bpf_map_delete_elem(&cebpf_ct, &r->fwd_key);
	bpf_map_delete_elem(&cebpf_ct, &r->key);
}

/* Look the packet's tuple up and work out the rewrites an established
 * packet needs.  Legs are not touched here (the caller decides). */
static __always_inline void dp_ct_lookup(struct dp_pkt *p, struct dp_ct_res *r)
{
	struct ct_key_v4 k;
	int src_is_a = dp_ct_key(&k, p->proto, p->saddr, p->daddr, p->sport, p->dport);
	struct ct_value_v4 *v = bpf_map_lookup_elem(&cebpf_ct, &k);

	r->rc = DP_CT_NEW;
	r->v = 0;
	r->has_fwd = 0;
	r->new_saddr = 0;
	r->new_daddr = 0;
	r->new_sport = 0;
	r->new_dport = 0;
	if (!v)
		return;

	if (v->type == CT_TYPE_NAT_FWD) {
		int reply = src_is_a == dp_ct_opener_is_a(v) ? 0 : 1;
		struct ct_key_v4 rk = v->nat_rev_key;
		struct ct_value_v4 *rv = bpf_map_lookup_elem(&cebpf_ct, &rk);
		if (!rv || rv->type != CT_TYPE_NAT_REV) {
			/* Tracking entry evicted: the forward stub is useless. */
			bpf_map_delete_elem(&cebpf_ct, &k);
			return;
		}
		r->fwd_key = k;
		r->has_fwd = 1;
		r->key = rk;
		r->v = rv;
		if (reply) {
			/* Already translated back by an earlier hop. */
			r->reply = 1;
			r->src_is_a = !dp_ct_opener_is_a(rv);
			r->rc = DP_CT_ESTABLISHED;
			return;
		}
		__u32 post_src = p->saddr;
		if (rv->flags2 & (CT_FLAG_SVC_SELF >> 8)) {
			post_src = rv->orig_ip;
			r->new_saddr = post_src;
		}
		__u32 be_addr;
		__u16 be_port;
		dp_ct_other(&rk, post_src, p->sport, &be_addr, &be_port);
		r->new_daddr = be_addr;
		r->new_dport = be_port;
		r->src_is_a = rk.addr_a == post_src && rk.port_a == p->sport;
		r->reply = 0;
		r->rc = DP_CT_ESTABLISHED_DNAT;
		return;
	}

	r->key = k;
	r->v = v;
	r->src_is_a = src_is_a;
	r->reply = src_is_a == dp_ct_opener_is_a(v) ? 0 : 1;
	r->rc = DP_CT_ESTABLISHED;
	if (v->type == CT_TYPE_NAT_REV && r->reply) {
		/* Reply from the backend: show the service as its source. */
		r->new_saddr = v->orig_ip;
		r->new_sport = v->orig_port;
		if (v->flags2 & (CT_FLAG_SVC_SELF >> 8))
			r->new_daddr = v->orig_sip;
		r->rc = DP_CT_ESTABLISHED_SNAT;
	}
}

#endif
