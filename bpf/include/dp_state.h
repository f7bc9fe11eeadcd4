/* Per-packet state of the datapath and the policy calling convention.
 *
 * One per-CPU entry (map cebpf_state, key 0) is filled by the datapath for
 * every packet.  It serves three readers:
 *
 *  1. POLICY PROGRAMS.  When a packet needs a policy verdict (a new flow, or
 *     the first packet of a flow reaching a workload whose ingress leg is not
 *     yet approved) the datapath fills the state and tail-calls
 *     cebpf_jump[pol_slot], pol_slot taken from the interface's ifstate entry
 *     (ingress_policy_v4 for packets going TO the endpoint, egress_policy_v4
 *     for packets coming FROM it; "ingress"/"egress" are the endpoint's
 *     point of view, as in Calico).  A policy program:
 *       - reads the packet fields from the state, never from the packet:
 *         ip_src, ip_dst/dport (pre-DNAT = what the client sent),
 *         post_nat_ip_dst/post_nat_dport (the chosen backend; equal to the
 *         pre-DNAT values when no service matched), ip_proto, sport,
 *         icmp_type/icmp_code, flags (DP_ST_SRC_IS_HOST, DP_ST_DEST_IS_HOST);
 *       - writes pol_rc = DP_POL_ALLOW or DP_POL_DENY, and may write pol_rule
 *         (which rule decided: an id its loader can map back, e.g. for trace);
 *       - tail-calls cebpf_progs[DP_PROG_ALLOWED] or cebpf_progs[DP_PROG_DENIED]
 *         and returns TC_ACT_SHOT if that tail call fails.
 *     The datapath loads both continuation programs (cebpf_tc_allowed,
 *     cebpf_tc_denied) into cebpf_progs.  An empty policy slot (-1 or no
 *     program in cebpf_jump) means "no policy": the tail call falls through
 *     and the datapath continues as allowed, inline.
 *     cebpf_policy_allow / cebpf_policy_deny in datapath.bpf.c are the two
 *     trivial policies written to this convention.
 *
 *  2. TRACE.  The entry stays in place after the program returns, so a
 *     BPF_PROG_TEST_RUN caller reads what the datapath did: verdict, reason
 *     (a counter index), ct_rc, the NAT choice, the route flags, where the
 *     packet was redirected.  A caller tags its packet with a token in
 *     __sk_buff.cb[0] and finds the CPU's entry carrying it (trace_token).
 *
 *  3. THE CONTINUATION (cebpf_tc_allowed): it re-parses the packet and takes
 *     every decision made before policy (NAT backend, CT work) from here.
 *
 * Addresses are network order, ports host order (as in the CT/NAT maps).
 * Offsets are fixed (asserted below) because generated policy bytecode
 * loads fields by offset.
 */
#ifndef CALICO_EBPF_DP_STATE_H
#define CALICO_EBPF_DP_STATE_H

#include <linux/types.h>

/* Slots of cebpf_progs, the return path of policy programs. */
enum dp_prog_slot {
	DP_PROG_ALLOWED = 0,
	DP_PROG_DENIED = 1,
	DP_PROG_MAX = 2,
};

enum dp_pol_rc {
	DP_POL_NONE = 0, /* policy did not run */
	DP_POL_ALLOW = 1,
	DP_POL_DENY = 2,
};

enum dp_pol_dir {
	DP_POL_DIR_EGRESS = 0,  /* packet leaves the endpoint (from-wep, to-hep) */
	DP_POL_DIR_INGRESS = 1, /* packet enters the endpoint (to-wep, from-hep) */
};

enum dp_verdict {
	DP_VERDICT_NONE = 0,
	DP_VERDICT_ALLOW = 1,    /* TC_ACT_OK: continue through the host stack */
	DP_VERDICT_DROP = 2,     /* TC_ACT_SHOT */
	DP_VERDICT_REDIRECT = 3, /* sent to fwd_ifindex (to a local workload) */
	DP_VERDICT_REJECT = 4,   /* answered with ICMP port unreachable (or a TCP RST) */
};

/* Conntrack outcome of the packet (ct_rc). */
enum dp_ct_rc {
	DP_CT_NONE = 0,            /* not looked up (non-IP, dropped early) */
	DP_CT_NEW = 1,             /* no entry: a new flow */
	DP_CT_ESTABLISHED = 2,     /* NORMAL entry, or a NAT entry needing no rewrite */
	DP_CT_ESTABLISHED_DNAT = 3, /* NAT_FWD hit: destination translated */
	DP_CT_ESTABLISHED_SNAT = 4, /* NAT_REV hit on a reply: source un-translated */
	DP_CT_RELATED = 5,         /* ICMP error matched to a flow by its inner header */
	DP_CT_INVALID = 6,         /* e.g. mid-flow TCP without an entry */
};

enum dp_state_flags {
	DP_ST_NEW_FLOW = 0x1,      /* CT entries were created for this packet */
	DP_ST_DNAT = 0x2,          /* destination translated (service) */
	DP_ST_REV_NAT = 0x4,       /* source translated back to the service */
	DP_ST_HAIRPIN = 0x8,       /* pod reached itself via a service: masqueraded */
	DP_ST_FAILSAFE = 0x10,     /* failsafe port: policy skipped */
	DP_ST_SKIP_POLICY = 0x20,  /* policy not run (established, host->wep, ...) */
	DP_ST_APPROVE_LEG = 0x40,  /* to-wep: approve the responder leg of an entry */
	DP_ST_ICMP_REPLY = 0x80,   /* packet rewritten into ICMP port unreachable */
	DP_ST_DEST_IS_HOST = 0x100,
	DP_ST_SRC_IS_HOST = 0x200,
	DP_ST_AFFINITY_HIT = 0x400, /* backend taken from the affinity map */
	DP_ST_EXTERNAL = 0x800,     /* source is neither a known host nor a workload */
	DP_ST_ICMP_INNER_NAT = 0x1000, /* ICMP error: inner header reverse-translated */
	DP_ST_POLICY_RAN = 0x2000,
	DP_ST_CT_RECYCLED = 0x4000, /* SYN on a closed flow replaced its entries */
	/* NodePort forwarding over VXLAN (dp_tunnel.h), tun_ip says which node: */
	DP_ST_FROM_TUNNEL = 0x8000,  /* arrived VXLAN-encapsulated from node tun_ip, decapsulated */
	DP_ST_NP_FWD = 0x10000,      /* new flow: this node forwards it to the backend's node tun_ip */
	DP_ST_ENCAP = 0x20000,       /* sent on VXLAN-encapsulated to node tun_ip */
	DP_ST_DSR = 0x40000,         /* reply sent straight to the client (bpfExternalServiceMode DSR) */
	DP_ST_TOO_BIG = 0x80000,     /* answered with ICMP fragmentation needed (tunnel MTU) */
	DP_ST_SENT_RESET = 0x100000, /* conntrack said SEND_RESET: answered with a TCP RST, entries deleted */
};

struct dp_state {
	__u64 ts;              /* 0: bpf_ktime_get_coarse_ns() at entry */
	__u32 ip_src;          /* 8 */
	__u32 ip_dst;          /* 12: pre-DNAT destination */
	__u32 post_nat_ip_dst; /* 16 */
	__u32 post_nat_ip_src; /* 20: != ip_src only for hairpin masquerade */
	__u16 sport;           /* 24: ICMP echo: identifier */
	__u16 dport;           /* 26: pre-DNAT port */
	__u16 post_nat_dport;  /* 28 */
	__u8 ip_proto;         /* 30 */
	__u8 icmp_type;        /* 31 */
	__u8 icmp_code;        /* 32 */
	__u8 hook;             /* 33: enum counter_hook */
	__u8 pol_dir;          /* 34: enum dp_pol_dir */
	__u8 verdict;          /* 35: enum dp_verdict */
	__s32 pol_slot;        /* 36: jump slot tried, -1 = none */
	__s32 pol_rc;          /* 40: enum dp_pol_rc, written by policy */
	__u32 ifindex;         /* 44: interface the program runs on */
	__u32 if_flags;        /* 48: ifstate flags of that interface */
	__u32 flags;           /* 52: enum dp_state_flags */
	__u32 ct_rc;           /* 56: enum dp_ct_rc */
	__u32 reason;          /* 60: enum counter_reason of the verdict */
	__u32 nat_svc_id;      /* 64 */
	__u32 nat_ordinal;     /* 68 */
	__u32 nat_affinity_timeo; /* 72: seconds */
	__u32 route_flags_src; /* 76: routes map flags of ip_src (0 = unknown) */
	__u32 route_flags_dst; /* 80: of post_nat_ip_dst */
	__u32 fwd_ifindex;     /* 84: redirect target, 0 = host stack */
	__u32 ip_len;          /* 88: IP total length */
	__u32 route_ifindex_dst; /* 92: ifindex of route_flags_dst's route (local workloads) */
	__u32 trace_token;     /* 96: skb->cb[0] at entry: a test_run caller's tag */
	union {                /* 100: "pad" until tunnels; both names stay in BTF */
		__u32 tun_ip;  /* the other node of a tunnelled NodePort flow, 0 = none */
		__u32 pad;
	};
	__u32 pol_rule;        /* 104: written by generated policy: 1 + index of the deciding
	                        * step in the endpoint's compiled rule list; 0 = not said */
	__u32 pad2;            /* 108 */
};

_Static_assert(sizeof(struct dp_state) == 112, "dp_state layout is a contract");
_Static_assert(__builtin_offsetof(struct dp_state, pol_rc) == 40, "pol_rc offset is a contract");
_Static_assert(__builtin_offsetof(struct dp_state, post_nat_ip_dst) == 16, "offset contract");
_Static_assert(__builtin_offsetof(struct dp_state, pol_rule) == 104, "pol_rule offset is a contract");

#endif
