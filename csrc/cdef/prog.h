/* Programs: libbpf handles, verifier log capture, BPF_PROG_TEST_RUN. */
const char *bpf_program__name(const struct bpf_program *prog);
const char *bpf_program__section_name(const struct bpf_program *prog);
int bpf_program__fd(const struct bpf_program *prog);
int bpf_program__type(const struct bpf_program *prog);
int bpf_program__set_autoload(struct bpf_program *prog, bool autoload);
int bpf_program__set_log_level(struct bpf_program *prog, uint32_t log_level);
int bpf_program__set_log_buf(struct bpf_program *prog, char *log_buf, size_t log_size);

struct bpf_test_run_opts {
	size_t sz;
	const void *data_in;
	void *data_out;
	uint32_t data_size_in;
	uint32_t data_size_out;
	const void *ctx_in;
	void *ctx_out;
	uint32_t ctx_size_in;
	uint32_t ctx_size_out;
	uint32_t retval;
	int repeat;
	uint32_t duration;
	uint32_t flags;
	...;
};
int bpf_prog_test_run_opts(int prog_fd, struct bpf_test_run_opts *opts);

struct bpf_prog_info {
	uint32_t type;
	uint32_t id;
	uint8_t tag[8];
	char name[16];
	...;
};
int bpf_prog_get_fd_by_id(uint32_t id);
