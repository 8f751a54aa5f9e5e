// gpt3d_C::shm_barrier(header, rank, round, timeout_s): the barrier of gpt3d/parallel/shared_memory.py.
//
// `header` is an int64 tensor in memory shared by the group's processes, one 64-byte line per rank: [arrived round,
// pid, 0...]. A rank publishes `round` with release order (its slot writes before it) and waits, with acquire order
// (the peers' slot writes after it), until every rank has published `round` or more. Waiting spins briefly (a
// round's skew between ranks is usually microseconds), then yields the core (ranks may outnumber cores), then sleeps.
// While sleeping it checks that every peer process is still alive, so a crashed peer is an error within ~0.1 s
// rather than a wait until the timeout. torch.ops calls drop the GIL, so other Python threads keep running.
#include <torch/extension.h>

#include <sched.h>
#include <time.h>

#include <chrono>
#include <cstdio>
#include <cstring>

#if defined(__x86_64__) || defined(_M_X64)
#include <immintrin.h>
#define GPT3D_CPU_RELAX() _mm_pause()
#else
#define GPT3D_CPU_RELAX() ((void)0)
#endif

namespace gpt3d {
namespace {

constexpr int64_t kLine = 8;  // int64s per rank: its own cache line, so ranks never write the same line
constexpr uint64_t kSpins = 4096;
constexpr uint64_t kYields = 16384;

// Alive = /proc/<pid>/stat exists and the process is not a zombie (a dead rank its launcher has not reaped yet).
bool process_alive(int64_t pid) {
  char path[64];
  std::snprintf(path, sizeof path, "/proc/%lld/stat", static_cast<long long>(pid));
  std::FILE* f = std::fopen(path, "r");
  if (f == nullptr) return false;
  char buf[512];
  size_t n = std::fread(buf, 1, sizeof buf - 1, f);
  std::fclose(f);
  buf[n] = 0;
  const char* close = std::strrchr(buf, ')');  // the command name may hold spaces and parentheses
  if (close == nullptr || close[1] == 0 || close[2] == 0) return false;
  return close[2] != 'Z' && close[2] != 'X';
}

void shm_barrier(const at::Tensor& header, int64_t rank, int64_t round, double timeout_s) {
  TORCH_CHECK(header.device().is_cpu() && header.scalar_type() == at::kLong && header.is_contiguous(),
              "shm_barrier: header must be a contiguous int64 CPU tensor");
  TORCH_CHECK(header.numel() % kLine == 0, "shm_barrier: header holds ", header.numel(),
              " int64s, not a whole number of ", kLine, "-int64 lines");
  const int64_t size = header.numel() / kLine;
  TORCH_CHECK(rank >= 0 && rank < size, "shm_barrier: rank ", rank, " outside a group of ", size);
  int64_t* lines = header.data_ptr<int64_t>();
  __atomic_store_n(&lines[rank * kLine], round, __ATOMIC_RELEASE);

  const auto start = std::chrono::steady_clock::now();
  uint64_t waits = 0;
  for (int64_t peer = 0; peer < size; ++peer) {
    while (__atomic_load_n(&lines[peer * kLine], __ATOMIC_ACQUIRE) < round) {
      ++waits;
      if (waits < kSpins) {
        GPT3D_CPU_RELAX();
        continue;
      }
      if (waits < kSpins + kYields) {
        sched_yield();
        continue;
      }
      const timespec nap{0, 50 * 1000};
      nanosleep(&nap, nullptr);
      if (waits % 256 != 0) continue;  // every ~20-40 ms: is the peer still there, and is time up?
      const int64_t pid = __atomic_load_n(&lines[peer * kLine + 1], __ATOMIC_RELAXED);
      const double waited = std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
      TORCH_CHECK(process_alive(pid), "shared-memory collective: rank ", peer, " of the group (pid ", pid,
                  ") exited while rank ", rank, " waited for it in round ", round);
      TORCH_CHECK(waited < timeout_s, "Timed out after ", waited, " s in a shared-memory collective: rank ", rank,
                  " of the group waited for rank ", peer, " in round ", round, " (parallel.comm_timeout_s=",
                  timeout_s, ")");
    }
  }
}

}  // namespace

TORCH_LIBRARY_FRAGMENT(gpt3d_C, m) {
  m.def("shm_barrier(Tensor header, int rank, int round, float timeout_s) -> ()", &shm_barrier);
}

}  // namespace gpt3d
