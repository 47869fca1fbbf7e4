// CUDA kernels of siman_normalize (DESIGN.md §3; notation in siman_normalize.h): the
// computation of siman_normalize_cpu.cpp.
//
// Flash-attention style with the 2C-wide value V = [μ, σ] (interleaved per channel: row 2c
// of V is μ_c, row 2c + 1 is σ_c). Small kernels first turn the inputs into ĉ, key and V
// (the local statistics are a count-aware box filter: no unfold copy). The forward kernel
// runs one block per (image, tile of kRows content positions): it sweeps the style
// positions in shared-memory tiles of kCols keys with an online softmax and keeps the
// aligned statistics [μ̂, σ̂] of its rows in shared memory. Where 2C values do not fit, a
// third grid dimension splits the channels into groups (each recomputes the scores).
//
// The backward never stores the attention: every tile is recomputed from the saved
// log-sum-exp. A row kernel (one block per image and content tile) computes
// D = rowsum(A ⊙ dA) in a first sweep over the keys and d ĉ in a second; a column kernel
// (one block per image and tile of style positions) sweeps the content positions for
// d key and d V. Each block owns the gradient rows it writes, so there are no atomics and
// the results are deterministic. Two last kernels go through the instance norms and the
// local statistics. Everything accumulates in float32 (float64 for float64 inputs).
#include "siman_normalize.h"

#include <ATen/Dispatch.h>
#include <ATen/OpMathType.h>
#include <ATen/core/Tensor.h>
#include <ATen/ops/empty.h>
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#include <torch/library.h>

#include <algorithm>
#include <cstdint>
#include <limits>
#include <utility>

namespace seqclr_ext {
namespace {

constexpr int kThreads = 256;
constexpr int kWarps = kThreads / 32;
constexpr int kRows = 16;   // rows a block owns: content positions (row kernels), keys (column)
constexpr int kCols = 64;   // columns of a tile: keys (row kernels), content positions (column)
constexpr int kChunk = 16;  // reduction steps per shared-memory chunk of a tile product
constexpr int kValues = 32; // value rows per shared-memory chunk of an accumulation
constexpr int kPer = kRows * kCols / kThreads;  // tile entries per thread
constexpr int kLd = kCols + 1;                  // odd row pitch: conflict-free column reads
static_assert(kRows * kCols % kThreads == 0 && kCols % 32 == 0, "tile shape");

// The shared memory of the attention kernels, in acc_t elements: fixed tiles, then the
// accumulators [kRows][width].
constexpr int64_t kFixedElems = int64_t(kChunk) * kRows + int64_t(kChunk) * kCols +
                                2 * int64_t(kRows) * kLd + int64_t(kValues) * kLd + 4 * kRows;

template <typename acc_t>
struct Shared {
  acc_t* xs;   // [kChunk][kRows] operand chunk of the rows' side
  acc_t* ys;   // [kChunk][kCols] operand chunk of the columns' side
  acc_t* t0;   // [kRows][kLd] tile (scores, probabilities, dS)
  acc_t* t1;   // [kRows][kLd] second tile (A in the backward)
  acc_t* vs;   // [kValues][kLd] value chunk
  acc_t* row;  // [4][kRows] per-row statistics
  acc_t* acc;  // [kRows][width] accumulators

  __device__ explicit Shared(unsigned char* raw) {
    acc_t* p = reinterpret_cast<acc_t*>(raw);
    xs = p;
    ys = xs + kChunk * kRows;
    t0 = ys + kChunk * kCols;
    t1 = t0 + kRows * kLd;
    vs = t1 + kRows * kLd;
    row = vs + kValues * kLd;
    acc = row + 4 * kRows;
  }
};

// Per-image operands in workspaces (acc_t, contiguous): ĉ [B, C, N], key [B, C, L],
// V [B, 2C, L]; the channel group is [c0, c0 + group) with group channels per block.
template <typename acc_t>
struct Operands {
  const acc_t* ch;
  const acc_t* key;
  const acc_t* V;
  int64_t C, N, L, tiles, group;
};

template <typename T>
__device__ __forceinline__ T warp_sum(T v) {
  for (int o = 16; o > 0; o >>= 1) v += __shfl_xor_sync(0xffffffffu, v, o);
  return v;
}

template <typename T>
__device__ __forceinline__ T warp_max(T v) {
  for (int o = 16; o > 0; o >>= 1) {
    const T u = __shfl_xor_sync(0xffffffffu, v, o);
    v = u > v ? u : v;
  }
  return v;
}

// This thread's entries of the tile product out[u] = Σ_k X[k][x0 + i] · Y[k][y0 + j] with
// (i, j) = ((tid + u·kThreads) / kCols, (tid + u·kThreads) % kCols); X is [K, nx] and Y is
// [K, ny] row-major, positions past nx / ny read as zero. Called by the whole block.
template <typename acc_t>
__device__ void tile_product(acc_t (&out)[kPer], const acc_t* __restrict__ X, int64_t nx,
                             int64_t x0, const acc_t* __restrict__ Y, int64_t ny, int64_t y0,
                             int64_t K, const Shared<acc_t>& sm) {
#pragma unroll
  for (int u = 0; u < kPer; ++u) out[u] = acc_t(0);
  for (int64_t k0 = 0; k0 < K; k0 += kChunk) {
    __syncthreads();  // the previous chunk (or the caller's use of the tiles) is done
    for (int e = threadIdx.x; e < kChunk * kRows; e += kThreads) {
      const int64_t k = k0 + e / kRows, x = x0 + e % kRows;
      sm.xs[e] = k < K && x < nx ? X[k * nx + x] : acc_t(0);
    }
    for (int e = threadIdx.x; e < kChunk * kCols; e += kThreads) {
      const int64_t k = k0 + e / kCols, y = y0 + e % kCols;
      sm.ys[e] = k < K && y < ny ? Y[k * ny + y] : acc_t(0);
    }
    __syncthreads();
#pragma unroll 4
    for (int kk = 0; kk < kChunk; ++kk) {
#pragma unroll
      for (int u = 0; u < kPer; ++u) {
        const int e = threadIdx.x + u * kThreads;
        out[u] += sm.xs[kk * kRows + e / kCols] * sm.ys[kk * kCols + e % kCols];
      }
    }
  }
}

// acc[i][w] = acc[i][w] · scale[i] (no scaling when scale is null) + Σ_j T[i][j] · Y_w[y0 + j]
// for w < nw, where T is a [kRows][kLd] tile and Y_w = Y + w · pitch is row w of the value;
// positions past ny read as zero. Each entry is updated by one fixed thread. Called by the
// whole block; reads T only after a barrier.
template <typename acc_t>
__device__ void accumulate(acc_t* acc, int64_t width, const acc_t* T, const acc_t* scale,
                           const acc_t* __restrict__ Y, int64_t pitch, int64_t nw, int64_t ny,
                           int64_t y0, const Shared<acc_t>& sm) {
  for (int64_t w0 = 0; w0 < nw; w0 += kValues) {
    __syncthreads();  // T is written and the previous chunk is consumed
    for (int e = threadIdx.x; e < kValues * kCols; e += kThreads) {
      const int64_t w = w0 + e / kCols, y = y0 + e % kCols;
      sm.vs[(e / kCols) * kLd + e % kCols] = w < nw && y < ny ? Y[w * pitch + y] : acc_t(0);
    }
    __syncthreads();
    for (int e = threadIdx.x; e < kRows * kValues; e += kThreads) {
      const int i = e / kValues, v = e % kValues;
      if (w0 + v >= nw) continue;
      acc_t s = 0;
#pragma unroll 8
      for (int j = 0; j < kCols; ++j) s += T[i * kLd + j] * sm.vs[v * kLd + j];
      acc_t& a = acc[i * width + w0 + v];
      a = (scale ? a * scale[i] : a) + s;
    }
  }
}

template <typename acc_t>
__device__ void zero(acc_t* p, int64_t n) {
  for (int64_t e = threadIdx.x; e < n; e += kThreads) p[e] = acc_t(0);
}

// Mean and rstd = 1/sqrt(var + eps) of each of the rows [B·C, n] of x, one warp per row,
// into stats [B, 2, C].
template <typename scalar_t>
__global__ void __launch_bounds__(kThreads)
    instance_stats_kernel(const scalar_t* __restrict__ x, int64_t rows, int64_t n, int64_t C,
                          double eps, at::opmath_type<scalar_t>* __restrict__ stats) {
  using acc_t = at::opmath_type<scalar_t>;
  const int64_t r = int64_t(blockIdx.x) * kWarps + threadIdx.x / 32;
  if (r >= rows) return;  // whole warps leave
  const int lane = threadIdx.x % 32;
  const scalar_t* row = x + r * n;
  acc_t sum = 0;
  for (int64_t i = lane; i < n; i += 32) sum += static_cast<acc_t>(row[i]);
  const acc_t mean = warp_sum(sum) / static_cast<acc_t>(n);
  acc_t sq = 0;
  for (int64_t i = lane; i < n; i += 32) {
    const acc_t d = static_cast<acc_t>(row[i]) - mean;
    sq += d * d;
  }
  const acc_t var = warp_sum(sq) / static_cast<acc_t>(n);
  if (lane == 0) {
    const int64_t b = r / C, c = r % C;
    stats[b * 2 * C + c] = mean;
    stats[b * 2 * C + C + c] = acc_t(1) / std::sqrt(var + static_cast<acc_t>(eps));
  }
}

struct Dims {
  int64_t B, C, H, W, Hs, Ws, N, L, half;
};

// ĉ = (c − mean) · rstd, key = (s − mean) · rstd / √C and V = [μ, σ] (interleaved), from
// the contiguous inputs and their stats.
template <typename scalar_t>
__global__ void __launch_bounds__(kThreads)
    prepare_kernel(const scalar_t* __restrict__ content, const scalar_t* __restrict__ style,
                   const at::opmath_type<scalar_t>* __restrict__ content_stats,
                   const at::opmath_type<scalar_t>* __restrict__ style_stats, Dims d, double eps,
                   at::opmath_type<scalar_t>* __restrict__ ch,
                   at::opmath_type<scalar_t>* __restrict__ key,
                   at::opmath_type<scalar_t>* __restrict__ V) {
  using acc_t = at::opmath_type<scalar_t>;
  const int64_t n_content = d.B * d.C * d.N, total = n_content + d.B * d.C * d.L;
  const acc_t inv_sqrt_c = acc_t(1) / std::sqrt(static_cast<acc_t>(d.C));
  for (int64_t e = int64_t(blockIdx.x) * kThreads + threadIdx.x; e < total;
       e += int64_t(gridDim.x) * kThreads) {
    if (e < n_content) {
      const int64_t bc = e / d.N, b = bc / d.C, c = bc % d.C;
      const acc_t* st = content_stats + b * 2 * d.C;
      ch[e] = (static_cast<acc_t>(content[e]) - st[c]) * st[d.C + c];
      continue;
    }
    const int64_t f = e - n_content, bc = f / d.L, q = f % d.L, b = bc / d.C, c = bc % d.C;
    const acc_t* st = style_stats + b * 2 * d.C;
    key[f] = (static_cast<acc_t>(style[f]) - st[c]) * (st[d.C + c] * inv_sqrt_c);
    acc_t mu, sigma;
    local_stats<acc_t>(style + bc * d.L, d.Hs, d.Ws, d.half, q / d.Ws, q % d.Ws,
                       static_cast<acc_t>(eps), mu, sigma);
    V[(b * 2 * d.C + 2 * c) * d.L + q] = mu;
    V[(b * 2 * d.C + 2 * c + 1) * d.L + q] = sigma;
  }
}

// d loss / d [μ̂, σ̂] (interleaved like V): dO [B, 2C, N] = [g, g ⊙ ĉ].
template <typename scalar_t>
__global__ void __launch_bounds__(kThreads)
    grad_prepare_kernel(const scalar_t* __restrict__ grad_out,
                        const at::opmath_type<scalar_t>* __restrict__ ch, int64_t total,
                        int64_t N, at::opmath_type<scalar_t>* __restrict__ dO) {
  using acc_t = at::opmath_type<scalar_t>;
  for (int64_t e = int64_t(blockIdx.x) * kThreads + threadIdx.x; e < total;
       e += int64_t(gridDim.x) * kThreads) {
    const int64_t bc = e / N, p = e % N;
    const acc_t g = static_cast<acc_t>(grad_out[e]);
    dO[2 * bc * N + p] = g;
    dO[(2 * bc + 1) * N + p] = g * ch[e];
  }
}

// Block → (image, tile of kRows rows, channel group [c0, c0 + cw)).
struct BlockTile {
  int64_t b, r0, c0, cw;
};

template <typename acc_t>
__device__ BlockTile block_tile(const Operands<acc_t>& o) {
  const int64_t b = blockIdx.x / o.tiles, c0 = int64_t(blockIdx.z) * o.group;
  return {b, (blockIdx.x % o.tiles) * kRows, c0, o.C - c0 < o.group ? o.C - c0 : o.group};
}

// Image b's ĉ [C, N], key [C, L] and V [2C, L].
template <typename acc_t>
struct ImageOperands {
  const acc_t* ch;
  const acc_t* key;
  const acc_t* V;
};

template <typename acc_t>
__device__ ImageOperands<acc_t> image_operands(const Operands<acc_t>& o, int64_t b) {
  return {o.ch + b * o.C * o.N, o.key + b * o.C * o.L, o.V + b * 2 * o.C * o.L};
}

// Forward: out = σ̂ ⊙ ĉ + μ̂ and lse for one tile of content positions, online softmax over
// the key tiles; accumulators [kRows][2·group] (interleaved μ̂, σ̂).
template <typename scalar_t>
__global__ void __launch_bounds__(kThreads)
    forward_kernel(Operands<at::opmath_type<scalar_t>> o, scalar_t* __restrict__ out,
                   at::opmath_type<scalar_t>* __restrict__ lse) {
  using acc_t = at::opmath_type<scalar_t>;
  extern __shared__ __align__(16) unsigned char smem_raw[];
  const Shared<acc_t> sm(smem_raw);
  const BlockTile t = block_tile(o);
  const auto [ch, key, V] = image_operands(o, t.b);
  acc_t* m = sm.row;
  acc_t* l = sm.row + kRows;
  acc_t* scale = sm.row + 2 * kRows;
  const int64_t width = 2 * o.group;
  zero(sm.acc, kRows * width);
  for (int i = threadIdx.x; i < kRows; i += kThreads) {
    m[i] = -std::numeric_limits<acc_t>::infinity();
    l[i] = acc_t(0);
  }
  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
  for (int64_t q0 = 0; q0 < o.L; q0 += kCols) {
    acc_t s[kPer];
    tile_product(s, ch, o.N, t.r0, key, o.L, q0, o.C, sm);
#pragma unroll
    for (int u = 0; u < kPer; ++u) {
      const int e = threadIdx.x + u * kThreads, i = e / kCols, j = e % kCols;
      sm.t0[i * kLd + j] = q0 + j < o.L ? s[u] : -std::numeric_limits<acc_t>::infinity();
    }
    __syncthreads();
    for (int i = warp; i < kRows; i += kWarps) {  // one warp per row
      acc_t* row = sm.t0 + i * kLd;
      acc_t tile_max = -std::numeric_limits<acc_t>::infinity();
      for (int j = lane; j < kCols; j += 32) tile_max = row[j] > tile_max ? row[j] : tile_max;
      tile_max = warp_max(tile_max);
      const acc_t m_new = m[i] > tile_max ? m[i] : tile_max;  // finite: key q0 exists
      acc_t sum = 0;
      for (int j = lane; j < kCols; j += 32) {
        row[j] = std::exp(row[j] - m_new);  // masked keys: exp(-inf) = 0
        sum += row[j];
      }
      sum = warp_sum(sum);
      __syncwarp();
      if (lane == 0) {
        scale[i] = std::exp(m[i] - m_new);  // 0 on the first tile (m = -inf)
        l[i] = l[i] * scale[i] + sum;
        m[i] = m_new;
      }
    }
    accumulate(sm.acc, width, sm.t0, scale, V + 2 * t.c0 * o.L, o.L, 2 * t.cw, o.L, q0, sm);
  }
  __syncthreads();
  scalar_t* out_b = out + t.b * o.C * o.N;
  for (int64_t e = threadIdx.x; e < kRows * t.cw; e += kThreads) {
    const int64_t i = e % kRows, c = e / kRows, p = t.r0 + i;
    if (p >= o.N) continue;
    const acc_t inv_l = acc_t(1) / l[i];
    const acc_t mu_hat = sm.acc[i * width + 2 * c] * inv_l;
    const acc_t sigma_hat = sm.acc[i * width + 2 * c + 1] * inv_l;
    const int64_t idx = (t.c0 + c) * o.N + p;
    out_b[idx] = static_cast<scalar_t>(sigma_hat * ch[idx] + mu_hat);
  }
  if (blockIdx.z == 0) {
    for (int i = threadIdx.x; i < kRows; i += kThreads) {
      if (t.r0 + i < o.N) lse[t.b * o.N + t.r0 + i] = m[i] + std::log(l[i]);
    }
  }
}

// Backward, per tile of content positions: D = rowsum(A ⊙ dA) (first sweep over the keys),
// then d ĉ = dS · keyᵀ + g ⊙ σ̂ with dS = A ⊙ (dA − D) (second sweep); accumulators
// [kRows][group] for dS · keyᵀ, then [kRows][group] for σ̂.
template <typename scalar_t>
__global__ void __launch_bounds__(kThreads)
    backward_rows_kernel(Operands<at::opmath_type<scalar_t>> o,
                         const at::opmath_type<scalar_t>* __restrict__ dO,
                         const at::opmath_type<scalar_t>* __restrict__ lse,
                         at::opmath_type<scalar_t>* __restrict__ D,
                         at::opmath_type<scalar_t>* __restrict__ d_ch) {
  using acc_t = at::opmath_type<scalar_t>;
  extern __shared__ __align__(16) unsigned char smem_raw[];
  const Shared<acc_t> sm(smem_raw);
  const BlockTile t = block_tile(o);
  const auto [ch, key, V] = image_operands(o, t.b);
  const acc_t* dO_b = dO + t.b * 2 * o.C * o.N;
  acc_t* row_lse = sm.row;
  acc_t* row_D = sm.row + kRows;
  acc_t* acc_dch = sm.acc;
  acc_t* acc_sigma = sm.acc + kRows * o.group;
  zero(sm.acc, 2 * kRows * o.group);
  for (int i = threadIdx.x; i < kRows; i += kThreads) {
    row_lse[i] = t.r0 + i < o.N ? lse[t.b * o.N + t.r0 + i] : acc_t(0);
    row_D[i] = acc_t(0);
  }
  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
  acc_t s[kPer], da[kPer];
  for (int64_t q0 = 0; q0 < o.L; q0 += kCols) {  // D
    tile_product(s, ch, o.N, t.r0, key, o.L, q0, o.C, sm);       // S
    tile_product(da, dO_b, o.N, t.r0, V, o.L, q0, 2 * o.C, sm);  // dA = dO · V
#pragma unroll
    for (int u = 0; u < kPer; ++u) {
      const int e = threadIdx.x + u * kThreads, i = e / kCols, j = e % kCols;
      const bool valid = t.r0 + i < o.N && q0 + j < o.L;
      sm.t0[i * kLd + j] = valid ? std::exp(s[u] - row_lse[i]) * da[u] : acc_t(0);
    }
    __syncthreads();
    for (int i = warp; i < kRows; i += kWarps) {
      acc_t sum = 0;
      for (int j = lane; j < kCols; j += 32) sum += sm.t0[i * kLd + j];
      sum = warp_sum(sum);
      if (lane == 0) row_D[i] += sum;
    }
  }
  for (int64_t q0 = 0; q0 < o.L; q0 += kCols) {  // d ĉ and σ̂
    tile_product(s, ch, o.N, t.r0, key, o.L, q0, o.C, sm);       // S
    tile_product(da, dO_b, o.N, t.r0, V, o.L, q0, 2 * o.C, sm);  // dA = dO · V
#pragma unroll
    for (int u = 0; u < kPer; ++u) {
      const int e = threadIdx.x + u * kThreads, i = e / kCols, j = e % kCols;
      const bool valid = t.r0 + i < o.N && q0 + j < o.L;
      const acc_t a = valid ? std::exp(s[u] - row_lse[i]) : acc_t(0);
      sm.t1[i * kLd + j] = a;
      sm.t0[i * kLd + j] = a * (da[u] - row_D[i]);
    }
    accumulate(acc_dch, o.group, sm.t0, static_cast<const acc_t*>(nullptr), key + t.c0 * o.L,
               o.L, t.cw, o.L, q0, sm);
    accumulate(acc_sigma, o.group, sm.t1, static_cast<const acc_t*>(nullptr),
               V + (2 * t.c0 + 1) * o.L, 2 * o.L, t.cw, o.L, q0, sm);
  }
  __syncthreads();
  for (int64_t e = threadIdx.x; e < kRows * t.cw; e += kThreads) {
    const int64_t i = e % kRows, c = e / kRows, p = t.r0 + i;
    if (p >= o.N) continue;
    const acc_t g = dO_b[2 * (t.c0 + c) * o.N + p];
    d_ch[(t.b * o.C + t.c0 + c) * o.N + p] =
        acc_dch[i * o.group + c] + g * acc_sigma[i * o.group + c];
  }
  if (blockIdx.z == 0) {
    for (int i = threadIdx.x; i < kRows; i += kThreads) {
      if (t.r0 + i < o.N) D[t.b * o.N + t.r0 + i] = row_D[i];
    }
  }
}

// Backward, per tile of style positions (o.tiles counts key tiles here): d key = dSᵀ ĉ and
// d V = Aᵀ dO, sweeping the content positions; accumulators [kRows][group] for d key, then
// [kRows][2·group] for d V (interleaved like V).
template <typename scalar_t>
__global__ void __launch_bounds__(kThreads)
    backward_cols_kernel(Operands<at::opmath_type<scalar_t>> o,
                         const at::opmath_type<scalar_t>* __restrict__ dO,
                         const at::opmath_type<scalar_t>* __restrict__ lse,
                         const at::opmath_type<scalar_t>* __restrict__ D,
                         at::opmath_type<scalar_t>* __restrict__ d_key,
                         at::opmath_type<scalar_t>* __restrict__ d_V) {
  using acc_t = at::opmath_type<scalar_t>;
  extern __shared__ __align__(16) unsigned char smem_raw[];
  const Shared<acc_t> sm(smem_raw);
  const BlockTile t = block_tile(o);
  const auto [ch, key, V] = image_operands(o, t.b);
  const acc_t* dO_b = dO + t.b * 2 * o.C * o.N;
  const acc_t* lse_b = lse + t.b * o.N;
  const acc_t* D_b = D + t.b * o.N;
  acc_t* acc_dkey = sm.acc;
  acc_t* acc_dV = sm.acc + kRows * o.group;
  zero(sm.acc, 3 * kRows * o.group);
  acc_t s[kPer], da[kPer];
  for (int64_t p0 = 0; p0 < o.N; p0 += kCols) {
    tile_product(s, key, o.L, t.r0, ch, o.N, p0, o.C, sm);       // Sᵀ
    tile_product(da, V, o.L, t.r0, dO_b, o.N, p0, 2 * o.C, sm);  // dAᵀ
#pragma unroll
    for (int u = 0; u < kPer; ++u) {
      const int e = threadIdx.x + u * kThreads, i = e / kCols, j = e % kCols;
      const bool valid = t.r0 + i < o.L && p0 + j < o.N;
      const acc_t a = valid ? std::exp(s[u] - lse_b[p0 + j]) : acc_t(0);
      sm.t1[i * kLd + j] = a;
      sm.t0[i * kLd + j] = valid ? a * (da[u] - D_b[p0 + j]) : acc_t(0);
    }
    accumulate(acc_dkey, o.group, sm.t0, static_cast<const acc_t*>(nullptr), ch + t.c0 * o.N,
               o.N, t.cw, o.N, p0, sm);
    accumulate(acc_dV, 2 * o.group, sm.t1, static_cast<const acc_t*>(nullptr),
               dO_b + 2 * t.c0 * o.N, o.N, 2 * t.cw, o.N, p0, sm);
  }
  __syncthreads();
  for (int64_t e = threadIdx.x; e < kRows * 3 * t.cw; e += kThreads) {
    const int64_t i = e % kRows, w = e / kRows, q = t.r0 + i;
    if (q >= o.L) continue;
    if (w < t.cw) {
      d_key[(t.b * o.C + t.c0 + w) * o.L + q] = acc_dkey[i * o.group + w];
    } else {
      const int64_t v = w - t.cw;
      d_V[(t.b * 2 * o.C + 2 * t.c0 + v) * o.L + q] = acc_dV[i * 2 * o.group + v];
    }
  }
}

// grad_content = rstd (d ĉ − mean(d ĉ) − ĉ mean(d ĉ ⊙ ĉ)), one warp per (image, channel).
template <typename scalar_t>
__global__ void __launch_bounds__(kThreads)
    content_grad_kernel(const at::opmath_type<scalar_t>* __restrict__ d_ch,
                        const at::opmath_type<scalar_t>* __restrict__ ch,
                        const at::opmath_type<scalar_t>* __restrict__ stats, int64_t rows,
                        int64_t C, int64_t N, scalar_t* __restrict__ grad) {
  using acc_t = at::opmath_type<scalar_t>;
  const int64_t r = int64_t(blockIdx.x) * kWarps + threadIdx.x / 32;
  if (r >= rows) return;
  const int lane = threadIdx.x % 32;
  const acc_t* dx = d_ch + r * N;
  const acc_t* x = ch + r * N;
  acc_t s1 = 0, s2 = 0;
  for (int64_t i = lane; i < N; i += 32) {
    s1 += dx[i];
    s2 += dx[i] * x[i];
  }
  const acc_t m1 = warp_sum(s1) / static_cast<acc_t>(N), m2 = warp_sum(s2) / static_cast<acc_t>(N);
  const acc_t rstd = stats[(r / C) * 2 * C + C + r % C];
  for (int64_t i = lane; i < N; i += 32) {
    grad[r * N + i] = static_cast<scalar_t>(rstd * (dx[i] - m1 - x[i] * m2));
  }
}

// grad_style = rstd ((d key − mean(d key)) / √C − √C key mean(d key ⊙ key)) plus the
// gradient through the local statistics, one warp per (image, channel).
template <typename scalar_t>
__global__ void __launch_bounds__(kThreads)
    style_grad_kernel(const at::opmath_type<scalar_t>* __restrict__ d_key,
                      const at::opmath_type<scalar_t>* __restrict__ key,
                      const at::opmath_type<scalar_t>* __restrict__ V,
                      const at::opmath_type<scalar_t>* __restrict__ d_V,
                      const scalar_t* __restrict__ style,
                      const at::opmath_type<scalar_t>* __restrict__ stats, Dims d,
                      scalar_t* __restrict__ grad) {
  using acc_t = at::opmath_type<scalar_t>;
  const int64_t r = int64_t(blockIdx.x) * kWarps + threadIdx.x / 32;
  if (r >= d.B * d.C) return;
  const int lane = threadIdx.x % 32;
  const int64_t b = r / d.C, c = r % d.C, L = d.L;
  const acc_t* dx = d_key + r * L;
  const acc_t* x = key + r * L;
  acc_t s1 = 0, s2 = 0;
  for (int64_t i = lane; i < L; i += 32) {
    s1 += dx[i];
    s2 += dx[i] * x[i];
  }
  const acc_t m1 = warp_sum(s1) / static_cast<acc_t>(L), m2 = warp_sum(s2) / static_cast<acc_t>(L);
  const acc_t sqrt_c = std::sqrt(static_cast<acc_t>(d.C));
  const acc_t rstd = stats[b * 2 * d.C + d.C + c];
  const int64_t mu = (b * 2 * d.C + 2 * c) * L, sigma = mu + L;
  for (int64_t q = lane; q < L; q += 32) {
    const acc_t through_norm = rstd * ((dx[q] - m1) / sqrt_c - sqrt_c * x[q] * m2);
    const acc_t through_stats = local_stats_grad<acc_t>(
        style + r * L, V + mu, V + sigma, d_V + mu, d_V + sigma, d.Hs, d.Ws, d.half, q / d.Ws,
        q % d.Ws);
    grad[r * L + q] = static_cast<scalar_t>(through_norm + through_stats);
  }
}

// Blocks of an elementwise grid-stride loop over n items.
unsigned int stride_blocks(int64_t n) {
  return static_cast<unsigned int>(std::min<int64_t>((n + kThreads - 1) / kThreads, 65535 * 8));
}

Dims dims_of(const at::Tensor& content, const at::Tensor& style, int64_t kernel_size) {
  return {content.size(0), content.size(1), content.size(2),
          content.size(3), style.size(2),   style.size(3),
          content.size(2) * content.size(3), style.size(2) * style.size(3), kernel_size / 2};
}

// The largest channel group whose accumulators (per_channel acc_t values per row) fit the
// device's shared memory next to the fixed tiles; the block's shared-memory bytes.
template <typename acc_t>
std::pair<int64_t, size_t> channel_group(int64_t C, int64_t per_channel) {
  int device = 0, optin = 0;
  C10_CUDA_CHECK(cudaGetDevice(&device));
  C10_CUDA_CHECK(cudaDeviceGetAttribute(&optin, cudaDevAttrMaxSharedMemoryPerBlockOptin, device));
  const int64_t fixed = kFixedElems * int64_t(sizeof(acc_t));
  const int64_t per = int64_t(kRows) * per_channel * int64_t(sizeof(acc_t));
  const int64_t group = std::min<int64_t>(C, (int64_t(optin) - fixed) / per);
  TORCH_CHECK(group >= 1, "siman_normalize: the GPU's ", optin,
              " bytes of shared memory per block are too few");
  return {group, static_cast<size_t>(fixed + group * per)};
}

// Launches an attention kernel with `bytes` of dynamic shared memory (opting in above the
// default 48 KiB) on a grid of (tiles · B, 1, channel groups).
template <typename Kernel, typename... Args>
void launch_tiles(Kernel kernel, int64_t tiles, int64_t B, int64_t C, int64_t group, size_t bytes,
                  cudaStream_t stream, Args... args) {
  C10_CUDA_CHECK(cudaFuncSetAttribute(reinterpret_cast<const void*>(kernel),
                                      cudaFuncAttributeMaxDynamicSharedMemorySize,
                                      static_cast<int>(bytes)));
  const dim3 grid(grid_size(tiles * B, 1), 1, grid_size(C, group));
  TORCH_CHECK(grid.z <= 65535, "siman_normalize: too many channel groups");
  kernel<<<grid, kThreads, bytes, stream>>>(args...);
  C10_CUDA_KERNEL_LAUNCH_CHECK();
}

// Stats (when `fresh`) and the workspaces ĉ, key, V of both passes.
template <typename scalar_t>
void prepare(const at::Tensor& content, const at::Tensor& style, const Dims& d, double eps,
             bool fresh, at::Tensor& content_stats, at::Tensor& style_stats, at::Tensor& ch,
             at::Tensor& key, at::Tensor& V, cudaStream_t stream) {
  using acc_t = at::opmath_type<scalar_t>;
  if (fresh) {
    instance_stats_kernel<scalar_t><<<grid_size(d.B * d.C, kWarps), kThreads, 0, stream>>>(
        content.const_data_ptr<scalar_t>(), d.B * d.C, d.N, d.C, eps,
        content_stats.mutable_data_ptr<acc_t>());
    C10_CUDA_KERNEL_LAUNCH_CHECK();
    instance_stats_kernel<scalar_t><<<grid_size(d.B * d.C, kWarps), kThreads, 0, stream>>>(
        style.const_data_ptr<scalar_t>(), d.B * d.C, d.L, d.C, eps,
        style_stats.mutable_data_ptr<acc_t>());
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  }
  prepare_kernel<scalar_t><<<stride_blocks(d.B * d.C * (d.N + d.L)), kThreads, 0, stream>>>(
      content.const_data_ptr<scalar_t>(), style.const_data_ptr<scalar_t>(),
      content_stats.const_data_ptr<acc_t>(), style_stats.const_data_ptr<acc_t>(), d, eps,
      ch.mutable_data_ptr<acc_t>(), key.mutable_data_ptr<acc_t>(), V.mutable_data_ptr<acc_t>());
  C10_CUDA_KERNEL_LAUNCH_CHECK();
}

std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor> siman_normalize_cuda(
    const at::Tensor& content, const at::Tensor& style, int64_t kernel_size, double eps) {
  check_siman_normalize_args(content, style, kernel_size, eps);
  const c10::cuda::CUDAGuard guard(content.device());
  const Dims d = dims_of(content, style, kernel_size);
  const auto acc = content.options().dtype(acc_dtype(content.scalar_type()));
  at::Tensor out = at::empty(content.sizes(), content.options());
  at::Tensor lse = at::empty({d.B, d.N}, acc);
  at::Tensor content_stats = at::empty({d.B, 2, d.C}, acc);
  at::Tensor style_stats = at::empty({d.B, 2, d.C}, acc);
  if (d.B == 0) return {out, lse, content_stats, style_stats};
  const at::Tensor c = content.contiguous(), s = style.contiguous();
  at::Tensor ch = at::empty({d.B, d.C, d.N}, acc), key = at::empty({d.B, d.C, d.L}, acc);
  at::Tensor V = at::empty({d.B, 2 * d.C, d.L}, acc);
  const cudaStream_t stream = c10::cuda::getCurrentCUDAStream();
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, content.scalar_type(),
                                  "siman_normalize_cuda", [&] {
    using acc_t = at::opmath_type<scalar_t>;
    prepare<scalar_t>(c, s, d, eps, /*fresh=*/true, content_stats, style_stats, ch, key, V,
                      stream);
    const auto [group, bytes] = channel_group<acc_t>(d.C, 2);
    const int64_t tiles = (d.N + kRows - 1) / kRows;
    const Operands<acc_t> o{ch.const_data_ptr<acc_t>(), key.const_data_ptr<acc_t>(),
                            V.const_data_ptr<acc_t>(), d.C, d.N, d.L, tiles, group};
    launch_tiles(forward_kernel<scalar_t>, tiles, d.B, d.C, group, bytes, stream, o,
                 out.mutable_data_ptr<scalar_t>(), lse.mutable_data_ptr<acc_t>());
  });
  return {out, lse, content_stats, style_stats};
}

std::tuple<at::Tensor, at::Tensor> siman_normalize_backward_cuda(
    const at::Tensor& grad_out, const at::Tensor& content, const at::Tensor& style,
    const at::Tensor& lse, const at::Tensor& content_stats, const at::Tensor& style_stats,
    int64_t kernel_size, double eps) {
  check_siman_normalize_backward_args(grad_out, content, style, lse, content_stats, style_stats,
                                      kernel_size, eps);
  const c10::cuda::CUDAGuard guard(content.device());
  const Dims d = dims_of(content, style, kernel_size);
  const auto acc = lse.options();
  at::Tensor grad_content = at::empty(content.sizes(), content.options());
  at::Tensor grad_style = at::empty(style.sizes(), style.options());
  if (d.B == 0) return {grad_content, grad_style};
  const at::Tensor c = content.contiguous(), s = style.contiguous(), g = grad_out.contiguous();
  const at::Tensor lse_c = lse.contiguous();
  at::Tensor cstats = content_stats.contiguous(), sstats = style_stats.contiguous();
  at::Tensor ch = at::empty({d.B, d.C, d.N}, acc), key = at::empty({d.B, d.C, d.L}, acc);
  at::Tensor V = at::empty({d.B, 2 * d.C, d.L}, acc), dO = at::empty({d.B, 2 * d.C, d.N}, acc);
  at::Tensor D = at::empty({d.B, d.N}, acc), d_ch = at::empty({d.B, d.C, d.N}, acc);
  at::Tensor d_key = at::empty({d.B, d.C, d.L}, acc), d_V = at::empty({d.B, 2 * d.C, d.L}, acc);
  const cudaStream_t stream = c10::cuda::getCurrentCUDAStream();
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, content.scalar_type(),
                                  "siman_normalize_backward_cuda", [&] {
    using acc_t = at::opmath_type<scalar_t>;
    prepare<scalar_t>(c, s, d, eps, /*fresh=*/false, cstats, sstats, ch, key, V, stream);
    grad_prepare_kernel<scalar_t><<<stride_blocks(d.B * d.C * d.N), kThreads, 0, stream>>>(
        g.const_data_ptr<scalar_t>(), ch.const_data_ptr<acc_t>(), d.B * d.C * d.N, d.N,
        dO.mutable_data_ptr<acc_t>());
    C10_CUDA_KERNEL_LAUNCH_CHECK();
    Operands<acc_t> o{ch.const_data_ptr<acc_t>(), key.const_data_ptr<acc_t>(),
                      V.const_data_ptr<acc_t>(), d.C, d.N, d.L, 0, 0};
    {
      const auto [group, bytes] = channel_group<acc_t>(d.C, 2);
      o.tiles = (d.N + kRows - 1) / kRows;
      o.group = group;
      launch_tiles(backward_rows_kernel<scalar_t>, o.tiles, d.B, d.C, group, bytes, stream, o,
                   dO.const_data_ptr<acc_t>(), lse_c.const_data_ptr<acc_t>(),
                   D.mutable_data_ptr<acc_t>(), d_ch.mutable_data_ptr<acc_t>());
    }
    {
      const auto [group, bytes] = channel_group<acc_t>(d.C, 3);
      o.tiles = (d.L + kRows - 1) / kRows;
      o.group = group;
      launch_tiles(backward_cols_kernel<scalar_t>, o.tiles, d.B, d.C, group, bytes, stream, o,
                   dO.const_data_ptr<acc_t>(), lse_c.const_data_ptr<acc_t>(),
                   D.const_data_ptr<acc_t>(), d_key.mutable_data_ptr<acc_t>(),
                   d_V.mutable_data_ptr<acc_t>());
    }
    content_grad_kernel<scalar_t><<<grid_size(d.B * d.C, kWarps), kThreads, 0, stream>>>(
        d_ch.const_data_ptr<acc_t>(), ch.const_data_ptr<acc_t>(), cstats.const_data_ptr<acc_t>(),
        d.B * d.C, d.C, d.N, grad_content.mutable_data_ptr<scalar_t>());
    C10_CUDA_KERNEL_LAUNCH_CHECK();
    style_grad_kernel<scalar_t><<<grid_size(d.B * d.C, kWarps), kThreads, 0, stream>>>(
        d_key.const_data_ptr<acc_t>(), key.const_data_ptr<acc_t>(), V.const_data_ptr<acc_t>(),
        d_V.const_data_ptr<acc_t>(), s.const_data_ptr<scalar_t>(), sstats.const_data_ptr<acc_t>(),
        d, grad_style.mutable_data_ptr<scalar_t>());
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  });
  return {grad_content, grad_style};
}

}  // namespace

TORCH_LIBRARY_IMPL(seqclr_ext, CUDA, m) {
  m.impl("siman_normalize", &siman_normalize_cuda);
  m.impl("siman_normalize_backward", &siman_normalize_backward_cuda);
}

}  // namespace seqclr_ext
