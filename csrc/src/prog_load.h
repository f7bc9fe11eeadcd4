/* Raw program load. Python hands over the instructions as a byte buffer
 * (8 bytes each, struct bpf_insn layout), so the cdef needs neither the
 * bitfields of struct bpf_insn nor libbpf's enums; the opts struct is
 * filled here, where its exact layout is known. */
static int cebpf_prog_load(uint32_t prog_type, const char *name, const char *license,
			   const void *insns, size_t insn_cnt, uint32_t expected_attach_type,
			   uint32_t prog_flags, const int *fd_array,
			   uint32_t log_level, char *log_buf, uint32_t log_size)
{
	LIBBPF_OPTS(bpf_prog_load_opts, opts,
		.expected_attach_type = (enum bpf_attach_type)expected_attach_type,
		.prog_flags = prog_flags,
		.fd_array = fd_array,
		.log_level = log_level,
		.log_buf = log_buf,
		.log_size = log_size);

	return bpf_prog_load((enum bpf_prog_type)prog_type, name && name[0] ? name : NULL, license,
			     (const struct bpf_insn *)insns, insn_cnt, &opts);
}
