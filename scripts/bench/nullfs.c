// nullfs: a FUSE filesystem that keeps its tree in memory and does no other
// work, for scripts/bench-floor.sh. What it costs per operation is what the
// kernel's FUSE transport costs on this machine: a floor no FUSE filesystem
// (bindfs, LOCKER) can go below with the same requests.
//
// Usage: nullfs MOUNTPOINT dev|uring [TTL_SECONDS]
//   dev    requests are read from /dev/fuse and answered with writev, one
//          thread, as LOCKER (fuser) does
//   uring  FUSE over io_uring (Linux 6.14+, the fuse module's enable_uring
//          parameter set): one ring per CPU, each served by a thread pinned
//          to that CPU; a request arrives as a completion and its answer goes
//          back with the command that fetches the next one
// TTL_SECONDS (default 60, as LOCKER) is the entry and attribute lifetime.
//
// It serves what scripts/bench/meta.py does (mkdir, create, write, stat,
// rename, unlink, rmdir) and answers a listing with no entries. It runs as
// root, mounts with mount(2), unmounts itself on SIGTERM or SIGINT and exits
// when unmounted, printing how many requests came by each way.
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <linux/fuse.h>
#include <linux/io_uring.h>
#include <pthread.h>
#include <sched.h>
#include <signal.h>
#include <stdatomic.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/mount.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <sys/uio.h>
#include <unistd.h>

#define MAX_WRITE (1024 * 1024)
// Not in older <linux/fuse.h>: the io_uring part of the protocol (7.42).
#define FUSE_OVER_IO_URING_FLAG (1ULL << 41)
#define FUSE_IO_URING_CMD_REGISTER 1
#define FUSE_IO_URING_CMD_COMMIT_AND_FETCH 2
struct uring_ent_in_out {
  uint64_t flags;
  uint64_t commit_id;
  uint32_t payload_sz;
  uint32_t padding;
  uint64_t reserved;
};
struct uring_req_header {
  char in_out[128]; // fuse_in_header in, fuse_out_header out
  char op_in[128];  // the operation's own header (its first argument)
  struct uring_ent_in_out ent;
};
struct uring_cmd_req {
  uint64_t flags;
  uint64_t commit_id;
  uint16_t qid;
  uint8_t padding[6];
};

static int fuse_fd;
static int use_uring;
static double ttl = 60.0;
static atomic_int initialized;
static atomic_long from_dev, from_ring;
static pthread_mutex_t lock = PTHREAD_MUTEX_INITIALIZER;
static const char *mountpoint;

// One request through the mount, from a thread of its own: it is answered
// only once every ring is registered.
static atomic_int probed;
static void *probe(void *unused) {
  (void)unused;
  struct stat st;
  if (stat(mountpoint, &st) < 0) perror("nullfs: stat of the mount");
  atomic_store(&probed, 1);
  return NULL;
}

// SIGTERM/SIGINT unmount; the loops then see the device go and exit.
static void on_signal(int sig) {
  (void)sig;
  umount2(mountpoint, MNT_DETACH);
}

// Says how many requests came each way and ends the process; the first
// thread to get here does it, the others wait to be ended with it.
static void finish(int status) {
  static atomic_flag done = ATOMIC_FLAG_INIT;
  if (atomic_flag_test_and_set(&done))
    for (;;) pause();
  fprintf(stderr, "nullfs: requests: %ld from /dev/fuse, %ld from io_uring\n",
          atomic_load(&from_dev), atomic_load(&from_ring));
  _exit(status);
}

// ---------------------------------------------------------------- the tree
// Names: one open-addressing table keyed by (parent, name). Inodes: an array.
#define SLOTS (1 << 20)
#define INODES (1 << 20)
struct name {
  uint64_t parent, ino;
  int state; // 0 free, 1 used, 2 removed
  char text[64];
};
struct inode {
  uint32_t mode, uid, gid, nlink, children;
  uint64_t size;
};
static struct name *names;
static size_t taken; // slots used or removed: a lookup stops at a free one
static struct inode *inodes;
static uint64_t next_ino = 2;

static uint64_t hash(uint64_t parent, const char *s) {
  uint64_t x = 1469598103934665603ULL ^ parent;
  while (*s)
    x = (x ^ (uint8_t)*s++) * 1099511628211ULL;
  return x;
}

// The slot holding (parent, text), or the one it would take; *found says which.
static struct name *slot(uint64_t parent, const char *text, int *found) {
  uint64_t i = hash(parent, text) & (SLOTS - 1);
  struct name *removed = NULL;
  for (;;) {
    struct name *n = &names[i];
    if (n->state == 1 && n->parent == parent && !strcmp(n->text, text)) {
      *found = 1;
      return n;
    }
    if (n->state == 2 && !removed)
      removed = n;
    if (n->state == 0) {
      *found = 0;
      return removed ? removed : n;
    }
    i = (i + 1) & (SLOTS - 1);
  }
}

static uint64_t find(uint64_t parent, const char *text) {
  int found;
  struct name *n = slot(parent, text, &found);
  return found ? n->ino : 0;
}

static int name_fits(const char *text) {
  if (strlen(text) >= sizeof names->text) return -ENAMETOOLONG;
  if (taken >= SLOTS / 4 * 3) return -ENOSPC; // keeps free slots for lookups to stop at
  return 0;
}

static int add_name(uint64_t parent, const char *text, uint64_t ino) {
  int found, r = name_fits(text);
  if (r < 0)
    return r;
  struct name *n = slot(parent, text, &found);
  if (n->state == 0)
    taken++;
  *n = (struct name){.parent = parent, .ino = ino, .state = 1};
  strcpy(n->text, text);
  inodes[parent].children++;
  return 0;
}

static void drop_name(uint64_t parent, const char *text) {
  int found;
  struct name *n = slot(parent, text, &found);
  if (found) {
    n->state = 2;
    inodes[parent].children--;
  }
}

static void fill_attr(uint64_t ino, struct fuse_attr *a) {
  const struct inode *i = &inodes[ino];
  memset(a, 0, sizeof *a);
  a->ino = ino;
  a->mode = i->mode;
  a->nlink = i->nlink;
  a->uid = i->uid;
  a->gid = i->gid;
  a->size = i->size;
  a->blocks = (i->size + 511) / 512;
  a->blksize = 4096;
  a->atime = a->mtime = a->ctime = 1700000000;
}

static void set_valid(uint64_t *secs, uint32_t *nsecs) {
  *secs = (uint64_t)ttl;
  *nsecs = (uint32_t)((ttl - (double)(uint64_t)ttl) * 1e9);
}

static int entry_out(uint64_t ino, char *out) {
  struct fuse_entry_out *e = (void *)out;
  memset(e, 0, sizeof *e);
  e->nodeid = ino;
  set_valid(&e->entry_valid, &e->entry_valid_nsec);
  set_valid(&e->attr_valid, &e->attr_valid_nsec);
  fill_attr(ino, &e->attr);
  return sizeof *e;
}

static int64_t make(const struct fuse_in_header *ih, const char *text, uint32_t mode) {
  if (next_ino >= INODES)
    return -ENOSPC;
  uint64_t ino = next_ino;
  int r = add_name(ih->nodeid, text, ino);
  if (r < 0)
    return r;
  next_ino++;
  inodes[ino] = (struct inode){
      .mode = mode, .uid = ih->uid, .gid = ih->gid, .nlink = S_ISDIR(mode) ? 2 : 1};
  if (S_ISDIR(mode))
    inodes[ih->nodeid].nlink++;
  return (int64_t)ino;
}

// Size of the operation's own header (the request's first argument).
static size_t op_header_size(uint32_t opcode) {
  switch (opcode) {
  case FUSE_INIT: return sizeof(struct fuse_init_in);
  case FUSE_GETATTR: return sizeof(struct fuse_getattr_in);
  case FUSE_SETATTR: return sizeof(struct fuse_setattr_in);
  case FUSE_MKDIR: return sizeof(struct fuse_mkdir_in);
  case FUSE_CREATE: return sizeof(struct fuse_create_in);
  case FUSE_RENAME: return sizeof(struct fuse_rename_in);
  case FUSE_RENAME2: return sizeof(struct fuse_rename2_in);
  case FUSE_OPEN: case FUSE_OPENDIR: return sizeof(struct fuse_open_in);
  case FUSE_WRITE: return sizeof(struct fuse_write_in);
  case FUSE_READ: case FUSE_READDIR: return sizeof(struct fuse_read_in);
  case FUSE_RELEASE: case FUSE_RELEASEDIR: return sizeof(struct fuse_release_in);
  case FUSE_FLUSH: return sizeof(struct fuse_flush_in);
  case FUSE_FSYNC: case FUSE_FSYNCDIR: return sizeof(struct fuse_fsync_in);
  case FUSE_GETXATTR: case FUSE_LISTXATTR: return sizeof(struct fuse_getxattr_in);
  case FUSE_ACCESS: return sizeof(struct fuse_access_in);
  case FUSE_FORGET: return sizeof(struct fuse_forget_in);
  case FUSE_BATCH_FORGET: return sizeof(struct fuse_batch_forget_in);
  case FUSE_INTERRUPT: return sizeof(struct fuse_interrupt_in);
  default: return 0;
  }
}

// Serves one request: its answer's body goes to `out`; returns the body's
// length, -errno, or 1 << 30 for a request that gets no answer.
#define NO_ANSWER (1 << 30)
static int serve(const struct fuse_in_header *ih, const char *op, const char *payload,
                 char *out) {
  int r = 0;
  switch (ih->opcode) {
  case FUSE_INIT: {
    const struct fuse_init_in *in = (const void *)op;
    struct fuse_init_out *o = (void *)out;
    uint64_t offered = in->flags | ((uint64_t)in->flags2 << 32);
    // What LOCKER asks for (with fuser's defaults), and the ring if wanted.
    uint64_t want = FUSE_ASYNC_READ | FUSE_BIG_WRITES | FUSE_INIT_EXT | FUSE_MAX_PAGES |
                    FUSE_HANDLE_KILLPRIV_V2 | FUSE_POSIX_ACL | FUSE_DONT_MASK;
    if (use_uring) {
      if (!(offered & FUSE_OVER_IO_URING_FLAG)) {
        fprintf(stderr, "nullfs: the kernel does not offer FUSE over io_uring\n");
        exit(3);
      }
      want |= FUSE_OVER_IO_URING_FLAG;
    }
    uint64_t on = offered & want;
    memset(o, 0, sizeof *o);
    o->major = FUSE_KERNEL_VERSION;
    o->minor = in->minor < FUSE_KERNEL_MINOR_VERSION ? in->minor : FUSE_KERNEL_MINOR_VERSION;
    o->max_readahead = in->max_readahead;
    o->flags = (uint32_t)on;
    o->flags2 = (uint32_t)(on >> 32);
    o->max_background = 64;
    o->congestion_threshold = 48;
    o->max_write = MAX_WRITE;
    o->time_gran = 1;
    o->max_pages = MAX_WRITE / 4096;
    return sizeof *o;
  }
  case FUSE_FORGET: case FUSE_BATCH_FORGET: case FUSE_INTERRUPT:
    return NO_ANSWER;
  case FUSE_DESTROY: return 0;
  case FUSE_LOOKUP: {
    uint64_t ino = find(ih->nodeid, payload);
    return ino ? entry_out(ino, out) : -ENOENT;
  }
  case FUSE_GETATTR: case FUSE_SETATTR: {
    struct fuse_attr_out *o = (void *)out;
    if (ih->opcode == FUSE_SETATTR) {
      const struct fuse_setattr_in *in = (const void *)op;
      struct inode *i = &inodes[ih->nodeid];
      if (in->valid & FATTR_SIZE) i->size = in->size;
      if (in->valid & FATTR_MODE) i->mode = (i->mode & S_IFMT) | (in->mode & 07777);
      if (in->valid & FATTR_UID) i->uid = in->uid;
      if (in->valid & FATTR_GID) i->gid = in->gid;
    }
    memset(o, 0, sizeof *o);
    set_valid(&o->attr_valid, &o->attr_valid_nsec);
    fill_attr(ih->nodeid, &o->attr);
    return sizeof *o;
  }
  case FUSE_MKDIR: {
    const struct fuse_mkdir_in *in = (const void *)op;
    if (find(ih->nodeid, payload)) return -EEXIST;
    int64_t ino = make(ih, payload, S_IFDIR | (in->mode & 07777));
    return ino < 0 ? (int)ino : entry_out((uint64_t)ino, out);
  }
  case FUSE_CREATE: {
    const struct fuse_create_in *in = (const void *)op;
    if (find(ih->nodeid, payload)) return -EEXIST;
    int64_t ino = make(ih, payload, S_IFREG | (in->mode & 07777));
    if (ino < 0) return (int)ino;
    r = entry_out((uint64_t)ino, out);
    struct fuse_open_out *o = (void *)(out + r);
    memset(o, 0, sizeof *o);
    o->fh = (uint64_t)ino;
    return r + (int)sizeof *o;
  }
  case FUSE_UNLINK: case FUSE_RMDIR: {
    uint64_t ino = find(ih->nodeid, payload);
    if (!ino) return -ENOENT;
    if (ih->opcode == FUSE_RMDIR) {
      if (inodes[ino].children) return -ENOTEMPTY;
      inodes[ih->nodeid].nlink--;
    }
    drop_name(ih->nodeid, payload);
    inodes[ino].nlink = 0;
    return 0;
  }
  case FUSE_RENAME: case FUSE_RENAME2: {
    uint64_t to_dir = ((const struct fuse_rename_in *)op)->newdir; // first in both
    if (ih->opcode == FUSE_RENAME2 && ((const struct fuse_rename2_in *)op)->flags)
      return -EINVAL; // no RENAME_NOREPLACE or RENAME_EXCHANGE here
    const char *from = payload, *to = payload + strlen(payload) + 1;
    uint64_t ino = find(ih->nodeid, from);
    if (!ino) return -ENOENT;
    uint64_t old = find(to_dir, to);
    if (old == ino) return 0;
    int dir = S_ISDIR(inodes[ino].mode);
    if (old) {
      if (S_ISDIR(inodes[old].mode) != dir) return dir ? -ENOTDIR : -EISDIR;
      if (dir && inodes[old].children) return -ENOTEMPTY;
    } else if ((r = name_fits(to)) < 0) {
      return r;
    }
    if (old) {
      drop_name(to_dir, to);
      inodes[old].nlink = 0;
      if (dir) inodes[to_dir].nlink--;
    }
    drop_name(ih->nodeid, from);
    if (dir) {
      inodes[ih->nodeid].nlink--;
      inodes[to_dir].nlink++;
    }
    return add_name(to_dir, to, ino);
  }
  case FUSE_OPEN: case FUSE_OPENDIR: {
    struct fuse_open_out *o = (void *)out;
    memset(o, 0, sizeof *o);
    o->fh = ih->nodeid;
    return sizeof *o;
  }
  case FUSE_WRITE: {
    const struct fuse_write_in *in = (const void *)op;
    struct inode *i = &inodes[ih->nodeid];
    struct fuse_write_out *o = (void *)out;
    if (in->offset + in->size > i->size) i->size = in->offset + in->size;
    memset(o, 0, sizeof *o);
    o->size = in->size;
    return sizeof *o;
  }
  case FUSE_STATFS: {
    struct fuse_statfs_out *o = (void *)out;
    memset(o, 0, sizeof *o);
    o->st.bsize = o->st.frsize = 4096;
    o->st.namelen = 63;
    return sizeof *o;
  }
  case FUSE_GETXATTR: case FUSE_LISTXATTR: return -ENODATA;
  case FUSE_READDIR: case FUSE_FLUSH: case FUSE_RELEASE: case FUSE_RELEASEDIR:
  case FUSE_FSYNC: case FUSE_FSYNCDIR: case FUSE_ACCESS:
    return 0;
  default: return -ENOSYS;
  }
}

static int serve_locked(const struct fuse_in_header *ih, const char *op, const char *payload,
                        char *out) {
  pthread_mutex_lock(&lock);
  int r = serve(ih, op, payload, out);
  pthread_mutex_unlock(&lock);
  return r;
}

// ---------------------------------------------------------------- /dev/fuse
static void *dev_loop(void *unused) {
  (void)unused;
  static char buf[MAX_WRITE + 65536];
  char out[4096];
  for (;;) {
    ssize_t n = read(fuse_fd, buf, sizeof buf);
    if (n < 0) {
      if (errno == EINTR || errno == ENOENT || errno == EAGAIN) continue;
      if (errno != ENODEV) perror("nullfs: read /dev/fuse");
      finish(errno == ENODEV ? 0 : 1);
    }
    atomic_fetch_add(&from_dev, 1);
    const struct fuse_in_header *ih = (const void *)buf;
    const char *op = buf + sizeof *ih;
    int r = serve_locked(ih, op, op + op_header_size(ih->opcode), out);
    if (r == NO_ANSWER) continue;
    struct fuse_out_header oh = {
        .len = (uint32_t)(sizeof oh + (r > 0 ? r : 0)), .error = r < 0 ? r : 0, .unique = ih->unique};
    struct iovec iov[2] = {{&oh, sizeof oh}, {out, r > 0 ? (size_t)r : 0}};
    if (writev(fuse_fd, iov, r > 0 ? 2 : 1) < 0 && errno != ENOENT) perror("nullfs: writev");
    if (ih->opcode == FUSE_INIT) atomic_store(&initialized, 1);
  }
  return NULL;
}

// ---------------------------------------------------------------- io_uring
struct ring {
  int fd;
  unsigned *sq_tail, *sq_mask, *sq_array, *cq_head, *cq_tail, *cq_mask;
  struct io_uring_cqe *cqes;
  char *sqes; // 128-byte entries (IORING_SETUP_SQE128)
};

static void ring_setup(struct ring *r) {
  struct io_uring_params p;
  memset(&p, 0, sizeof p);
  p.flags = IORING_SETUP_SQE128;
  r->fd = (int)syscall(__NR_io_uring_setup, 8, &p);
  if (r->fd < 0) { perror("nullfs: io_uring_setup"); exit(1); }
  char *sq = mmap(0, p.sq_off.array + p.sq_entries * sizeof(unsigned), PROT_READ | PROT_WRITE,
                  MAP_SHARED | MAP_POPULATE, r->fd, IORING_OFF_SQ_RING);
  char *cq = mmap(0, p.cq_off.cqes + p.cq_entries * sizeof(struct io_uring_cqe),
                  PROT_READ | PROT_WRITE, MAP_SHARED | MAP_POPULATE, r->fd, IORING_OFF_CQ_RING);
  r->sqes = mmap(0, p.sq_entries * 128, PROT_READ | PROT_WRITE, MAP_SHARED | MAP_POPULATE, r->fd,
                 IORING_OFF_SQES);
  if (sq == MAP_FAILED || cq == MAP_FAILED || r->sqes == MAP_FAILED) {
    perror("nullfs: mmap of the ring");
    exit(1);
  }
  r->sq_tail = (void *)(sq + p.sq_off.tail);
  r->sq_mask = (void *)(sq + p.sq_off.ring_mask);
  r->sq_array = (void *)(sq + p.sq_off.array);
  r->cq_head = (void *)(cq + p.cq_off.head);
  r->cq_tail = (void *)(cq + p.cq_off.tail);
  r->cq_mask = (void *)(cq + p.cq_off.ring_mask);
  r->cqes = (void *)(cq + p.cq_off.cqes);
}

struct ring_entry {
  struct uring_req_header *head;
  char *payload;
  struct iovec iov[2];
};

static void queue_cmd(struct ring *r, uint32_t cmd, struct ring_entry *e, uint64_t index,
                      uint16_t qid, uint64_t commit_id) {
  unsigned tail = *r->sq_tail, i = tail & *r->sq_mask;
  struct io_uring_sqe *sqe = (void *)(r->sqes + (size_t)i * 128);
  memset(sqe, 0, 128);
  sqe->opcode = IORING_OP_URING_CMD;
  sqe->fd = fuse_fd;
  sqe->cmd_op = cmd;
  sqe->addr = (uint64_t)(uintptr_t)e->iov;
  sqe->len = 2;
  sqe->user_data = index;
  struct uring_cmd_req *req = (void *)sqe->cmd;
  req->qid = qid;
  req->commit_id = commit_id;
  r->sq_array[i] = i;
  atomic_store_explicit((_Atomic unsigned *)r->sq_tail, tail + 1, memory_order_release);
}

static void enter(struct ring *r, unsigned submit, unsigned wait) {
  while (syscall(__NR_io_uring_enter, r->fd, submit, wait, wait ? IORING_ENTER_GETEVENTS : 0,
                 NULL, 0) < 0) {
    if (errno != EINTR) { perror("nullfs: io_uring_enter"); exit(1); }
  }
}

#define DEPTH 2 // entries per queue
static void *ring_loop(void *arg) {
  int qid = (int)(intptr_t)arg;
  cpu_set_t cpus;
  CPU_ZERO(&cpus);
  CPU_SET(qid, &cpus);
  pthread_setaffinity_np(pthread_self(), sizeof cpus, &cpus);
  struct ring r;
  ring_setup(&r);
  struct ring_entry ents[DEPTH];
  char out[4096];
  for (int i = 0; i < DEPTH; i++) {
    ents[i].head = aligned_alloc(4096, 4096);
    ents[i].payload = aligned_alloc(4096, MAX_WRITE + 4096);
    if (!ents[i].head || !ents[i].payload) { perror("nullfs: alloc"); exit(1); }
    memset(ents[i].head, 0, 4096);
    ents[i].iov[0] = (struct iovec){ents[i].head, sizeof(struct uring_req_header)};
    ents[i].iov[1] = (struct iovec){ents[i].payload, MAX_WRITE + 4096};
    queue_cmd(&r, FUSE_IO_URING_CMD_REGISTER, &ents[i], (uint64_t)i, (uint16_t)qid, 0);
  }
  enter(&r, DEPTH, 0);
  for (;;) {
    unsigned head = *r.cq_head;
    unsigned tail = atomic_load_explicit((_Atomic unsigned *)r.cq_tail, memory_order_acquire);
    if (head == tail) {
      enter(&r, 0, 1);
      continue;
    }
    unsigned answers = 0;
    for (; head != tail; head++) {
      const struct io_uring_cqe *c = &r.cqes[head & *r.cq_mask];
      if (c->res < 0) { // the mount is going away (ENOTCONN) or failed
        if (c->res != -ENOTCONN) fprintf(stderr, "nullfs: ring %d: %s\n", qid, strerror(-c->res));
        finish(c->res == -ENOTCONN ? 0 : 1);
      }
      atomic_fetch_add(&from_ring, 1);
      struct ring_entry *e = &ents[c->user_data];
      const struct fuse_in_header ih = *(const struct fuse_in_header *)e->head->in_out;
      uint64_t commit_id = e->head->ent.commit_id;
      int n = serve_locked(&ih, e->head->op_in, e->payload, out);
      if (n == NO_ANSWER) n = 0; // every ring request needs its commit
      struct fuse_out_header *oh = (void *)e->head->in_out;
      oh->len = (uint32_t)(sizeof *oh + (n > 0 ? n : 0));
      oh->error = n < 0 ? n : 0;
      oh->unique = ih.unique;
      if (n > 0) memcpy(e->payload, out, (size_t)n);
      e->head->ent.payload_sz = n > 0 ? (uint32_t)n : 0;
      queue_cmd(&r, FUSE_IO_URING_CMD_COMMIT_AND_FETCH, e, c->user_data, (uint16_t)qid,
                commit_id);
      answers++;
    }
    atomic_store_explicit((_Atomic unsigned *)r.cq_head, head, memory_order_release);
    enter(&r, answers, 1); // the answers go, and the wait for the next begins
  }
  return NULL;
}

// The kernel has a queue for every possible CPU (nr_cpu_ids) and holds every
// request until each has a ring registered.
static int possible_cpus(void) {
  char text[256] = "";
  FILE *f = fopen("/sys/devices/system/cpu/possible", "r");
  if (!f || !fgets(text, sizeof text, f)) {
    perror("nullfs: /sys/devices/system/cpu/possible");
    exit(1);
  }
  fclose(f);
  int last = 0;
  for (char *p = text; *p;) { // "0-3" or "0,2-5": the highest number
    if (*p < '0' || *p > '9') { p++; continue; }
    char *end;
    long v = strtol(p, &end, 10);
    if (v > last) last = (int)v;
    p = end;
  }
  return last + 1;
}

int main(int argc, char **argv) {
  if (argc < 3 || (strcmp(argv[2], "dev") && strcmp(argv[2], "uring"))) {
    fprintf(stderr, "usage: nullfs MOUNTPOINT dev|uring [TTL_SECONDS]\n");
    return 2;
  }
  mountpoint = argv[1];
  use_uring = !strcmp(argv[2], "uring");
  if (argc > 3) ttl = atof(argv[3]);
  names = calloc(SLOTS, sizeof *names);
  inodes = calloc(INODES, sizeof *inodes);
  if (!names || !inodes) { perror("nullfs: calloc"); return 1; }
  inodes[FUSE_ROOT_ID] = (struct inode){.mode = S_IFDIR | 0755, .nlink = 2};
  fuse_fd = open("/dev/fuse", O_RDWR | O_CLOEXEC);
  if (fuse_fd < 0) { perror("nullfs: /dev/fuse"); return 1; }
  char opts[128];
  snprintf(opts, sizeof opts, "fd=%d,rootmode=40000,user_id=0,group_id=0,default_permissions",
           fuse_fd);
  if (mount("nullfs", argv[1], "fuse.nullfs", MS_NOSUID | MS_NODEV, opts) < 0) {
    perror("nullfs: mount");
    return 1;
  }
  signal(SIGTERM, on_signal);
  signal(SIGINT, on_signal);
  pthread_t dev;
  pthread_create(&dev, NULL, dev_loop, NULL);
  if (use_uring) {
    // The rings can be registered once the kernel has the answer to INIT.
    while (!atomic_load(&initialized)) usleep(1000);
    usleep(20000);
    int n = possible_cpus();
    for (int q = 0; q < n; q++) {
      pthread_t t;
      pthread_create(&t, NULL, ring_loop, (void *)(intptr_t)q);
    }
    // Until every ring is registered the kernel holds every request. If the
    // probe is not answered within 10 s, nullfs unmounts and ends (the
    // probe's thread too: it waits killably), which ends the connection, so
    // nothing stays blocked on the mount.
    pthread_t p;
    pthread_create(&p, NULL, probe, NULL);
    for (int i = 0; i < 1000 && !atomic_load(&probed); i++) usleep(10000);
    if (!atomic_load(&probed)) {
      fprintf(stderr, "nullfs: the rings are not serving requests after 10 s\n");
      umount2(mountpoint, MNT_DETACH);
      _exit(3);
    }
  }
  pthread_join(dev, NULL);
  return 0;
}
