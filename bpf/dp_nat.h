/* Service lookup for new flows: frontend, source ranges, local-only
 * selection, session affinity, backend choice. */
#ifndef CALICO_EBPF_DP_NAT_H
#define CALICO_EBPF_DP_NAT_H

#include "maps.h"
#include "dp_packet.h"
#include "dp_route.h"

enum dp_nat_rc {
	DP_NAT_NONE = 0,       /* not a service */
	DP_NAT_FOUND = 1,      /* backend chosen */
	DP_NAT_NO_BACKEND = 2, /* answer ICMP port unreachable */
	DP_NAT_DROP = 3,       /* source outside loadBalancerSourceRanges */
	DP_NAT_EXCLUDED = 4,   /* NAT_EXCLUDE: leave the packet alone */
};

struct dp_nat_res {
	__u32 svc_id;
	__u32 ordinal;
	__u32 be_addr;
	__u16 be_port;
	__u8 affinity_hit;
	__u8 rd_looked_up; /* *rd_pre holds the destination's route lookup */
	__u32 affinity_timeo;
};

/* external: the source is neither a known host nor a known workload.
 * from_tun: the packet was forwarded to us by the node the client reached
 * (dp_tunnel.h): only local backends may serve it (another hop would loop),
 * and session affinity was that node's decision.
 * *rd_pre: the route of the (pre-NAT) destination, looked up only when the
 * exact frontend misses (a NodePort on a host IP needs it), else NULL. */
static __always_inline int dp_nat_lookup(struct dp_pkt *p, int external, int from_tun, __u64 now,
					 struct dp_nat_res *res, struct route_value_v4 **rd_pre)
{
	struct nat_feh_key_v4 hk = {
		.addr = p->daddr,
		.port = p->dport,
		.protocol = p->proto,
	};
	struct nat_fe_value *fe = bpf_map_lookup_elem(&cebpf_nat_feh, &hk);
	if (!fe) {
		struct route_value_v4 *rd = dp_route(p->daddr);
		*rd_pre = rd;
		res->rd_looked_up = 1;
		/* The wildcard (NodePort on any host IP) serves only traffic that
		 * starts on this node or came through the NodePort tunnel: an
		 * external client reaching a host IP without its own frontend
		 * (outside nodePortAddresses) is not a service packet. */
		if (rd && (rd->flags & RT_HOST) && (!external || from_tun)) {
			hk.addr = NAT_FE_WILDCARD_ADDR;
			fe = bpf_map_lookup_elem(&cebpf_nat_feh, &hk);
		}
	}
	if (!fe)
		return DP_NAT_NONE;

	if (fe->flags & NAT_FLG_SRC_RANGES) {
		/* Only services with loadBalancerSourceRanges pay for the LPM. */
		struct nat_fe_key_v4 lk = {
			.prefixlen = NAT_FE_PREFIX_V4 + 32,
			.addr = hk.addr,
			.port = hk.port,
			.protocol = hk.protocol,
			.saddr = p->saddr,
		};
		fe = bpf_map_lookup_elem(&cebpf_nat_fe, &lk);
		if (!fe)
			return DP_NAT_DROP;
	}
	if (fe->count == NAT_FE_DROP_COUNT)
		return DP_NAT_DROP;
	if (fe->flags & NAT_FLG_NAT_EXCLUDE)
		return DP_NAT_EXCLUDED;

	__u32 count = fe->count;
	if (((fe->flags & NAT_FLG_INTERNAL_LOCAL) && !external) ||
	    ((fe->flags & NAT_FLG_EXTERNAL_LOCAL) && external) || from_tun)
		count = fe->local; /* local backends sit at ordinals 0..local-1 */
	res->svc_id = fe->id;
	res->affinity_timeo = fe->affinity_timeo;
	res->affinity_hit = 0;
	if (count == 0)
		return DP_NAT_NO_BACKEND;

	struct nat_aff_key_v4 ak = {};
	__u32 affinity_timeo = from_tun ? 0 : fe->affinity_timeo;
	if (affinity_timeo) {
		ak.nat_key.addr = hk.addr;
		ak.nat_key.port = hk.port;
		ak.nat_key.protocol = hk.protocol;
		ak.client_ip = p->saddr;
		struct nat_aff_value_v4 *av = bpf_map_lookup_elem(&cebpf_nat_aff, &ak);
		/* Signed: a writer using the fine clock may be a jiffy ahead of ours. */
		if (av && (__s64)(now - av->ts) <= (__s64)affinity_timeo * 1000000000LL) {
			res->be_addr = av->backend.addr;
			res->be_port = av->backend.port;
			res->ordinal = 0xffffffff;
			res->affinity_hit = 1;
			return DP_NAT_FOUND;
		}
	}

	struct nat_be_key bk = {
		.id = fe->id,
		.ordinal = bpf_get_prandom_u32() % count,
	};
	struct nat_be_value_v4 *be = bpf_map_lookup_elem(&cebpf_nat_be, &bk);
	if (!be)
		return DP_NAT_NO_BACKEND;
	res->ordinal = bk.ordinal;
	res->be_addr = be->addr;
	res->be_port = be->port;

	if (affinity_timeo) {
		struct nat_aff_value_v4 av = {
			.backend = *be,
			.ts = now,
		};
		bpf_map_update_elem(&cebpf_nat_aff, &ak, &av, BPF_ANY);
	}
	return DP_NAT_FOUND;
}

#endif
