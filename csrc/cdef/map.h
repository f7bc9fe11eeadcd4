/* Map syscalls (bytes level), batch ops, pinning, info. */
struct bpf_map_create_opts {
	size_t sz;
	uint32_t btf_fd;
	uint32_t btf_key_type_id;
	uint32_t btf_value_type_id;
	uint32_t inner_map_fd;
	uint32_t map_flags;
	...;
};
int bpf_map_create(int map_type, const char *map_name, uint32_t key_size, uint32_t value_size,
		   uint32_t max_entries, const struct bpf_map_create_opts *opts);

int bpf_map_lookup_elem(int fd, const void *key, void *value);
int bpf_map_update_elem(int fd, const void *key, const void *value, uint64_t flags);
int bpf_map_delete_elem(int fd, const void *key);
int bpf_map_get_next_key(int fd, const void *key, void *next_key);

struct bpf_map_batch_opts {
	size_t sz;
	uint64_t elem_flags;
	uint64_t flags;
	...;
};
int bpf_map_lookup_batch(int fd, void *in_batch, void *out_batch, void *keys, void *values,
			 uint32_t *count, const struct bpf_map_batch_opts *opts);
int bpf_map_update_batch(int fd, const void *keys, const void *values, uint32_t *count,
			 const struct bpf_map_batch_opts *opts);
int bpf_map_delete_batch(int fd, const void *keys, uint32_t *count,
			 const struct bpf_map_batch_opts *opts);

int bpf_obj_pin(int fd, const char *pathname);
int bpf_obj_get(const char *pathname);
int bpf_obj_get_info_by_fd(int bpf_fd, void *info, uint32_t *info_len);
int bpf_map_get_fd_by_id(uint32_t id);

struct bpf_map_info {
	uint32_t type;
	uint32_t id;
	uint32_t key_size;
	uint32_t value_size;
	uint32_t max_entries;
	uint32_t map_flags;
	char name[16];
	...;
};
