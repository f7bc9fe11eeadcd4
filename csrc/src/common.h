/* Version shims and the libbpf print bridge.
 * Python asks lib.LIBBPF_MAJOR / lib.HAS_X instead of catching link errors. */
#include <stdarg.h>
#include <stdio.h>
#include <bpf/libbpf_version.h>

static const int LIBBPF_MAJOR = LIBBPF_MAJOR_VERSION;
static const int LIBBPF_MINOR = LIBBPF_MINOR_VERSION;

/* Defined by cffi from the extern "Python" declaration in the cdef. */
static void cebpf_py_print(int level, const char *msg);

/* libbpf hands us a format and a va_list, which Python cannot take:
 * format here and pass one finished string. Long messages (verifier logs
 * printed by libbpf on failure) are truncated to the buffer; the full log
 * comes from the per-program log buffer instead. */
static int cebpf_print_shim(enum libbpf_print_level level, const char *fmt, va_list args)
{
	char buf[4096];
	int n = vsnprintf(buf, sizeof(buf), fmt, args);
	if (n < 0)
		return n;
	cebpf_py_print((int)level, buf);
	return n;
}

static void cebpf_install_print(void)
{
	libbpf_set_print(cebpf_print_shim);
}
