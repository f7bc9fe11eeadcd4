/* Raw program load: instructions assembled in Python (calico_ebpf.compiler.asm)
 * go to the kernel as bytes; see csrc/src/prog_load.h. */
int cebpf_prog_load(uint32_t prog_type, const char *name, const char *license,
		    const void *insns, size_t insn_cnt, uint32_t expected_attach_type,
		    uint32_t prog_flags, const int *fd_array,
		    uint32_t log_level, char *log_buf, uint32_t log_size);
