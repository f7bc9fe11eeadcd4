/* bpf_object: open an ELF, resize and pin maps, load, iterate. */
struct bpf_object;
struct bpf_program;
struct bpf_map;
struct btf;

struct bpf_object_open_opts {
	size_t sz;
	const char *object_name;
	const char *pin_root_path;
	...;
};

struct bpf_object *bpf_object__open_file(const char *path, const struct bpf_object_open_opts *opts);
struct bpf_object *bpf_object__open_mem(const void *obj_buf, size_t obj_buf_sz,
					const struct bpf_object_open_opts *opts);
int bpf_object__load(struct bpf_object *obj);
void bpf_object__close(struct bpf_object *obj);
const char *bpf_object__name(const struct bpf_object *obj);
struct btf *bpf_object__btf(const struct bpf_object *obj);

struct bpf_map *bpf_object__next_map(const struct bpf_object *obj, const struct bpf_map *map);
struct bpf_program *bpf_object__next_program(const struct bpf_object *obj, struct bpf_program *prog);

const char *bpf_map__name(const struct bpf_map *map);
int bpf_map__fd(const struct bpf_map *map);
int bpf_map__type(const struct bpf_map *map);
uint32_t bpf_map__key_size(const struct bpf_map *map);
uint32_t bpf_map__value_size(const struct bpf_map *map);
uint32_t bpf_map__max_entries(const struct bpf_map *map);
uint32_t bpf_map__map_flags(const struct bpf_map *map);
int bpf_map__set_max_entries(struct bpf_map *map, uint32_t max_entries);
int bpf_map__set_pin_path(struct bpf_map *map, const char *path);
const char *bpf_map__pin_path(const struct bpf_map *map);
bool bpf_map__is_pinned(const struct bpf_map *map);
bool bpf_map__is_internal(const struct bpf_map *map);
uint32_t bpf_map__btf_key_type_id(const struct bpf_map *map);
uint32_t bpf_map__btf_value_type_id(const struct bpf_map *map);
