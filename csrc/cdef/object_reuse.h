/* bpf_object: make an object's map use an existing map fd before load
 * (a helper program working on the dataplane's own maps). */
int bpf_map__reuse_fd(struct bpf_map *map, int fd);
