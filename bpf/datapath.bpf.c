// SPDX-License-Identifier: GPL-2.0
/* The calico_ebpf datapath: one object, attached to every managed interface.
 *
 *   cebpf_from_ifc  TC ingress: packets leaving a pod (host side of its veth)
 *                   or entering the node on a data interface;
 *   cebpf_to_ifc    TC egress: packets going to a pod or leaving the node.
 *
 * What an interface is comes from cebpf_ifstate[skb->ifindex] (IFACE_WEP or
 * IFACE_HEP, and its policy slots), so attaching one more interface needs
 * no recompilation.  Unknown interfaces are left alone.
 *
 * Per packet: parse (IPv4, no options/fragments), conntrack (NORMAL,
 * NAT_FWD/NAT_REV pairs), then for established flows the recorded NAT and
 * forwarding; for new flows: strict RPF on workloads, service lookup
 * (exact-hash frontends, LPM only for source ranges), backend choice,
 * failsafes, policy by tail call (dp_state.h documents the convention),
 * then conntrack creation, DNAT and forwarding (bpf_redirect_neigh to local
 * workloads, the host stack otherwise).  Services without backends are
 * answered with ICMP port unreachable; a pod reaching itself through a
 * service is masqueraded to the service IP.  NodePort flows whose backend
 * lives on another node travel there in VXLAN (dp_tunnel.h).
 */
#include <linux/bpf.h>
#include <linux/pkt_cls.h>
#include <bpf/bpf_helpers.h>
#include <bpf/bpf_endian.h>

#include "maps.h"
#include "dp_packet.h"
#include "dp_ct.h"
#include "dp_route.h"
#include "dp_nat.h"
#include "dp_icmp.h"
#include "dp_tunnel.h"
#include "dp_reset.h"

/* Calico's skb marks: set on packets this datapath redirected to a local
 * workload after conntrack approved both legs (or ICMP it generated), so
 * the egress program of the target skips its work. */
#define DP_MARK_BYPASS 0x03000000

/* Internal state flag: no conntrack entry for this packet (mid-flow TCP
 * miss, unmatched ICMP error). */
#define DP_ST_NO_CT 0x80000000

static const struct counters_value dp_zero_counters;

/* Store the mark with one instruction on the ctx register: clang otherwise
 * keeps &skb->mark in a spilled register, which the verifier refuses. */
static __always_inline void dp_set_mark(struct __sk_buff *skb, __u32 mark)
{
	asm volatile("*(u32 *)(%[skb] + %[off]) = %[m]"
		     :
		     : [skb] "r"(skb), [off] "i"(__builtin_offsetof(struct __sk_buff, mark)), [m] "r"(mark)
		     : "memory");
}

static __always_inline struct dp_state *dp_state_get(void)
{
	__u32 k = 0;
	return bpf_map_lookup_elem(&cebpf_state, &k);
}

static __always_inline struct counters_value *dp_counters(__u32 ifindex, __u32 hook)
{
	struct counters_key k = { .ifindex = ifindex, .hook = hook };
	struct counters_value *c = bpf_map_lookup_elem(&cebpf_counters, &k);
	if (c)
		return c;
	bpf_map_update_elem(&cebpf_counters, &k, &dp_zero_counters, BPF_NOEXIST);
	return bpf_map_lookup_elem(&cebpf_counters, &k);
}

static __always_inline void dp_count(struct counters_value *c, __u32 reason)
{
	if (c && reason < CNT_MAX)
		c->counts[reason]++;
}

static __always_inline int dp_drop(struct dp_state *st, struct counters_value *c, __u32 reason)
{
	st->verdict = DP_VERDICT_DROP;
	st->reason = reason;
	dp_count(c, reason);
	return TC_ACT_SHOT;
}

static __always_inline int dp_is_from_wep(struct dp_state *st)
{
	return st->hook == HOOK_TC_INGRESS && (st->if_flags & IFACE_WEP);
}

static __always_inline void dp_note_route_dst(struct dp_state *st, struct route_value_v4 *rd)
{
	st->route_flags_dst = rd ? rd->flags : 0;
	st->route_ifindex_dst = rd ? rd->ifindex : 0;
}

/* Send the packet on, by what st->route_*_dst say about its destination:
 * redirect to a local workload's veth (only from ingress hooks; on egress
 * the packet is already on its way), else let the host stack route it. */
/* Out of a data interface, bypassing the host stack (a NodePort reply
 * with a source the stack would refuse as martian or RPF-drop); the
 * kernel routes dst and fills in the MACs. */
static __always_inline int dp_redirect_out(struct __sk_buff *skb, struct dp_state *st, struct counters_value *c,
					   __u32 out_ifindex)
{
	st->verdict = DP_VERDICT_REDIRECT;
	st->fwd_ifindex = out_ifindex;
	dp_set_mark(skb, DP_MARK_BYPASS);
	dp_count(c, CNT_REDIRECT_NEIGH);
	return bpf_redirect_neigh(out_ifindex, 0, 0, 0);
}

static __always_inline int dp_forward(struct __sk_buff *skb, struct dp_state *st, struct counters_value *c,
				      int bypass)
{
	st->verdict = DP_VERDICT_ALLOW;
	if (st->hook != HOOK_TC_INGRESS)
		return TC_ACT_OK;
	if ((st->route_flags_dst & RT_LOCAL_WEP) != RT_LOCAL_WEP || !st->route_ifindex_dst)
		return TC_ACT_OK;
	st->fwd_ifindex = st->route_ifindex_dst;
	st->verdict = DP_VERDICT_REDIRECT;
	if (bypass)
		dp_set_mark(skb, DP_MARK_BYPASS);
	dp_count(c, CNT_REDIRECT_NEIGH);
	return bpf_redirect_neigh(st->fwd_ifindex, 0, 0, 0);
}

/* Send the packet, encapsulated, to node dst out of out_ifindex; the
 * kernel fills in the outer MACs (neighbour of the route to dst). */
static __always_inline int dp_send_encap(struct __sk_buff *skb, struct dp_state *st, struct counters_value *c,
					 struct tunnel_config *cfg, __u32 dst, __u32 out_ifindex)
{
	if (dp_vxlan_encap(skb, cfg->host_ip, cfg->vni, cfg->port, dst))
		return dp_drop(st, c, CNT_DROP_ENCAP);
	st->flags |= DP_ST_ENCAP;
	st->tun_ip = dst;
	return dp_redirect_out(skb, st, c, out_ifindex);
}

/* Answer a packet too big for the tunnel with ICMP fragmentation needed
 * (tunnel MTU), from this node, back where it came from. */
static __always_inline int dp_send_too_big(struct __sk_buff *skb, struct dp_state *st, struct counters_value *c,
					   struct tunnel_config *cfg)
{
	if (dp_icmp_dest_unreach(skb, ICMP_FRAG_NEEDED, cfg->mtu, cfg->host_ip))
		return dp_drop(st, c, CNT_DROP_SHORT);
	st->flags |= DP_ST_ICMP_REPLY | DP_ST_TOO_BIG;
	st->verdict = DP_VERDICT_REJECT;
	st->reason = CNT_DROP_ENCAP;
	st->fwd_ifindex = st->ifindex;
	dp_count(c, CNT_DROP_ENCAP);
	dp_set_mark(skb, DP_MARK_BYPASS);
	return bpf_redirect(st->ifindex, 0);
}

/* Answer a packet of a SEND_RESET flow with a TCP RST, back where it came
 * from (its conntrack entries are already gone); a RST itself is dropped. */
static __always_inline int dp_send_reset(struct __sk_buff *skb, struct dp_pkt *p, struct dp_state *st,
					 struct counters_value *c)
{
	/* The sender ends the flow itself; its peer (a backend) is gone. */
	if (p->tcp_flags & TCP_FL_RST)
		return dp_drop(st, c, CNT_DROP_BLACKHOLE);
	if (dp_tcp_rst_reply(skb))
		return dp_drop(st, c, CNT_DROP_SHORT);
	st->flags |= DP_ST_SENT_RESET;
	st->verdict = DP_VERDICT_REJECT;
	st->reason = CNT_REDIRECT;
	st->fwd_ifindex = st->ifindex;
	dp_count(c, CNT_REDIRECT);
	dp_set_mark(skb, DP_MARK_BYPASS);
	return bpf_redirect(st->ifindex, 0);
}

static __always_inline int dp_apply_rewrites(struct __sk_buff *skb, struct dp_pkt *p, __u32 new_saddr, __u16 new_sport,
					     __u32 new_daddr, __u16 new_dport)
{
	if (new_daddr && dp_rewrite_ip(skb, p, DP_IP_DST_OFF, p->daddr, new_daddr))
		return -1;
	if (new_dport && dp_rewrite_port(skb, p, DP_DPORT_OFF, p->dport, new_dport))
		return -1;
	if (new_saddr && dp_rewrite_ip(skb, p, DP_IP_SRC_OFF, p->saddr, new_saddr))
		return -1;
	if (new_sport && dp_rewrite_port(skb, p, DP_SPORT_OFF, p->sport, new_sport))
		return -1;
	return 0;
}

/* Which policy slot serves this packet; "ingress"/"egress" are the
 * endpoint's view: a workload's TC ingress hook carries what the pod sends
 * (its egress policy), a host interface's hooks match their direction. */
static __always_inline __s32 dp_policy_slot(struct dp_state *st, struct ifstate_value *ifs)
{
	int to_endpoint = (st->if_flags & IFACE_WEP) ? st->hook == HOOK_TC_EGRESS : st->hook == HOOK_TC_INGRESS;
	st->pol_dir = to_endpoint ? DP_POL_DIR_INGRESS : DP_POL_DIR_EGRESS;
	return to_endpoint ? ifs->ingress_policy_v4 : ifs->egress_policy_v4;
}

/* Hand the packet to policy.  Returns only when there is no policy program
 * (empty slot): the caller then continues as allowed. */
static __always_inline void dp_run_policy(struct __sk_buff *skb, struct dp_state *st, __s32 slot)
{
	if (slot < 0)
		return;
	st->pol_slot = slot;
	st->flags |= DP_ST_POLICY_RAN;
	bpf_tail_call(skb, &cebpf_jump, slot);
	st->flags &= ~DP_ST_POLICY_RAN;
}

/* ---- established flows ------------------------------------------------ */

#define DP_TUN_CONTINUE (-1000)

/* Established packets of flows that entered through a data interface
 * and whose replies must leave the same way, seen on an ingress hook: the
 * three hops of dp_tunnel.h (tun_ip set), and replies of a local backend
 * to an external client (EXT_LOCAL).  Returns a TC verdict, or
 * DP_TUN_CONTINUE for the ordinary path. */
static __always_inline int dp_established_nodeport(struct __sk_buff *skb, struct dp_pkt *p, struct dp_ct_res *ct,
						   struct dp_state *st, struct counters_value *c)
{
	struct ct_value_v4 *v = ct->v;
	struct ct_leg *opener = dp_ct_opener_is_a(v) ? &v->a_to_b : &v->b_to_a;
	__u32 tun_ip = v->tun_ip;

	if (!tun_ip) {
		/* A local backend answers an external client: its source becomes
		 * this node's NodePort address, which the host stack would drop
		 * as martian; send it out where the request came in. */
		if (ct->rc != DP_CT_ESTABLISHED_SNAT || !dp_is_from_wep(st) || !opener->ifindex)
			return DP_TUN_CONTINUE;
		st->flags |= DP_ST_REV_NAT;
		if (dp_apply_rewrites(skb, p, ct->new_saddr, ct->new_sport, ct->new_daddr, ct->new_dport))
			return dp_drop(st, c, CNT_DROP_MALFORMED_IP);
		st->post_nat_ip_src = ct->new_saddr;
		return dp_redirect_out(skb, st, c, opener->ifindex);
	}

	struct tunnel_config *cfg = dp_tunnel_cfg();
	if (!cfg)
		return DP_TUN_CONTINUE;
	int np_fwd = v->flags & CT_FLAG_NP_FWD;

	if (np_fwd && ct->rc == DP_CT_ESTABLISHED_DNAT && (st->if_flags & IFACE_HEP)) {
		/* Ingress node, client -> service: on to the backend's node,
		 * untranslated (that node does the NAT). */
		st->post_nat_ip_dst = ct->new_daddr;
		st->post_nat_dport = ct->new_dport;
		if (dp_tunnel_too_big(skb, cfg))
			return dp_send_too_big(skb, st, c, cfg);
		return dp_send_encap(skb, st, c, cfg, tun_ip, st->ifindex);
	}
	if (np_fwd && ct->reply && (st->flags & DP_ST_FROM_TUNNEL)) {
		/* Ingress node, the reply came back translated: to the client. */
		st->tun_ip = tun_ip;
		return dp_redirect_out(skb, st, c, opener->ifindex);
	}
	if (!np_fwd && ct->rc == DP_CT_ESTABLISHED_SNAT && dp_is_from_wep(st)) {
		/* Backend's node, the backend replies: translate back to the
		 * service, then through the tunnel, or straight to the client
		 * (DSR), out of the interface the request came in on. */
		int dsr = dp_tunnel_dsr(cfg) && !(v->flags2 & (CT_FLAG_NP_NO_DSR >> 8));
		if (!dsr && dp_tunnel_too_big(skb, cfg))
			return dp_send_too_big(skb, st, c, cfg);
		st->flags |= DP_ST_REV_NAT;
		if (dp_apply_rewrites(skb, p, ct->new_saddr, ct->new_sport, ct->new_daddr, ct->new_dport))
			return dp_drop(st, c, CNT_DROP_MALFORMED_IP);
		st->post_nat_ip_src = ct->new_saddr;
		if (dsr) {
			st->flags |= DP_ST_DSR;
			st->tun_ip = tun_ip;
			return dp_redirect_out(skb, st, c, opener->ifindex);
		}
		return dp_send_encap(skb, st, c, cfg, tun_ip, opener->ifindex);
	}
	return DP_TUN_CONTINUE;
}

/* hook is st->hook, passed apart so that where the caller knows it as a
 * constant (dp_main) the compiler drops the other hook's paths: less for
 * the verifier to walk. */
static __always_inline int dp_established(struct __sk_buff *skb, struct dp_pkt *p, struct dp_ct_res *ct,
					  struct dp_state *st, struct counters_value *c, struct ifstate_value *ifs,
					  int approve, __u8 hook)
{
	struct ct_value_v4 *v = ct->v;
	st->ct_rc = ct->rc;
	if (!approve)
		dp_count(c, CNT_CT_HIT);

	if (dp_is_from_wep(st)) {
		/* The leg remembers where its packets come from: only a change
		 * of interface costs a route lookup. */
		struct ct_leg *leg = ct->src_is_a ? &v->a_to_b : &v->b_to_a;
		if (leg->ifindex != st->ifindex && !dp_rpf_ok(dp_route(p->saddr), st->ifindex))
			return dp_drop(st, c, CNT_DROP_UNAUTH_SOURCE);
	}

	int opener_is_a = dp_ct_opener_is_a(v);
	struct ct_leg *resp = opener_is_a ? &v->b_to_a : &v->a_to_b;
	if (approve) {
		resp->flags |= CT_LEG_APPROVED;
	} else if (st->hook == HOOK_TC_EGRESS && !ct->reply && !(resp->flags & CT_LEG_APPROVED)) {
		/* First packet of a flow reaching this endpoint: its own policy
		 * has not approved the flow yet. */
		if (v->type == CT_TYPE_NAT_REV) {
			st->ip_dst = v->orig_ip;
			st->dport = v->orig_port;
		}
		st->flags |= DP_ST_APPROVE_LEG;
		if (ifs)
			dp_run_policy(skb, st, dp_policy_slot(st, ifs));
		resp->flags |= CT_LEG_APPROVED;
	}

	dp_ct_leg_update(v, ct->src_is_a, p, st->hook == HOOK_TC_INGRESS ? st->ifindex : 0,
			 dp_is_from_wep(st) ? CT_LEG_WORKLOAD : 0, st->ts);

	if ((v->tun_ip || (v->flags & CT_FLAG_EXT_LOCAL)) && hook == HOOK_TC_INGRESS) {
		int rc = dp_established_nodeport(skb, p, ct, st, c);
		if (rc != DP_TUN_CONTINUE)
			return rc;
	}

	if (ct->new_daddr || ct->new_dport)
		st->flags |= DP_ST_DNAT;
	if (ct->new_saddr && ct->rc == DP_CT_ESTABLISHED_SNAT)
		st->flags |= DP_ST_REV_NAT;
	if (ct->new_daddr && ct->rc == DP_CT_ESTABLISHED_DNAT && ct->new_saddr)
		st->flags |= DP_ST_HAIRPIN;
	if (dp_apply_rewrites(skb, p, ct->new_saddr, ct->new_sport, ct->new_daddr, ct->new_dport))
		return dp_drop(st, c, CNT_DROP_MALFORMED_IP);
	__u32 daddr = ct->new_daddr ? ct->new_daddr : p->daddr;
	st->post_nat_ip_dst = daddr;
	st->post_nat_dport = ct->new_dport ? ct->new_dport : p->dport;
	st->post_nat_ip_src = ct->new_saddr ? ct->new_saddr : p->saddr;
	int both = (v->a_to_b.flags & CT_LEG_APPROVED) && (v->b_to_a.flags & CT_LEG_APPROVED);
	if (st->hook != HOOK_TC_INGRESS)
		return dp_forward(skb, st, c, both);
	/* The destination's own leg remembers the workload interface its
	 * packets come from: no route lookup for established flows. */
	struct ct_leg *dst_leg = ct->src_is_a ? &v->b_to_a : &v->a_to_b;
	if ((dst_leg->flags & CT_LEG_WORKLOAD) && dst_leg->ifindex) {
		st->route_flags_dst = RT_LOCAL_WEP;
		st->route_ifindex_dst = dst_leg->ifindex;
	} else {
		dp_note_route_dst(st, dp_route(daddr));
	}
	return dp_forward(skb, st, c, both);
}

/* ---- new flows, after policy allowed ---------------------------------- */

static __always_inline int dp_ct_create(struct dp_pkt *p, struct dp_state *st)
{
	struct ct_value_v4 v = {};
	struct ct_leg leg = {
		.packets = 1,
		.bytes = p->ip_len,
		.flags = CT_LEG_APPROVED | CT_LEG_OPENER,
		.ifindex = st->hook == HOOK_TC_INGRESS ? st->ifindex : 0,
	};
	if (p->proto == IPPROTO_TCP) {
		if (p->tcp_flags & TCP_FL_SYN)
			leg.flags |= CT_LEG_SYN_SEEN;
		if (p->tcp_flags & TCP_FL_ACK)
			leg.flags |= CT_LEG_ACK_SEEN;
	}
	if (dp_is_from_wep(st))
		leg.flags |= CT_LEG_WORKLOAD;
	/* A "to" program's policy speaks for the responder; host -> workload
	 * and failsafe flows need no further approval either. */
	int resp_ok = st->hook == HOOK_TC_EGRESS || (st->flags & DP_ST_SKIP_POLICY);
	/* Forwarded to another node: what comes back is that node's answer. */
	if (st->flags & DP_ST_NP_FWD)
		resp_ok = 1;
	v.last_seen = st->ts;

	__u32 src = st->post_nat_ip_src, dst = st->post_nat_ip_dst;
	struct ct_key_v4 k;
	int opener_is_a = dp_ct_key(&k, p->proto, src, dst, p->sport, st->post_nat_dport);
	dp_ct_set_ba(&v, opener_is_a);
	/* A local workload responder: record its interface now, so that
	 * established packets to it skip the route lookup and its own packets
	 * pass the RPF check without one. */
	struct ct_leg resp = {};
	if (resp_ok)
		resp.flags = CT_LEG_APPROVED;
	if ((st->route_flags_dst & RT_LOCAL_WEP) == RT_LOCAL_WEP && st->route_ifindex_dst) {
		resp.flags |= CT_LEG_WORKLOAD;
		resp.ifindex = st->route_ifindex_dst;
	}
	if (opener_is_a) {
		v.a_to_b = leg;
		v.b_to_a = resp;
	} else {
		v.b_to_a = leg;
		v.a_to_b = resp;
	}

	if (!(st->flags & DP_ST_DNAT)) {
		v.type = CT_TYPE_NORMAL;
		return bpf_map_update_elem(&cebpf_ct, &k, &v, BPF_ANY);
	}

	v.type = CT_TYPE_NAT_REV;
	v.orig_ip = p->daddr;
	v.orig_port = p->dport;
	v.orig_sip = p->saddr;
	v.orig_sport = p->sport;
	if (st->flags & DP_ST_HAIRPIN)
		v.flags2 |= CT_FLAG_SVC_SELF >> 8;
	/* tun_ip: the node we forward to (NP_FWD), or the node that forwarded
	 * to us (from tunnel), whose client the backend answers through it. */
	v.tun_ip = st->tun_ip;
	if (st->flags & DP_ST_NP_FWD) {
		struct tunnel_config *cfg = dp_tunnel_cfg();
		v.flags |= CT_FLAG_NP_FWD;
		if (cfg && dp_tunnel_dsr(cfg))
			v.flags |= CT_FLAG_DSR_FWD;
	}
	/* In through a data interface (not the tunnel) to a local backend:
	 * its replies go back out directly (Calico's EXT_LOCAL). */
	if (st->hook == HOOK_TC_INGRESS && (st->if_flags & IFACE_HEP) &&
	    !(st->flags & (DP_ST_NP_FWD | DP_ST_FROM_TUNNEL)) && (st->route_flags_dst & RT_LOCAL_WEP) == RT_LOCAL_WEP)
		v.flags |= CT_FLAG_EXT_LOCAL;
	if (st->flags & DP_ST_FROM_TUNNEL) {
		/* BPFDSROptoutCIDRs: such clients keep the tunnel return. */
		struct route_value_v4 *rs = dp_route(p->saddr);
		if (rs && (rs->flags & RT_NO_DSR))
			v.flags2 |= CT_FLAG_NP_NO_DSR >> 8;
	}
	if (bpf_map_update_elem(&cebpf_ct, &k, &v, BPF_ANY))
		return -1;

	struct ct_value_v4 f = {};
	struct ct_key_v4 fk;
	f.type = CT_TYPE_NAT_FWD;
	f.last_seen = st->ts;
	dp_ct_set_ba(&f, dp_ct_key(&fk, p->proto, p->saddr, p->daddr, p->sport, p->dport));
	f.nat_rev_key = k;
	f.nat_sport = p->sport;
	if (bpf_map_update_elem(&cebpf_ct, &fk, &f, BPF_ANY)) {
		bpf_map_delete_elem(&cebpf_ct, &k);
		return -1;
	}
	return 0;
}

static __always_inline int dp_new_flow_commit(struct __sk_buff *skb, struct dp_pkt *p, struct dp_state *st,
					      struct counters_value *c)
{
	struct tunnel_config *cfg = 0;
	if (st->flags & DP_ST_NP_FWD) {
		cfg = dp_tunnel_cfg();
		if (!cfg)
			return dp_drop(st, c, CNT_DROP_ENCAP);
		/* Before conntrack: a client that retries smaller opens afresh. */
		if (dp_tunnel_too_big(skb, cfg))
			return dp_send_too_big(skb, st, c, cfg);
	}
	if (!(st->flags & DP_ST_NO_CT)) {
		if (dp_ct_create(p, st))
			return dp_drop(st, c, CNT_DROP_CT_CREATE);
		st->flags |= DP_ST_NEW_FLOW;
		dp_count(c, CNT_CT_NEW);
	}
	if (cfg) {
		/* The backend's node does the NAT: it must know the service
		 * address to answer from (and, in DSR mode, answers itself). */
		dp_count(c, CNT_NAT_NEW);
		return dp_send_encap(skb, st, c, cfg, st->tun_ip, st->ifindex);
	}
	if (st->flags & DP_ST_DNAT) {
		dp_count(c, CNT_NAT_NEW);
		__u32 new_saddr = (st->flags & DP_ST_HAIRPIN) ? st->post_nat_ip_src : 0;
		if (dp_apply_rewrites(skb, p, new_saddr, 0, st->post_nat_ip_dst, st->post_nat_dport))
			return dp_drop(st, c, CNT_DROP_MALFORMED_IP);
	}
	return dp_forward(skb, st, c, 0);
}

/* ---- new flows, before policy ----------------------------------------- */

static __always_inline int dp_new_flow(struct __sk_buff *skb, struct dp_pkt *p, struct dp_state *st,
				       struct counters_value *c, struct ifstate_value *ifs)
{
	int ingress = st->hook == HOOK_TC_INGRESS;
	struct route_value_v4 *rs = dp_route(p->saddr);
	struct route_value_v4 *rd = 0;
	int rd_known = 0;
	__u32 rs_flags = rs ? rs->flags : 0;
	st->route_flags_src = rs_flags;

	if (dp_is_from_wep(st) && !dp_rpf_ok(rs, st->ifindex))
		return dp_drop(st, c, CNT_DROP_UNAUTH_SOURCE);
	if ((rs_flags & RT_LOCAL_HOST) == RT_LOCAL_HOST)
		st->flags |= DP_ST_SRC_IS_HOST;
	int external = ingress && (st->if_flags & IFACE_HEP) && !(rs_flags & (RT_HOST | RT_WORKLOAD));
	if (external)
		st->flags |= DP_ST_EXTERNAL;

	/* Conntrack only flows we see open: a TCP packet without SYN and no
	 * entry (e.g. opened before we were attached) is passed on untracked
	 * and untranslated, and so are ICMP errors of unknown flows. */
	int mid_flow = p->proto == IPPROTO_TCP && !(p->tcp_flags & TCP_FL_SYN);
	if (mid_flow) {
		st->ct_rc = DP_CT_INVALID;
		st->flags |= DP_ST_NO_CT;
	}
	if (p->icmp_err)
		st->flags |= DP_ST_NO_CT;

	if (ingress && !mid_flow && (p->proto == IPPROTO_TCP || p->proto == IPPROTO_UDP)) {
		struct dp_nat_res nat = {};
		struct route_value_v4 *rd_pre = 0;
		int from_tun = st->flags & DP_ST_FROM_TUNNEL;
		int nrc = dp_nat_lookup(p, external, from_tun, st->ts, &nat, &rd_pre);
		if (nat.rd_looked_up) {
			rd = rd_pre;
			rd_known = 1;
		}
		st->nat_svc_id = nat.svc_id;
		st->nat_affinity_timeo = nat.affinity_timeo;
		if (nrc == DP_NAT_DROP)
			return dp_drop(st, c, CNT_DROP_SRC_RANGE);
		if (nrc == DP_NAT_NO_BACKEND) {
			dp_count(c, CNT_NAT_NO_BACKEND);
			if (dp_icmp_port_unreach(skb))
				return dp_drop(st, c, CNT_DROP_SHORT);
			st->flags |= DP_ST_ICMP_REPLY;
			st->verdict = DP_VERDICT_REJECT;
			st->reason = CNT_NAT_NO_BACKEND;
			st->fwd_ifindex = st->ifindex;
			dp_set_mark(skb, DP_MARK_BYPASS);
			return bpf_redirect(st->ifindex, 0);
		}
		if (nrc == DP_NAT_FOUND) {
			st->flags |= DP_ST_DNAT;
			if (nat.affinity_hit)
				st->flags |= DP_ST_AFFINITY_HIT;
			st->nat_ordinal = nat.ordinal;
			st->post_nat_ip_dst = nat.be_addr;
			st->post_nat_dport = nat.be_port;
			if (nat.be_addr == p->saddr) {
				/* Hairpin: the backend is the client.  Masquerade as
				 * the service IP so the reply comes back through us. */
				st->flags |= DP_ST_HAIRPIN;
				st->post_nat_ip_src = p->daddr;
			}
			rd = dp_route(nat.be_addr);
			rd_known = 1;
			/* A backend on another node, reached from outside it: forward
			 * the flow there (dp_tunnel.h).  Never a second hop. */
			if ((st->if_flags & IFACE_HEP) && !from_tun && rd && !(rd->flags & RT_LOCAL) && rd->next_hop &&
			    dp_tunnel_cfg()) {
				st->flags |= DP_ST_NP_FWD;
				st->tun_ip = rd->next_hop;
			}
		}
	}
	if (!rd_known)
		rd = dp_route(st->post_nat_ip_dst);
	dp_note_route_dst(st, rd);
	if ((st->route_flags_dst & RT_LOCAL_HOST) == RT_LOCAL_HOST)
		st->flags |= DP_ST_DEST_IS_HOST;

	if (st->if_flags & IFACE_HEP) {
		struct failsafe_key_v4 fk = {
			.prefixlen = FSAFE_PREFIX_BASE + 32,
			.port = st->post_nat_dport,
			.ip_proto = p->proto,
		};
		int check = 0;
		if (ingress && (st->flags & DP_ST_DEST_IS_HOST)) {
			fk.addr = p->saddr;
			check = 1;
		} else if (!ingress && (st->flags & DP_ST_SRC_IS_HOST)) {
			fk.flags = FSAFE_FLAG_OUTBOUND;
			fk.addr = p->daddr;
			check = 1;
		}
		if (check && (p->proto == IPPROTO_TCP || p->proto == IPPROTO_UDP) &&
		    bpf_map_lookup_elem(&cebpf_fsafes, &fk)) {
			st->flags |= DP_ST_FAILSAFE | DP_ST_SKIP_POLICY;
			dp_count(c, CNT_ACCEPTED_FAILSAFE);
		}
	}
	/* Host -> local workload is always allowed (as Calico). */
	if (!ingress && (st->if_flags & IFACE_WEP) && (st->flags & DP_ST_SRC_IS_HOST))
		st->flags |= DP_ST_SKIP_POLICY;

	if (!(st->flags & DP_ST_SKIP_POLICY))
		dp_run_policy(skb, st, dp_policy_slot(st, ifs));
	return dp_new_flow_commit(skb, p, st, c);
}

/* ---- entry points ----------------------------------------------------- */

static __always_inline int dp_main(struct __sk_buff *skb, __u8 hook)
{
	__u32 ifindex = skb->ifindex;
	struct ifstate_value *ifs = bpf_map_lookup_elem(&cebpf_ifstate, &ifindex);
	if (!ifs || (ifs->flags & IFACE_NOT_MANAGED))
		return TC_ACT_OK;

	struct dp_state *st = dp_state_get();
	if (!st)
		return TC_ACT_SHOT;
	__builtin_memset(st, 0, sizeof(*st));
	/* Coarse time (jiffy resolution) is plenty for conntrack and affinity
	 * timeouts and costs half of bpf_ktime_get_ns() (measured 25 vs 42 ns
	 * per call on our VMs, see benchmarks/bench_datapath.py). */
	st->ts = bpf_ktime_get_coarse_ns();
	st->trace_token = skb->cb[0];
	st->ifindex = ifindex;
	st->if_flags = ifs->flags;
	st->hook = hook;
	st->pol_slot = -1;

	struct counters_value *c = dp_counters(ifindex, hook);
	dp_count(c, CNT_TOTAL);

	if (hook == HOOK_TC_EGRESS && skb->mark == DP_MARK_BYPASS) {
		/* Approved and forwarded by our ingress program already. */
		dp_set_mark(skb, 0);
		st->verdict = DP_VERDICT_ALLOW;
		st->reason = CNT_ACCEPTED_BYPASS;
		dp_count(c, CNT_ACCEPTED_BYPASS);
		return TC_ACT_OK;
	}

	struct dp_pkt p = {};
	__u32 reason = 0;
	int prc = dp_parse(skb, &p, &reason);
	if (prc == DP_PARSE_DROP)
		return dp_drop(st, c, reason);
	if (prc == DP_PARSE_NOT_IPV4) {
		/* IPv4-only dataplane: ARP and other protocols are not ours. */
		st->verdict = DP_VERDICT_ALLOW;
		return TC_ACT_OK;
	}
	if (hook == HOOK_TC_INGRESS && (ifs->flags & IFACE_HEP) && p.proto == IPPROTO_UDP) {
		struct tunnel_config *cfg = dp_tunnel_cfg();
		if (cfg) {
			int drc = dp_vxlan_decap(skb, &p, cfg, &st->tun_ip);
			if (drc == DP_DECAP_DROP)
				return dp_drop(st, c, CNT_DROP_DECAP);
			if (drc == DP_DECAP_DONE) {
				/* A NodePort flow forwarded by node tun_ip: from here on
				 * the client's own packet. */
				st->flags |= DP_ST_FROM_TUNNEL;
				if (dp_parse(skb, &p, &reason) != DP_PARSE_OK)
					return dp_drop(st, c, reason ? reason : CNT_DROP_DECAP);
			}
		}
	}
	st->ip_src = p.saddr;
	st->ip_dst = p.daddr;
	st->post_nat_ip_src = p.saddr;
	st->post_nat_ip_dst = p.daddr;
	st->sport = p.sport;
	st->dport = p.dport;
	st->post_nat_dport = p.dport;
	st->ip_proto = p.proto;
	st->icmp_type = p.icmp_type;
	st->icmp_code = p.icmp_code;
	st->ip_len = p.ip_len;

	if (p.icmp_err) {
		__u32 fl = 0;
		int rel = dp_icmp_related(skb, &p, &fl);
		if (rel < 0)
			return dp_drop(st, c, CNT_DROP_MALFORMED_IP);
		if (rel > 0) {
			st->flags |= fl;
			st->ct_rc = DP_CT_RELATED;
			st->post_nat_ip_src = p.saddr;
			st->post_nat_ip_dst = p.daddr;
			dp_note_route_dst(st, dp_route(p.daddr));
			return dp_forward(skb, st, c, 0);
		}
	}

	struct dp_ct_res ct;
	dp_ct_lookup(&p, &ct);
	if (ct.v && p.proto == IPPROTO_TCP && (p.tcp_flags & (TCP_FL_SYN | TCP_FL_ACK)) == TCP_FL_SYN &&
	    dp_ct_closed(ct.v)) {
		/* A new connection reusing the tuple of a closed one. */
		dp_ct_delete_pair(&ct);
		ct.v = 0;
		st->flags |= DP_ST_CT_RECYCLED;
	}
	if (ct.v && hook == HOOK_TC_INGRESS && p.proto == IPPROTO_TCP &&
	    (ct.v->flags3 & (CT_FLAG_SEND_RESET >> 16))) {
		/* The flow's backend left its service (stale NAT): a new SYN
		 * opens afresh to a live backend; anything else ends the flow
		 * with a RST to its sender. */
		st->ct_rc = DP_CT_ESTABLISHED;
		if (ct.reply)
			/* From the backend's side: reset it but keep the entries,
			 * so the client's next packet gets its RST too; without
			 * them that packet would pass as an untranslated mid-flow
			 * packet and the client would hang. */
			return dp_send_reset(skb, &p, st, c);
		dp_ct_delete_pair(&ct);
		ct.v = 0;
		if ((p.tcp_flags & (TCP_FL_SYN | TCP_FL_ACK)) == TCP_FL_SYN)
			st->flags |= DP_ST_CT_RECYCLED;
		else
			return dp_send_reset(skb, &p, st, c);
	}
	if (ct.v)
		return dp_established(skb, &p, &ct, st, c, ifs, 0, hook);
	st->ct_rc = DP_CT_NEW;
	return dp_new_flow(skb, &p, st, c, ifs);
}

SEC("tc")
int cebpf_from_ifc(struct __sk_buff *skb)
{
	return dp_main(skb, HOOK_TC_INGRESS);
}

SEC("tc")
int cebpf_to_ifc(struct __sk_buff *skb)
{
	return dp_main(skb, HOOK_TC_EGRESS);
}

/* Policy said allow (cebpf_progs[DP_PROG_ALLOWED]): finish what the main
 * program decided, from the state. */
SEC("tc")
int cebpf_tc_allowed(struct __sk_buff *skb)
{
	struct dp_state *st = dp_state_get();
	if (!st)
		return TC_ACT_SHOT;
	struct counters_value *c = dp_counters(st->ifindex, st->hook);
	dp_count(c, CNT_ACCEPTED_POLICY);

	struct dp_pkt p = {};
	__u32 reason = 0;
	if (dp_parse(skb, &p, &reason) != DP_PARSE_OK)
		return dp_drop(st, c, reason ? reason : CNT_DROP_MALFORMED_IP);
	if (st->flags & DP_ST_APPROVE_LEG) {
		struct dp_ct_res ct;
		dp_ct_lookup(&p, &ct);
		if (!ct.v)
			return dp_drop(st, c, CNT_DROP_CT_CREATE);
		/* Only a "to" program asks for a leg approval (dp_established). */
		return dp_established(skb, &p, &ct, st, c, 0, 1, HOOK_TC_EGRESS);
	}
	return dp_new_flow_commit(skb, &p, st, c);
}

/* Policy said deny (cebpf_progs[DP_PROG_DENIED]). */
SEC("tc")
int cebpf_tc_denied(struct __sk_buff *skb)
{
	struct dp_state *st = dp_state_get();
	if (!st)
		return TC_ACT_SHOT;
	return dp_drop(st, dp_counters(st->ifindex, st->hook), CNT_DROP_POLICY);
}

/* The two trivial policies, written to the convention of dp_state.h:
 * defaults for endpoints and fixtures for tests. */
SEC("tc")
int cebpf_policy_allow(struct __sk_buff *skb)
{
	struct dp_state *st = dp_state_get();
	if (!st)
		return TC_ACT_SHOT;
	st->pol_rc = DP_POL_ALLOW;
	bpf_tail_call(skb, &cebpf_progs, DP_PROG_ALLOWED);
	return TC_ACT_SHOT;
}

SEC("tc")
int cebpf_policy_deny(struct __sk_buff *skb)
{
	struct dp_state *st = dp_state_get();
	if (!st)
		return TC_ACT_SHOT;
	st->pol_rc = DP_POL_DENY;
	bpf_tail_call(skb, &cebpf_progs, DP_PROG_DENIED);
	return TC_ACT_SHOT;
}

char LICENSE[] SEC("license") = "GPL";
