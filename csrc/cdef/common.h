/* libbpf version, CPU count, errors, and the print callback bridge. */
static const int LIBBPF_MAJOR;
static const int LIBBPF_MINOR;

int libbpf_num_possible_cpus(void);
int libbpf_strerror(int err, char *buf, size_t size);
long libbpf_get_error(const void *ptr);

/* Python side of libbpf's print callback: one formatted line per call. */
extern "Python" void cebpf_py_print(int level, const char *msg);
/* Routes libbpf's messages to cebpf_py_print (see csrc/src/common.h). */
void cebpf_install_print(void);

enum libbpf_print_level {
	LIBBPF_WARN,
	LIBBPF_INFO,
	LIBBPF_DEBUG,
};
