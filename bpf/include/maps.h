/* The dataplane's IPv4 maps, declared once with BTF key/value types so that
 * `bpftool map dump` decodes them and Python can check its codecs against
 * the compiled object.  Python may resize any of them before load
 * (bpf_map__set_max_entries); the numbers here are Calico's defaults. */
#ifndef CALICO_EBPF_MAPS_H
#define CALICO_EBPF_MAPS_H

#include <linux/bpf.h>
#include <bpf/bpf_helpers.h>

#include "nat.h"
#include "conntrack.h"
#include "routes.h"
#include "ipsets.h"
#include "failsafes.h"
#include "ifstate.h"
#include "counters.h"
#include "nat_fe_hash.h"
#include "dp_state.h"
#include "tunnel.h"

struct {
	__uint(type, BPF_MAP_TYPE_LPM_TRIE);
	__type(key, struct nat_fe_key_v4);
	__type(value, struct nat_fe_value);
	__uint(max_entries, 65536);
	__uint(map_flags, BPF_F_NO_PREALLOC);
} cebpf_nat_fe SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__type(key, struct nat_be_key);
	__type(value, struct nat_be_value_v4);
	__uint(max_entries, 262144);
	__uint(map_flags, BPF_F_NO_PREALLOC);
} cebpf_nat_be SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_LRU_HASH);
	__type(key, struct nat_aff_key_v4);
	__type(value, struct nat_aff_value_v4);
	__uint(max_entries, 65536);
} cebpf_nat_aff SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_LRU_HASH);
	__type(key, struct ct_key_v4);
	__type(value, struct ct_value_v4);
	__uint(max_entries, 512000);
} cebpf_ct SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_LPM_TRIE);
	__type(key, struct route_key_v4);
	__type(value, struct route_value_v4);
	__uint(max_entries, 262144);
	__uint(map_flags, BPF_F_NO_PREALLOC);
} cebpf_routes SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_LPM_TRIE);
	__type(key, struct ipset_key_v4);
	__type(value, __u32);
	__uint(max_entries, 1048576);
	__uint(map_flags, BPF_F_NO_PREALLOC);
} cebpf_ipsets SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_LPM_TRIE);
	__type(key, struct failsafe_key_v4);
	__type(value, __u32);
	__uint(max_entries, 65536);
	__uint(map_flags, BPF_F_NO_PREALLOC);
} cebpf_fsafes SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__type(key, __u32);
	__type(value, struct ifstate_value);
	__uint(max_entries, 1000);
	__uint(map_flags, BPF_F_NO_PREALLOC);
} cebpf_ifstate SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_HASH);
	__type(key, struct counters_key);
	__type(value, struct counters_value);
	__uint(max_entries, 20000);
} cebpf_counters SEC(".maps");

/* --- Added for the datapath (helper D) ------------------------------- */

/* Exact-match frontends, consulted before the LPM (see nat_fe_hash.h). */
struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__type(key, struct nat_feh_key_v4);
	__type(value, struct nat_fe_value);
	__uint(max_entries, 65536);
	__uint(map_flags, BPF_F_NO_PREALLOC);
} cebpf_nat_feh SEC(".maps");

/* Per-packet state: policy hand-off and trace record (see dp_state.h). */
struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__type(key, __u32);
	__type(value, struct dp_state);
	__uint(max_entries, 1);
} cebpf_state SEC(".maps");

/* Policy programs, one slot per (endpoint, direction) from ifstate. */
struct {
	__uint(type, BPF_MAP_TYPE_PROG_ARRAY);
	__uint(key_size, sizeof(__u32));
	__uint(value_size, sizeof(__u32));
	__uint(max_entries, 10000);
} cebpf_jump SEC(".maps");

/* Return path of policy programs: enum dp_prog_slot. */
struct {
	__uint(type, BPF_MAP_TYPE_PROG_ARRAY);
	__uint(key_size, sizeof(__u32));
	__uint(value_size, sizeof(__u32));
	__uint(max_entries, DP_PROG_MAX);
} cebpf_progs SEC(".maps");

/* --- NodePort forwarding over VXLAN (helper D2) ----------------------- */

/* The node's tunnel settings, key 0 (see tunnel.h); all zero = off. */
struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__type(key, __u32);
	__type(value, struct tunnel_config);
	__uint(max_entries, 1);
} cebpf_tunnel SEC(".maps");

#endif
