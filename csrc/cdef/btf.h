/* BTF queries: parse an ELF's BTF and walk struct members (btf.h inlines). */
struct btf_type {
	uint32_t name_off;
	uint32_t info;
	union {
		uint32_t size;
		uint32_t type;
	};
};
struct btf_member {
	uint32_t name_off;
	uint32_t type;
	uint32_t offset;
};
#define BTF_KIND_INT ...
#define BTF_KIND_PTR ...
#define BTF_KIND_ARRAY ...
#define BTF_KIND_STRUCT ...
#define BTF_KIND_UNION ...
#define BTF_KIND_TYPEDEF ...
#define BTF_KIND_VOLATILE ...
#define BTF_KIND_CONST ...
#define BTF_KIND_RESTRICT ...

struct btf *btf__parse_elf(const char *path, void *btf_ext);
void btf__free(struct btf *btf);
int btf__find_by_name_kind(const struct btf *btf, const char *type_name, uint32_t kind);
const struct btf_type *btf__type_by_id(const struct btf *btf, uint32_t id);
const char *btf__name_by_offset(const struct btf *btf, uint32_t offset);
long btf__resolve_size(const struct btf *btf, uint32_t type_id);
int btf__resolve_type(const struct btf *btf, uint32_t type_id);
uint32_t btf__type_cnt(const struct btf *btf);

/* static inline in btf.h; cffi API mode wraps them */
uint16_t btf_kind(const struct btf_type *t);
uint16_t btf_vlen(const struct btf_type *t);
bool btf_kflag(const struct btf_type *t);
struct btf_member *btf_members(const struct btf_type *t);
uint32_t btf_member_bit_offset(const struct btf_type *t, uint32_t member_idx);
