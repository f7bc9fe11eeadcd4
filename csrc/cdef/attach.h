/* Attachments: tc (clsact filters), XDP, cgroup (links or legacy attach),
 * link pinning/introspection, and the feature gates Python reads instead of
 * failing at import on an older libbpf (HAS_TCX). bpf_obj_pin/get,
 * bpf_obj_get_info_by_fd and bpf_prog_get_fd_by_id are declared in map.h/prog.h. */
static const int HAS_TCX;

/* ---- tc: clsact qdisc and direct-action filters (netlink, current netns) */
enum bpf_tc_attach_point {
	BPF_TC_INGRESS = 1,
	BPF_TC_EGRESS = 2,
	BPF_TC_CUSTOM = 4,
};
enum bpf_tc_flags {
	BPF_TC_F_REPLACE = 1,
};
struct bpf_tc_hook {
	size_t sz;
	int ifindex;
	enum bpf_tc_attach_point attach_point;
	uint32_t parent;
	...;
};
struct bpf_tc_opts {
	size_t sz;
	int prog_fd;
	uint32_t flags;
	uint32_t prog_id;
	uint32_t handle;
	uint32_t priority;
	...;
};
int bpf_tc_hook_create(struct bpf_tc_hook *hook);
int bpf_tc_hook_destroy(struct bpf_tc_hook *hook);
int bpf_tc_attach(const struct bpf_tc_hook *hook, struct bpf_tc_opts *opts);
int bpf_tc_detach(const struct bpf_tc_hook *hook, const struct bpf_tc_opts *opts);
int bpf_tc_query(const struct bpf_tc_hook *hook, struct bpf_tc_opts *opts);

/* ---- XDP (netlink, current netns) */
#define XDP_FLAGS_UPDATE_IF_NOEXIST ...
#define XDP_FLAGS_SKB_MODE ...
#define XDP_FLAGS_DRV_MODE ...
#define XDP_FLAGS_HW_MODE ...
#define XDP_FLAGS_REPLACE ...
#define XDP_ATTACHED_NONE ...
#define XDP_ATTACHED_DRV ...
#define XDP_ATTACHED_SKB ...
#define XDP_ATTACHED_HW ...
#define XDP_ATTACHED_MULTI ...
struct bpf_xdp_attach_opts {
	size_t sz;
	int old_prog_fd;
	...;
};
struct bpf_xdp_query_opts {
	size_t sz;
	uint32_t prog_id;
	uint32_t drv_prog_id;
	uint32_t hw_prog_id;
	uint32_t skb_prog_id;
	uint8_t attach_mode;
	...;
};
int bpf_xdp_attach(int ifindex, int prog_fd, uint32_t flags, const struct bpf_xdp_attach_opts *opts);
int bpf_xdp_detach(int ifindex, uint32_t flags, const struct bpf_xdp_attach_opts *opts);
int bpf_xdp_query(int ifindex, int flags, struct bpf_xdp_query_opts *opts);

/* ---- cgroup: bpf_link (pinnable) or legacy bpf_prog_attach */
#define BPF_CGROUP_INET_INGRESS ...
#define BPF_CGROUP_INET_EGRESS ...
#define BPF_CGROUP_INET_SOCK_CREATE ...
#define BPF_CGROUP_INET4_CONNECT ...
#define BPF_CGROUP_INET6_CONNECT ...
#define BPF_CGROUP_UDP4_SENDMSG ...
#define BPF_CGROUP_UDP6_SENDMSG ...
#define BPF_CGROUP_UDP4_RECVMSG ...
#define BPF_CGROUP_UDP6_RECVMSG ...
#define BPF_CGROUP_INET4_GETPEERNAME ...
#define BPF_CGROUP_INET6_GETPEERNAME ...
#define BPF_F_ALLOW_OVERRIDE ...
#define BPF_F_ALLOW_MULTI ...
#define BPF_LINK_TYPE_CGROUP ...
#define BPF_LINK_TYPE_XDP ...
int bpf_link_create(int prog_fd, int target_fd, int attach_type, const void *opts);
int bpf_link_detach(int link_fd);
int bpf_link_get_fd_by_id(uint32_t id);
int bpf_prog_attach(int prog_fd, int attachable_fd, int type, unsigned int flags);
int bpf_prog_detach2(int prog_fd, int attachable_fd, int type);
int bpf_prog_query(int target_fd, int type, uint32_t query_flags, uint32_t *attach_flags,
		   uint32_t *prog_ids, uint32_t *prog_cnt);

/* A link's identity, read with BPF_OBJ_GET_INFO_BY_FD (see csrc/src/attach.h). */
struct cebpf_link_desc {
	uint32_t type;
	uint32_t id;
	uint32_t prog_id;
	uint32_t attach_type;
	uint64_t cgroup_id;
	uint32_t ifindex;
};
int cebpf_link_describe(int link_fd, struct cebpf_link_desc *out);
int cebpf_prog_id(int prog_fd, uint32_t *id);

/* Preflight probes (see csrc/src/attach.h); each returns 0 or -errno. */
int cebpf_probe_tc(int ifindex);
