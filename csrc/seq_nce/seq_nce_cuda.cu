// CUDA kernels of seq_nce and nce_rows (DESIGN.md §1): the computation of seq_nce_cpu.cpp.
//
// Flash-style: a CTA owns B rows and sweeps the columns in B-wide tiles. Each logit tile is
// computed into shared memory and folded into a per-row online log-sum-exp, so no R×C
// buffer ever exists. The backward recomputes every tile from the saved log-sum-exp, turns
// it into d loss / d logit and multiplies that straight into the CTA's own gradient rows
// (a float workspace no other CTA touches): deterministic, no atomics. float16/bfloat16
// tiles are multiplied on tensor cores (wmma m16n16k16, float accumulators), float32 and
// float64 with FMA; everything accumulates in float32 (float64 for float64 inputs).
#include "seq_nce.h"

#include <ATen/Dispatch.h>
#include <ATen/OpMathType.h>
#include <ATen/core/Tensor.h>
#include <ATen/ops/empty.h>
#include <ATen/ops/zeros.h>
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#include <torch/library.h>

#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <mma.h>

#include <algorithm>
#include <cstdint>
#include <limits>
#include <type_traits>

namespace seqclr_ext {
namespace {

constexpr int kThreads = 256;  // 8 warps; the FMA tile products see them as 16×16 threads
constexpr int kWarps = kThreads / 32;
constexpr int kFmaK = 16;  // features per step of the FMA logit product
constexpr int kMmaK = 32;  // features per step of the tensor-core logit product

template <typename T>
struct MmaElement;
template <>
struct MmaElement<at::Half> {
  using type = __half;
};
template <>
struct MmaElement<at::BFloat16> {
  using type = __nv_bfloat16;
};

// Whether this device pass multiplies scalar_t tiles on tensor cores: wmma has float16
// from sm_70 and bfloat16 from sm_80; other passes (and types) use FMA.
template <typename scalar_t>
__host__ __device__ constexpr bool use_mma() {
#if defined(__CUDA_ARCH__)
  return (std::is_same_v<scalar_t, at::Half> && __CUDA_ARCH__ >= 700) ||
         (std::is_same_v<scalar_t, at::BFloat16> && __CUDA_ARCH__ >= 800);
#else
  return false;
#endif
}

__host__ __device__ constexpr size_t round128(size_t bytes) { return (bytes + 127) / 128 * 128; }

// Rows owned by a CTA = columns per tile = features per backward chunk; float64 halves it
// to stay within the 48 KiB of static shared memory.
template <typename scalar_t>
__host__ __device__ constexpr int block_rows() {
  return std::is_same_v<scalar_t, double> ? 32 : 64;
}

// The shared-memory tiles of one CTA. Regions start at multiples of 128 bytes (wmma wants
// 256-bit aligned fragment pointers).
template <typename scalar_t, bool kMma>
struct Tiles {
  using acc_t = at::opmath_type<scalar_t>;
  // Operand tiles hold scalar_t for tensor cores and are converted to acc_t for FMA.
  using op_t = std::conditional_t<kMma, scalar_t, acc_t>;
  static constexpr int B = block_rows<scalar_t>();
  static constexpr int TPR = kThreads / B;  // threads sharing a row in the row-wise epilogues
  static constexpr int CPT = B / TPR;       // columns per thread of a tile
  static constexpr int LDS = B + 4;         // logits [B][LDS] acc_t (wmma: ld % 4 == 0)
  // Operands [B][LDK]: +8 keeps wmma rows 16-byte aligned; +1 (odd) spreads the FMA
  // column reads over all banks.
  static constexpr int LDK = kMma ? kMmaK + 8 : kFmaK + 1;
  // The backward's feature chunk [B][LDW] op_t, and with kMma its d loss/d logit [B][LDW].
  static constexpr int LDW = kMma ? B + 8 : LDS;
  static constexpr size_t kLogits = round128(size_t(B) * LDS * sizeof(acc_t));
  static constexpr size_t kOperands = round128(size_t(2) * B * LDK * sizeof(op_t));
  // The feature chunk reuses the operand region (the logit product is done by then).
  static constexpr size_t kChunk = std::max(kOperands, round128(size_t(B) * LDW * sizeof(op_t)));
  static constexpr size_t kWeights = kMma ? round128(size_t(B) * LDW * sizeof(scalar_t)) : 0;
  static constexpr size_t kForwardBytes = kLogits + kOperands;
  static constexpr size_t kBackwardBytes = kLogits + kChunk + kWeights;
};

template <typename T>
__device__ __forceinline__ T warp_sum(T v) {
  for (int o = 16; o > 0; o >>= 1) v += __shfl_xor_sync(0xffffffffu, v, o);
  return v;
}

// dst[r][c] = src[row0 + r][col0 + c] for a ROWS×COLS block of the row-major [nrows, F]
// matrix src, zero outside it (ragged last tiles, F not a multiple of the step). With vec
// (src 16-byte aligned, rows a multiple of 16 bytes) it moves whole 16-byte vectors, which
// then never straddle F.
template <int ROWS, int COLS, int LD, typename scalar_t, typename dst_t>
__device__ __forceinline__ void load_block(dst_t* dst, const scalar_t* __restrict__ src,
                                           int64_t row0, int64_t nrows, int64_t col0, int64_t F,
                                           bool vec) {
  constexpr int V = 16 / sizeof(scalar_t);
  if constexpr (std::is_same_v<dst_t, scalar_t> && COLS % V == 0 && LD % V == 0) {
    if (vec) {
      for (int e = threadIdx.x; e < ROWS * COLS / V; e += kThreads) {
        const int r = e / (COLS / V), c = e % (COLS / V) * V;
        const int64_t row = row0 + r, col = col0 + c;
        uint4 v = make_uint4(0, 0, 0, 0);  // all-zero bits are 0.0 in every float format
        if (row < nrows && col < F) v = *reinterpret_cast<const uint4*>(src + row * F + col);
        *reinterpret_cast<uint4*>(dst + r * LD + c) = v;
      }
      return;
    }
  }
  for (int e = threadIdx.x; e < ROWS * COLS; e += kThreads) {
    const int r = e / COLS, c = e % COLS;
    const int64_t row = row0 + r, col = col0 + c;
    dst[r * LD + c] =
        row < nrows && col < F ? static_cast<dst_t>(src[row * F + col]) : static_cast<dst_t>(0.0f);
  }
}

// The logits of one B×B tile into shared memory: S[i][j] = scale · <a_{a0+i}, b_{b0+j}>,
// rows past na / nb reading as zero. Starts by overwriting the operand region and ends
// with a barrier, so S is then readable by every thread.
template <typename scalar_t, bool kMma>
__device__ void logit_tile(const scalar_t* __restrict__ a, int64_t a0, int64_t na,
                           const scalar_t* __restrict__ b, int64_t b0, int64_t nb, int64_t F,
                           at::opmath_type<scalar_t> scale, bool vec, unsigned char* smem) {
  using T = Tiles<scalar_t, kMma>;
  using acc_t = typename T::acc_t;
  using op_t = typename T::op_t;
  constexpr int B = T::B, LDK = T::LDK, LDS = T::LDS;
  acc_t* S = reinterpret_cast<acc_t*>(smem);
  op_t* sa = reinterpret_cast<op_t*>(smem + T::kLogits);
  op_t* sb = sa + B * LDK;
  if constexpr (kMma) {
    using namespace nvcuda;
    using mma_t = typename MmaElement<scalar_t>::type;
    const int warp = threadIdx.x / 32, wr = warp / 2, wc = warp % 2;  // a 16×32 slice per warp
    wmma::fragment<wmma::accumulator, 16, 16, 16, float> acc[2];
    wmma::fill_fragment(acc[0], 0.0f);
    wmma::fill_fragment(acc[1], 0.0f);
    wmma::fragment<wmma::matrix_a, 16, 16, 16, mma_t, wmma::row_major> fa;
    // b's rows are the columns of the product's right factor bᵀ: a col-major view of sb.
    wmma::fragment<wmma::matrix_b, 16, 16, 16, mma_t, wmma::col_major> fb;
    for (int64_t k0 = 0; k0 < F; k0 += kMmaK) {
      load_block<B, kMmaK, LDK>(sa, a, a0, na, k0, F, vec);
      load_block<B, kMmaK, LDK>(sb, b, b0, nb, k0, F, vec);
      __syncthreads();
      for (int kk = 0; kk < kMmaK && k0 + kk < F; kk += 16) {  // skip all-zero padding
        wmma::load_matrix_sync(fa, reinterpret_cast<const mma_t*>(sa + wr * 16 * LDK + kk), LDK);
        for (int f = 0; f < 2; ++f) {
          wmma::load_matrix_sync(
              fb, reinterpret_cast<const mma_t*>(sb + (wc * 32 + f * 16) * LDK + kk), LDK);
          wmma::mma_sync(acc[f], fa, fb, acc[f]);
        }
      }
      __syncthreads();
    }
    for (int f = 0; f < 2; ++f) {
      for (int e = 0; e < acc[f].num_elements; ++e) acc[f].x[e] *= scale;
      wmma::store_matrix_sync(S + wr * 16 * LDS + wc * 32 + f * 16, acc[f], LDS,
                              wmma::mem_row_major);
    }
  } else {
    // Thread (ty, tx) computes rows ty + 16i and columns tx + 16j: conflict-free reads.
    constexpr int P = B / 16;
    const int tx = threadIdx.x % 16, ty = threadIdx.x / 16;
    acc_t acc[P][P] = {};
    for (int64_t k0 = 0; k0 < F; k0 += kFmaK) {
      load_block<B, kFmaK, LDK>(sa, a, a0, na, k0, F, vec);
      load_block<B, kFmaK, LDK>(sb, b, b0, nb, k0, F, vec);
      __syncthreads();
#pragma unroll
      for (int k = 0; k < kFmaK; ++k) {
        acc_t x[P], y[P];
#pragma unroll
        for (int i = 0; i < P; ++i) {
          x[i] = sa[(ty + 16 * i) * LDK + k];
          y[i] = sb[(tx + 16 * i) * LDK + k];
        }
#pragma unroll
        for (int i = 0; i < P; ++i)
#pragma unroll
          for (int j = 0; j < P; ++j) acc[i][j] += x[i] * y[j];
      }
      __syncthreads();
    }
#pragma unroll
    for (int i = 0; i < P; ++i)
#pragma unroll
      for (int j = 0; j < P; ++j) S[(ty + 16 * i) * LDS + tx + 16 * j] = acc[i][j] * scale;
  }
  __syncthreads();
}

template <typename scalar_t>
struct NceArgs {
  using acc_t = at::opmath_type<scalar_t>;
  const scalar_t* q;  // [R, F] rows
  const scalar_t* k;  // [C, F] columns
  int64_t R, C, F;
  const int64_t* pos;   // [R] positive column of each row; null: seq_nce's twin_row(r, M)
  const int64_t* excl;  // [R] column left out of each denominator or -1; null: r itself
  int64_t M;
  acc_t inv_tau;
  bool vec;  // q and k allow 16-byte vector loads

  __device__ int64_t positive(int64_t r) const { return pos ? pos[r] : twin_row(r, M); }
  __device__ int64_t excluded(int64_t r) const { return excl ? excl[r] : r; }
};

// Per-row loss -log softmax at the positive and the row's log-sum-exp.
template <typename scalar_t>
__global__ void __launch_bounds__(kThreads, 2)
    nce_forward_kernel(const NceArgs<scalar_t> p, at::opmath_type<scalar_t>* __restrict__ loss,
                       at::opmath_type<scalar_t>* __restrict__ lse) {
  constexpr bool kMma = use_mma<scalar_t>();
  using T = Tiles<scalar_t, kMma>;
  using acc_t = typename T::acc_t;
  constexpr int B = T::B, TPR = T::TPR, CPT = T::CPT;
  constexpr acc_t kNegInf = -std::numeric_limits<acc_t>::infinity();
  __shared__ __align__(128) unsigned char smem[T::kForwardBytes];
  const acc_t* S = reinterpret_cast<const acc_t*>(smem);

  // Thread (i, sub) keeps an online log-sum-exp of row r0 + i over the columns
  // sub + TPR·t of every tile; the TPR partial states are merged at the end.
  const int64_t r0 = int64_t(blockIdx.x) * B;
  const int i = threadIdx.x / TPR, sub = threadIdx.x % TPR;
  const int64_t r = r0 + i;
  const bool valid = r < p.R;
  const int64_t pos = valid ? p.positive(r) : -1, excl = valid ? p.excluded(r) : -1;
  acc_t m = kNegInf, s = 0, pos_logit = 0;
  for (int64_t c0 = 0; c0 < p.C; c0 += B) {
    logit_tile<scalar_t, kMma>(p.q, r0, p.R, p.k, c0, p.C, p.F, p.inv_tau, p.vec, smem);
    acc_t x[CPT];
    acc_t tile_max = kNegInf;
#pragma unroll
    for (int t = 0; t < CPT; ++t) {
      const int j = sub + TPR * t;
      const int64_t c = c0 + j;
      acc_t v = S[i * T::LDS + j];
      if (c == pos) pos_logit = v;
      if (c >= p.C || c == excl) v = kNegInf;
      x[t] = v;
      tile_max = v > tile_max ? v : tile_max;
    }
    if (tile_max != kNegInf) {  // else this thread saw only masked columns
      acc_t sum = 0;
#pragma unroll
      for (int t = 0; t < CPT; ++t) sum += std::exp(x[t] - tile_max);
      lse_merge(m, s, tile_max, sum);
    }
    __syncthreads();  // the next tile overwrites S
  }
  // The row's TPR threads are adjacent lanes; the butterfly leaves the same state in each.
  for (int o = 1; o < TPR; o <<= 1) {
    const acc_t m2 = __shfl_xor_sync(0xffffffffu, m, o);
    const acc_t s2 = __shfl_xor_sync(0xffffffffu, s, o);
    const acc_t p2 = __shfl_xor_sync(0xffffffffu, pos_logit, o);  // 0 but at one thread
    lse_merge(m, s, m2, s2);
    pos_logit += p2;
  }
  if (valid && sub == 0) {
    const acc_t l = m + std::log(s);
    lse[r] = l;
    loss[r] = l - pos_logit;
  }
}

// Upstream gradient of row r: ptr[r * stride] * mul (seq_nce: grad_loss / 2M for all rows,
// read on the device so the backward never waits for the host).
template <typename acc_t>
struct RowGrad {
  const acc_t* ptr;
  int64_t stride;
  acc_t mul;
  __device__ acc_t operator()(int64_t r) const { return ptr[r * stride] * mul; }
};

// One side of the gradient of the logit product, by blocks of B owned vectors:
//   rows pass (kColumns false): out = grad_q[R, F] = dS · k, plus dSᵀ · q with `symmetric`
//     (q and k are the same matrix, as in seq_nce; g must then be the same for all rows);
//   columns pass (kColumns true): out = grad_k[C, F] = dSᵀ · q,
// with dS_rc = g_r/τ (softmax_rc − [c = pos_r]), recomputed tile by tile from lse. `out` is
// zero-initialized acc_t; each CTA adds into its own rows only.
//
// The shared tile W' holds dS without a per-output-row factor out_scale, so that it stays
// within [-2, 2] and keeps its precision when rounded to float16 for the tensor cores:
// rows pass: W'_rc = softmax_rc − [c = pos_r] (+ the transposed term), out_scale_r = g_r/τ;
// columns pass: W'_cr = g_r/max|g| · (softmax_rc − [c = pos_r]), out_scale = max|g|/τ.
template <typename scalar_t, bool kColumns>
__global__ void __launch_bounds__(kThreads, 2)
    nce_backward_kernel(const NceArgs<scalar_t> p,
                        const at::opmath_type<scalar_t>* __restrict__ lse,
                        const RowGrad<at::opmath_type<scalar_t>> g,
                        const at::opmath_type<scalar_t>* __restrict__ g_absmax, bool symmetric,
                        at::opmath_type<scalar_t>* __restrict__ out) {
  constexpr bool kMma = use_mma<scalar_t>();
  using T = Tiles<scalar_t, kMma>;
  using acc_t = typename T::acc_t;
  using op_t = typename T::op_t;
  constexpr int B = T::B, TPR = T::TPR, CPT = T::CPT, LDS = T::LDS, LDW = T::LDW;
  __shared__ __align__(128) unsigned char smem[T::kBackwardBytes];
  __shared__ acc_t out_scale[B];
  // State of the tile's other side: the rows (columns pass) or, with `symmetric`, the
  // rows that the tile's columns are.
  __shared__ acc_t lse_b[B], g_b[B];
  __shared__ int64_t pos_b[B], excl_b[B];
  acc_t* S = reinterpret_cast<acc_t*>(smem);
  op_t* chunk = reinterpret_cast<op_t*>(smem + T::kLogits);
  scalar_t* sw = reinterpret_cast<scalar_t*>(smem + T::kLogits + T::kChunk);  // kMma only

  const scalar_t* a = kColumns ? p.k : p.q;  // the owned side
  const scalar_t* b = kColumns ? p.q : p.k;
  const int64_t na = kColumns ? p.C : p.R, nb = kColumns ? p.R : p.C, F = p.F;
  const int64_t a0 = int64_t(blockIdx.x) * B;
  const int i = threadIdx.x / TPR, sub = threadIdx.x % TPR;
  const int64_t ai = a0 + i;
  const bool a_valid = ai < na;
  acc_t lse_a = 0;
  int64_t pos_a = -1, excl_a = -1;
  if (!kColumns && a_valid) {
    lse_a = lse[ai];
    pos_a = p.positive(ai);
    excl_a = p.excluded(ai);
  }
  acc_t g_scale = 1;
  if (kColumns && *g_absmax > acc_t(0)) g_scale = *g_absmax;
  if (threadIdx.x < B) {
    const int64_t o = a0 + threadIdx.x;
    out_scale[threadIdx.x] =
        kColumns ? g_scale * p.inv_tau : (o < na ? g(o) * p.inv_tau : acc_t(0));
  }
  const bool other_state = kColumns || symmetric;

  for (int64_t b0 = 0; b0 < nb; b0 += B) {
    if (other_state && threadIdx.x < B && b0 + threadIdx.x < nb) {
      const int64_t o = b0 + threadIdx.x;
      lse_b[threadIdx.x] = lse[o];
      pos_b[threadIdx.x] = p.positive(o);
      excl_b[threadIdx.x] = p.excluded(o);
      if (kColumns) g_b[threadIdx.x] = g(o) / g_scale;
    }
    logit_tile<scalar_t, kMma>(a, a0, na, b, b0, nb, F, p.inv_tau, p.vec, smem);

#pragma unroll 4
    for (int t = 0; t < CPT; ++t) {
      const int j = sub + TPR * t;
      const int64_t bj = b0 + j;
      acc_t w = 0;
      if (a_valid && bj < nb) {
        const acc_t logit = S[i * LDS + j];
        if (kColumns) {  // owned column ai against row bj
          w = nce_logit_grad(logit, lse_b[j], g_b[j], ai == excl_b[j], ai == pos_b[j]);
        } else {  // owned row ai against column bj (and, symmetric, row bj against column ai)
          w = nce_logit_grad(logit, lse_a, acc_t(1), bj == excl_a, bj == pos_a);
          if (symmetric) {
            w += nce_logit_grad(logit, lse_b[j], acc_t(1), ai == excl_b[j], ai == pos_b[j]);
          }
        }
      }
      if constexpr (kMma) {
        sw[i * LDW + j] = static_cast<scalar_t>(w);
      } else {
        S[i * LDS + j] = w;  // in place: each thread rewrites only what it read
      }
    }

    // out[a0 + i] += out_scale[i] · Σ_j W'[i][j] · b[b0 + j], B features at a time.
    for (int64_t f0 = 0; f0 < F; f0 += B) {
      load_block<B, B, LDW>(chunk, b, b0, nb, f0, F, p.vec);
      __syncthreads();
      if constexpr (kMma) {
        using namespace nvcuda;
        using mma_t = typename MmaElement<scalar_t>::type;
        const int warp = threadIdx.x / 32, wr = warp / 2, wc = warp % 2;
        wmma::fragment<wmma::accumulator, 16, 16, 16, float> acc[2];
        wmma::fill_fragment(acc[0], 0.0f);
        wmma::fill_fragment(acc[1], 0.0f);
        wmma::fragment<wmma::matrix_a, 16, 16, 16, mma_t, wmma::row_major> fa;
        wmma::fragment<wmma::matrix_b, 16, 16, 16, mma_t, wmma::row_major> fb;
        for (int kk = 0; kk < B && b0 + kk < nb; kk += 16) {  // W' is zero past nb
          wmma::load_matrix_sync(fa, reinterpret_cast<const mma_t*>(sw + wr * 16 * LDW + kk), LDW);
          for (int f = 0; f < 2; ++f) {
            wmma::load_matrix_sync(
                fb, reinterpret_cast<const mma_t*>(chunk + kk * LDW + wc * 32 + f * 16), LDW);
            wmma::mma_sync(acc[f], fa, fb, acc[f]);
          }
        }
        // The logits are dead: S takes the product for the row-wise update below.
        for (int f = 0; f < 2; ++f) {
          wmma::store_matrix_sync(S + wr * 16 * LDS + wc * 32 + f * 16, acc[f], LDS,
                                  wmma::mem_row_major);
        }
        __syncthreads();
#pragma unroll 4
        for (int e = threadIdx.x; e < B * B; e += kThreads) {
          const int r = e / B, c = e % B;
          const int64_t row = a0 + r, f = f0 + c;
          if (row < na && f < F) out[row * F + f] += out_scale[r] * S[r * LDS + c];
        }
        // No barrier needed here: the next write to chunk or S follows the next barrier.
      } else {
        constexpr int P = B / 16;
        const int tx = threadIdx.x % 16, ty = threadIdx.x / 16;
        acc_t acc[P][P] = {};
#pragma unroll 8
        for (int j = 0; j < B; ++j) {
          acc_t x[P], y[P];
#pragma unroll
          for (int u = 0; u < P; ++u) {
            x[u] = S[(ty + 16 * u) * LDS + j];
            y[u] = chunk[j * LDW + tx + 16 * u];
          }
#pragma unroll
          for (int u = 0; u < P; ++u)
#pragma unroll
            for (int v = 0; v < P; ++v) acc[u][v] += x[u] * y[v];
        }
#pragma unroll
        for (int u = 0; u < P; ++u) {
          const int r = ty + 16 * u;
          const int64_t row = a0 + r;
          if (row >= na) continue;
#pragma unroll
          for (int v = 0; v < P; ++v) {
            const int64_t f = f0 + tx + 16 * v;
            if (f < F) out[row * F + f] += out_scale[r] * acc[u][v];
          }
        }
        __syncthreads();  // the next chunk overwrites what this one read
      }
    }
  }
}

// Frames [begin, end) (indices into the packed view) pooled into instance v of a view.
__device__ __forceinline__ void instance_frames(int64_t v, const int64_t* __restrict__ offsets,
                                                InstanceMapping map, int64_t& begin,
                                                int64_t& end) {
  if (map.per_frame) {
    begin = v;
    end = v + 1;
    return;
  }
  const int64_t Tw = map.num_windows, i = v / Tw, j = v % Tw;
  const int64_t off = offsets[i], T = offsets[i + 1] - off;
  begin = off + window_start(j, T, Tw);
  end = off + window_end(j, T, Tw);
}

// z[2M, F] = L2-normalized [pool(frames_a); pool(frames_b)] and the norms before
// normalization, one warp per instance.
template <typename scalar_t>
__global__ void __launch_bounds__(kThreads)
    pool_normalize_kernel(const scalar_t* __restrict__ frames_a,
                          const scalar_t* __restrict__ frames_b,
                          const int64_t* __restrict__ offsets, InstanceMapping map, int64_t M,
                          int64_t F, scalar_t* __restrict__ z,
                          at::opmath_type<scalar_t>* __restrict__ norms) {
  using acc_t = at::opmath_type<scalar_t>;
  const int64_t row = int64_t(blockIdx.x) * kWarps + threadIdx.x / 32;
  if (row >= 2 * M) return;  // whole warps leave: the shuffles below stay full-warp
  const int lane = threadIdx.x % 32;
  const scalar_t* frames = row < M ? frames_a : frames_b;
  int64_t begin, end;
  instance_frames(row < M ? row : row - M, offsets, map, begin, end);
  const acc_t inv_len = acc_t(1) / acc_t(end - begin);
  // The pooled row is recomputed for the second pass rather than held: F is unbounded,
  // and the frames are cache-hot by then.
  acc_t sq = 0;
  for (int64_t d = lane; d < F; d += 32) {
    acc_t u = 0;
    for (int64_t t = begin; t < end; ++t) u += static_cast<acc_t>(frames[t * F + d]);
    u *= inv_len;
    sq += u * u;
  }
  const acc_t norm = std::sqrt(warp_sum(sq));
  const acc_t inv = acc_t(1) / (norm < acc_t(kNormEps) ? acc_t(kNormEps) : norm);
  for (int64_t d = lane; d < F; d += 32) {
    acc_t u = 0;
    for (int64_t t = begin; t < end; ++t) u += static_cast<acc_t>(frames[t * F + d]);
    u *= inv_len;
    z[row * F + d] = static_cast<scalar_t>(u * inv);
  }
  if (lane == 0) norms[row] = norm;
}

// In place, dz[rows, F] (d loss / d z) becomes d loss / d pooled: (dz − z <z, dz>) / |u|,
// or dz / eps where the norm was clamped. One warp per row.
template <typename scalar_t>
__global__ void __launch_bounds__(kThreads)
    normalize_backward_kernel(at::opmath_type<scalar_t>* __restrict__ dz,
                              const scalar_t* __restrict__ z,
                              const at::opmath_type<scalar_t>* __restrict__ norms, int64_t rows,
                              int64_t F) {
  using acc_t = at::opmath_type<scalar_t>;
  const int64_t row = int64_t(blockIdx.x) * kWarps + threadIdx.x / 32;
  if (row >= rows) return;
  const int lane = threadIdx.x % 32;
  acc_t* g = dz + row * F;
  const scalar_t* zr = z + row * F;
  acc_t dot = 0;
  for (int64_t d = lane; d < F; d += 32) dot += static_cast<acc_t>(zr[d]) * g[d];
  dot = warp_sum(dot);
  const acc_t norm = norms[row];
  for (int64_t d = lane; d < F; d += 32) {
    g[d] = norm > acc_t(kNormEps) ? (g[d] - static_cast<acc_t>(zr[d]) * dot) / norm
                                  : g[d] / acc_t(kNormEps);
  }
}

// grad_a / grad_b [total, F]: each frame gathers du / |window| from every window holding
// it (no scatter, so no atomics). One warp per frame of either view.
template <typename scalar_t>
__global__ void __launch_bounds__(kThreads)
    pool_backward_kernel(const at::opmath_type<scalar_t>* __restrict__ du,
                         const int64_t* __restrict__ offsets, int64_t N, InstanceMapping map,
                         int64_t total, int64_t M, int64_t F, scalar_t* __restrict__ grad_a,
                         scalar_t* __restrict__ grad_b) {
  using acc_t = at::opmath_type<scalar_t>;
  constexpr int kPer = 4;  // features per lane held while the windows are summed
  const int64_t idx = int64_t(blockIdx.x) * kWarps + threadIdx.x / 32;
  if (idx >= 2 * total) return;
  const int lane = threadIdx.x % 32;
  const bool second = idx >= total;
  const int64_t f = second ? idx - total : idx;
  const acc_t* du_view = du + (second ? M * F : 0);
  scalar_t* out = (second ? grad_b : grad_a) + f * F;
  if (map.per_frame) {  // frame f is instance f
    for (int64_t d = lane; d < F; d += 32) out[d] = static_cast<scalar_t>(du_view[f * F + d]);
    return;
  }
  // The frame's image: the last i with offsets[i] <= f (lengths >= 1: offsets increase).
  int64_t lo = 0, hi = N - 1;
  while (lo < hi) {
    const int64_t mid = (lo + hi + 1) / 2;
    if (offsets[mid] <= f) {
      lo = mid;
    } else {
      hi = mid - 1;
    }
  }
  const int64_t off = offsets[lo], T = offsets[lo + 1] - off, t = f - off, Tw = map.num_windows;
  const acc_t* du_image = du_view + lo * Tw * F;
  // Candidate windows, as in the CPU kernel; membership is tested exactly.
  const int64_t j_lo = t * Tw / T - 1 > 0 ? t * Tw / T - 1 : 0;
  const int64_t j_hi = (t + 1) * Tw / T + 1 < Tw - 1 ? (t + 1) * Tw / T + 1 : Tw - 1;
  for (int64_t d0 = 0; d0 < F; d0 += 32 * kPer) {
    acc_t acc[kPer] = {};
    for (int64_t j = j_lo; j <= j_hi; ++j) {
      const int64_t s = window_start(j, T, Tw), e = window_end(j, T, Tw);
      if (t < s || t >= e) continue;
      const acc_t w = acc_t(1) / acc_t(e - s);
#pragma unroll
      for (int u = 0; u < kPer; ++u) {
        const int64_t d = d0 + lane + 32 * u;
        if (d < F) acc[u] += w * du_image[j * F + d];
      }
    }
#pragma unroll
    for (int u = 0; u < kPer; ++u) {
      const int64_t d = d0 + lane + 32 * u;
      if (d < F) out[d] = static_cast<scalar_t>(acc[u]);
    }
  }
}

// Whether rows of F scalar_t starting at each tensor's data allow 16-byte vector loads.
template <typename scalar_t>
bool vector_loads(int64_t F, const at::Tensor& x, const at::Tensor& y) {
  const auto aligned = [](const at::Tensor& t) {
    return reinterpret_cast<uintptr_t>(t.const_data_ptr()) % 16 == 0;
  };
  return (F * int64_t(sizeof(scalar_t))) % 16 == 0 && aligned(x) && aligned(y);
}

template <typename scalar_t>
NceArgs<scalar_t> nce_args(const at::Tensor& q, const at::Tensor& k, const int64_t* pos,
                           const int64_t* excl, int64_t M, double temperature) {
  using acc_t = at::opmath_type<scalar_t>;
  const int64_t F = q.size(1);
  return {q.const_data_ptr<scalar_t>(), k.const_data_ptr<scalar_t>(), q.size(0), k.size(0), F,
          pos, excl, M, static_cast<acc_t>(1.0 / temperature), vector_loads<scalar_t>(F, q, k)};
}

template <typename scalar_t>
void launch_nce_forward(const NceArgs<scalar_t>& p, at::Tensor& loss, at::Tensor& lse,
                        cudaStream_t stream) {
  using acc_t = at::opmath_type<scalar_t>;
  nce_forward_kernel<scalar_t>
      <<<grid_size(p.R, block_rows<scalar_t>()), kThreads, 0, stream>>>(
          p, loss.mutable_data_ptr<acc_t>(), lse.mutable_data_ptr<acc_t>());
  C10_CUDA_KERNEL_LAUNCH_CHECK();
}

template <typename scalar_t, bool kColumns>
void launch_nce_backward(const NceArgs<scalar_t>& p, const at::Tensor& lse,
                         RowGrad<at::opmath_type<scalar_t>> g,
                         const at::opmath_type<scalar_t>* g_absmax,
                         bool symmetric, at::Tensor& out, cudaStream_t stream) {
  using acc_t = at::opmath_type<scalar_t>;
  nce_backward_kernel<scalar_t, kColumns>
      <<<grid_size(kColumns ? p.C : p.R, block_rows<scalar_t>()), kThreads, 0, stream>>>(
          p, lse.const_data_ptr<acc_t>(), g, g_absmax, symmetric, out.mutable_data_ptr<acc_t>());
  C10_CUDA_KERNEL_LAUNCH_CHECK();
}

std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor> seq_nce_cuda(
    const at::Tensor& frames_a, const at::Tensor& frames_b, const at::Tensor& lengths,
    c10::string_view mapping, int64_t num_windows, double temperature) {
  const InstanceMapping map = parse_mapping(mapping, num_windows);
  const at::Tensor offsets = check_seq_nce_args(frames_a, frames_b, lengths, temperature);
  const c10::cuda::CUDAGuard guard(frames_a.device());
  const int64_t N = lengths.size(0), total = frames_a.size(0), F = frames_a.size(1);
  const int64_t M = instances_per_view(map, total, N);
  const auto dtype = frames_a.scalar_type(), acc = acc_dtype(dtype);
  at::Tensor z = at::empty({2 * M, F}, frames_a.options());
  at::Tensor norms = at::empty({2 * M}, frames_a.options().dtype(acc));
  at::Tensor loss_rows = at::empty({2 * M}, norms.options());
  at::Tensor lse = at::empty({2 * M}, norms.options());
  const cudaStream_t stream = c10::cuda::getCurrentCUDAStream();
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, dtype, "seq_nce_cuda", [&] {
    using acc_t = at::opmath_type<scalar_t>;
    const at::Tensor a = frames_a.contiguous(), b = frames_b.contiguous();
    pool_normalize_kernel<scalar_t><<<grid_size(2 * M, kWarps), kThreads, 0, stream>>>(
        a.const_data_ptr<scalar_t>(), b.const_data_ptr<scalar_t>(),
        offsets.const_data_ptr<int64_t>(), map, M, F, z.mutable_data_ptr<scalar_t>(),
        norms.mutable_data_ptr<acc_t>());
    C10_CUDA_KERNEL_LAUNCH_CHECK();
    // Rows and columns are both [Z_a; Z_b]: positives are twins, each row excludes itself.
    launch_nce_forward(nce_args<scalar_t>(z, z, nullptr, nullptr, M, temperature), loss_rows, lse,
                       stream);
  });
  return {loss_rows.mean().to(dtype), z, norms, lse};
}

std::tuple<at::Tensor, at::Tensor> seq_nce_backward_cuda(
    const at::Tensor& grad_loss, const at::Tensor& instances, const at::Tensor& norms,
    const at::Tensor& lse, const at::Tensor& lengths, c10::string_view mapping,
    int64_t num_windows, double temperature, int64_t total_frames) {
  const InstanceMapping map = parse_mapping(mapping, num_windows);
  const c10::cuda::CUDAGuard guard(instances.device());
  const at::Tensor offsets = lengths_to_offsets(lengths.to(at::kLong)).contiguous();
  const int64_t N = lengths.size(0), F = instances.size(1), M = instances.size(0) / 2;
  const auto dtype = instances.scalar_type(), acc = acc_dtype(dtype);
  const at::Tensor z = instances.contiguous();
  const at::Tensor norms_c = norms.to(acc).contiguous(), lse_c = lse.to(acc).contiguous();
  const at::Tensor g = grad_loss.to(acc).contiguous();
  at::Tensor dz = at::zeros({2 * M, F}, z.options().dtype(acc));
  at::Tensor grad_a = at::empty({total_frames, F}, instances.options());
  at::Tensor grad_b = at::empty({total_frames, F}, instances.options());
  const cudaStream_t stream = c10::cuda::getCurrentCUDAStream();
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, dtype, "seq_nce_backward_cuda", [&] {
    using acc_t = at::opmath_type<scalar_t>;
    // loss = mean over 2M rows: every row's upstream gradient is grad_loss / 2M.
    const RowGrad<acc_t> row_grad{g.const_data_ptr<acc_t>(), 0, static_cast<acc_t>(0.5 / M)};
    launch_nce_backward<scalar_t, false>(nce_args<scalar_t>(z, z, nullptr, nullptr, M, temperature),
                                         lse_c, row_grad, nullptr, /*symmetric=*/true, dz, stream);
    normalize_backward_kernel<scalar_t><<<grid_size(2 * M, kWarps), kThreads, 0, stream>>>(
        dz.mutable_data_ptr<acc_t>(), z.const_data_ptr<scalar_t>(), norms_c.const_data_ptr<acc_t>(),
        2 * M, F);
    C10_CUDA_KERNEL_LAUNCH_CHECK();
    pool_backward_kernel<scalar_t><<<grid_size(2 * total_frames, kWarps), kThreads, 0, stream>>>(
        dz.const_data_ptr<acc_t>(), offsets.const_data_ptr<int64_t>(), N, map, total_frames, M, F,
        grad_a.mutable_data_ptr<scalar_t>(), grad_b.mutable_data_ptr<scalar_t>());
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  });
  return {grad_a, grad_b};
}

std::tuple<at::Tensor, at::Tensor> nce_rows_cuda(const at::Tensor& rows, const at::Tensor& cols,
                                                 const at::Tensor& positive,
                                                 const at::Tensor& exclude, double temperature) {
  check_nce_rows_args(rows, cols, positive, exclude, temperature);
  const c10::cuda::CUDAGuard guard(rows.device());
  const auto dtype = rows.scalar_type(), acc = acc_dtype(dtype);
  const at::Tensor q = rows.contiguous(), k = cols.contiguous();
  const at::Tensor pos = positive.contiguous(), excl = exclude.contiguous();
  at::Tensor loss = at::empty({rows.size(0)}, rows.options().dtype(acc));
  at::Tensor lse = at::empty({rows.size(0)}, loss.options());
  const cudaStream_t stream = c10::cuda::getCurrentCUDAStream();
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, dtype, "nce_rows_cuda", [&] {
    launch_nce_forward(nce_args<scalar_t>(q, k, pos.const_data_ptr<int64_t>(),
                                          excl.const_data_ptr<int64_t>(), 0, temperature),
                       loss, lse, stream);
  });
  return {loss.to(dtype), lse};
}

std::tuple<at::Tensor, at::Tensor> nce_rows_backward_cuda(
    const at::Tensor& grad_loss, const at::Tensor& rows, const at::Tensor& cols,
    const at::Tensor& positive, const at::Tensor& exclude, const at::Tensor& lse,
    double temperature) {
  const c10::cuda::CUDAGuard guard(rows.device());
  const auto dtype = rows.scalar_type(), acc = acc_dtype(dtype);
  const at::Tensor q = rows.contiguous(), k = cols.contiguous();
  const at::Tensor g = grad_loss.to(acc).contiguous(), lse_c = lse.to(acc).contiguous();
  const at::Tensor g_absmax = g.abs().max();  // stays on the device
  const at::Tensor pos = positive.contiguous(), excl = exclude.contiguous();
  at::Tensor grad_q = at::zeros(q.sizes(), q.options().dtype(acc));
  at::Tensor grad_k = at::zeros(k.sizes(), k.options().dtype(acc));
  const cudaStream_t stream = c10::cuda::getCurrentCUDAStream();
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, dtype, "nce_rows_backward_cuda", [&] {
    using acc_t = at::opmath_type<scalar_t>;
    const NceArgs<scalar_t> p = nce_args<scalar_t>(
        q, k, pos.const_data_ptr<int64_t>(), excl.const_data_ptr<int64_t>(), 0, temperature);
    const RowGrad<acc_t> row_grad{g.const_data_ptr<acc_t>(), 1, acc_t(1)};
    launch_nce_backward<scalar_t, false>(p, lse_c, row_grad, nullptr, /*symmetric=*/false,
                                         grad_q, stream);
    launch_nce_backward<scalar_t, true>(p, lse_c, row_grad, g_absmax.const_data_ptr<acc_t>(),
                                        /*symmetric=*/false, grad_k, stream);
  });
  return {grad_q.to(dtype), grad_k.to(dtype)};
}

}  // namespace

TORCH_LIBRARY_IMPL(seqclr_ext, CUDA, m) {
  m.impl("seq_nce", &seq_nce_cuda);
  m.impl("seq_nce_backward", &seq_nce_backward_cuda);
  m.impl("nce_rows", &nce_rows_cuda);
  m.impl("nce_rows_backward", &nce_rows_backward_cuda);
}

}  // namespace seqclr_ext
