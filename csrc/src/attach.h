/* Attachment helpers and version gates (cdef in csrc/cdef/attach.h). */
#include <errno.h>
#include <string.h>
#include <unistd.h>
#include <linux/if_link.h>
#include <bpf/libbpf_version.h>

/* TCX needs libbpf >= 1.3 (bpf_tcx_opts) and a uapi header that knows
 * BPF_TCX_INGRESS; BPF_F_BEFORE arrived in the same uapi change and, unlike
 * the enum value, can be tested by the preprocessor. */
#if (LIBBPF_MAJOR_VERSION > 1 || (LIBBPF_MAJOR_VERSION == 1 && LIBBPF_MINOR_VERSION >= 3)) && defined(BPF_F_BEFORE)
static const int HAS_TCX = 1;
#else
static const int HAS_TCX = 0;
#endif

struct cebpf_link_desc {
	uint32_t type;
	uint32_t id;
	uint32_t prog_id;
	uint32_t attach_type;
	uint64_t cgroup_id;
	uint32_t ifindex;
};

/* struct bpf_link_info is a union per link type; flatten the fields the
 * attachment layer needs so Python does not mirror the union. */
static int cebpf_link_describe(int link_fd, struct cebpf_link_desc *out)
{
	struct bpf_link_info info;
	uint32_t len = sizeof(info);
	int err;

	memset(&info, 0, sizeof(info));
	memset(out, 0, sizeof(*out));
	err = bpf_obj_get_info_by_fd(link_fd, &info, &len);
	if (err)
		return err < 0 ? err : -errno;
	out->type = info.type;
	out->id = info.id;
	out->prog_id = info.prog_id;
	if (info.type == BPF_LINK_TYPE_CGROUP) {
		out->cgroup_id = info.cgroup.cgroup_id;
		out->attach_type = info.cgroup.attach_type;
	} else if (info.type == BPF_LINK_TYPE_XDP) {
		out->ifindex = info.xdp.ifindex;
	}
	return 0;
}

static int cebpf_prog_id(int prog_fd, uint32_t *id)
{
	struct bpf_prog_info info;
	uint32_t len = sizeof(info);
	int err;

	memset(&info, 0, sizeof(info));
	err = bpf_obj_get_info_by_fd(prog_fd, &info, &len);
	if (err)
		return err < 0 ? err : -errno;
	*id = info.id;
	return 0;
}

/* Preflight: prove that a sched_cls program can be loaded and attached as a
 * direct-action filter on a clsact hook of ifindex in the current netns,
 * then undo everything. The caller runs it in a scratch netns. */
static int cebpf_probe_tc(int ifindex)
{
	/* r0 = 0 (TC_ACT_OK); exit */
	struct bpf_insn insns[2];
	DECLARE_LIBBPF_OPTS(bpf_tc_hook, hook, .ifindex = ifindex, .attach_point = BPF_TC_INGRESS);
	DECLARE_LIBBPF_OPTS(bpf_tc_opts, opts, .handle = 1, .priority = 1);
	int prog_fd, err;

	memset(insns, 0, sizeof(insns));
	insns[0].code = BPF_ALU64 | BPF_MOV | BPF_K;
	insns[1].code = BPF_JMP | BPF_EXIT;
	prog_fd = bpf_prog_load(BPF_PROG_TYPE_SCHED_CLS, "cebpf_probe", "GPL", insns, 2, NULL);
	if (prog_fd < 0)
		return prog_fd;
	err = bpf_tc_hook_create(&hook);
	if (err && err != -EEXIST)
		goto out;
	opts.prog_fd = prog_fd;
	err = bpf_tc_attach(&hook, &opts);
	if (err)
		goto out_hook;
	opts.prog_fd = 0;
	opts.prog_id = 0;
	opts.flags = 0;
	err = bpf_tc_detach(&hook, &opts);
out_hook:
	hook.attach_point = BPF_TC_INGRESS | BPF_TC_EGRESS;
	bpf_tc_hook_destroy(&hook);
out:
	close(prog_fd);
	return err;
}
