// CPU kernels of seq_nce and nce_rows (DESIGN.md §1).
//
// The similarity matrix is never stored: rows are processed in blocks, each block sweeps
// the columns in tiles (a BLAS GEMM into a per-thread buffer) and keeps an online
// log-sum-exp. The backward recomputes each tile from the saved per-row log-sum-exp.
// Row blocks own their gradient rows and column blocks their gradient columns, so the
// result is deterministic without atomics. Everything accumulates in float32 (float64 for
// float64 inputs).
#include "seq_nce.h"

#include <ATen/Dispatch.h>
#include <ATen/OpMathType.h>
#include <ATen/Parallel.h>
#include <ATen/ops/empty.h>
#include <ATen/ops/from_blob.h>
#include <ATen/ops/mm.h>
#include <ATen/ops/empty_like.h>
#include <ATen/ops/zeros.h>
#include <ATen/ops/zeros_like.h>
#include <torch/library.h>

#include <algorithm>
#include <array>
#include <vector>

namespace seqclr_ext {
namespace {

constexpr int64_t kRows = 128;  // rows per block
constexpr int64_t kCols = 512;  // columns per tile
constexpr double kNormEps = 1e-8;

// A row-major [rows, cols] matrix with leading dimension ld, viewed as a tensor (no copy).
template <typename acc_t>
at::Tensor matrix(const acc_t* data, int64_t rows, int64_t cols, int64_t ld) {
  return at::from_blob(const_cast<acc_t*>(data), {rows, cols}, {ld, 1},
                       at::TensorOptions().dtype(c10::CppTypeToScalarType<acc_t>::value));
}

// tile[i * ld + j] = <a_i, b_j> for i < na, j < nb; a and b are row-major with F columns.
// The GEMMs go to ATen's BLAS (single-threaded inside our parallel region).
template <typename acc_t>
void dot_tile(const acc_t* a, int64_t na, const acc_t* b, int64_t nb, int64_t F, acc_t* tile,
              int64_t ld) {
  at::Tensor out = matrix(tile, na, nb, ld);
  at::mm_out(out, matrix(a, na, F, F), matrix(b, nb, F, F).t());
}

// out[na, F] += tile[na, nb] · b[nb, F].
template <typename acc_t>
void add_tile_times(const acc_t* tile, int64_t na, int64_t nb, int64_t ld, const acc_t* b,
                    int64_t F, acc_t* out) {
  matrix(out, na, F, F).addmm_(matrix(tile, na, nb, ld), matrix(b, nb, F, F));
}

template <typename acc_t>
struct NceProblem {
  const acc_t* q;  // [R, F] rows
  const acc_t* k;  // [C, F] columns
  int64_t R, C, F;
  const int64_t* pos;   // [R] positive column of each row
  const int64_t* excl;  // [R] column left out of each row's denominator, or -1
  acc_t inv_tau;
};

template <typename acc_t>
void nce_forward(const NceProblem<acc_t>& p, acc_t* loss, acc_t* lse) {
  const int64_t blocks = (p.R + kRows - 1) / kRows;
  at::parallel_for(0, blocks, 1, [&](int64_t b0, int64_t b1) {
    std::vector<acc_t> tile(kRows * kCols);
    std::array<acc_t, kRows> m, s, pos_logit;
    for (int64_t b = b0; b < b1; ++b) {
      const int64_t r0 = b * kRows, nr = std::min(kRows, p.R - r0);
      m.fill(-std::numeric_limits<acc_t>::infinity());
      s.fill(acc_t(0));
      for (int64_t c0 = 0; c0 < p.C; c0 += kCols) {
        const int64_t nc = std::min(kCols, p.C - c0);
        dot_tile(p.q + r0 * p.F, nr, p.k + c0 * p.F, nc, p.F, tile.data(), kCols);
        for (int64_t i = 0; i < nr; ++i) {
          acc_t* x = tile.data() + i * kCols;
          acc_t block_max = -std::numeric_limits<acc_t>::infinity();
          for (int64_t j = 0; j < nc; ++j) {
            x[j] *= p.inv_tau;
            block_max = std::max(block_max, x[j]);
          }
          const int64_t e = p.excl[r0 + i] - c0, pc = p.pos[r0 + i] - c0;
          if (pc >= 0 && pc < nc) pos_logit[i] = x[pc];
          if (e >= 0 && e < nc) {
            x[e] = -std::numeric_limits<acc_t>::infinity();
            if (nc == 1) continue;  // the tile held only the excluded column
            block_max = *std::max_element(x, x + nc);
          }
          acc_t block_sum = 0;
          for (int64_t j = 0; j < nc; ++j) block_sum += std::exp(x[j] - block_max);
          lse_merge(m[i], s[i], block_max, block_sum);
        }
      }
      for (int64_t i = 0; i < nr; ++i) {
        lse[r0 + i] = m[i] + std::log(s[i]);
        loss[r0 + i] = lse[r0 + i] - pos_logit[i];
      }
    }
  });
}

// grad_q = dS · k with dS_rc = d loss / d (q_r · k_c). With `symmetric` (q and k are the
// same matrix, as in seq_nce), also adds dS^T · q from the same recomputed tile, so one
// pass gives the whole gradient of the shared matrix.
template <typename acc_t>
void nce_backward_rows(const NceProblem<acc_t>& p, const acc_t* g, const acc_t* lse,
                       bool symmetric, acc_t* grad_q) {
  const int64_t blocks = (p.R + kRows - 1) / kRows;
  at::parallel_for(0, blocks, 1, [&](int64_t b0, int64_t b1) {
    std::vector<acc_t> tile(kRows * kCols);
    for (int64_t b = b0; b < b1; ++b) {
      const int64_t r0 = b * kRows, nr = std::min(kRows, p.R - r0);
      for (int64_t c0 = 0; c0 < p.C; c0 += kCols) {
        const int64_t nc = std::min(kCols, p.C - c0);
        dot_tile(p.q + r0 * p.F, nr, p.k + c0 * p.F, nc, p.F, tile.data(), kCols);
        for (int64_t i = 0; i < nr; ++i) {
          const int64_t r = r0 + i;
          const acc_t gr = g[r] * p.inv_tau, lr = lse[r];
          acc_t* x = tile.data() + i * kCols;
          for (int64_t j = 0; j < nc; ++j) {
            const int64_t c = c0 + j;
            const acc_t logit = x[j] * p.inv_tau;
            acc_t w = nce_logit_grad(logit, lr, gr, c == p.excl[r], c == p.pos[r]);
            if (symmetric) {
              w += nce_logit_grad(logit, lse[c], g[c] * p.inv_tau, r == p.excl[c], r == p.pos[c]);
            }
            x[j] = w;
          }
        }
        add_tile_times(tile.data(), nr, nc, kCols, p.k + c0 * p.F, p.F, grad_q + r0 * p.F);
      }
    }
  });
}

// grad_k = dS^T · q, by column blocks (each block owns its gradient rows).
template <typename acc_t>
void nce_backward_cols(const NceProblem<acc_t>& p, const acc_t* g, const acc_t* lse,
                       acc_t* grad_k) {
  const int64_t blocks = (p.C + kCols - 1) / kCols;
  at::parallel_for(0, blocks, 1, [&](int64_t b0, int64_t b1) {
    std::vector<acc_t> tile(kRows * kCols);
    for (int64_t b = b0; b < b1; ++b) {
      const int64_t c0 = b * kCols, nc = std::min(kCols, p.C - c0);
      for (int64_t r0 = 0; r0 < p.R; r0 += kRows) {
        const int64_t nr = std::min(kRows, p.R - r0);
        dot_tile(p.k + c0 * p.F, nc, p.q + r0 * p.F, nr, p.F, tile.data(), kRows);
        for (int64_t j = 0; j < nc; ++j) {
          const int64_t c = c0 + j;
          acc_t* x = tile.data() + j * kRows;
          for (int64_t i = 0; i < nr; ++i) {
            const int64_t r = r0 + i;
            x[i] = nce_logit_grad(x[i] * p.inv_tau, lse[r], g[r] * p.inv_tau, c == p.excl[r],
                                  c == p.pos[r]);
          }
        }
        add_tile_times(tile.data(), nc, nr, kRows, p.q + r0 * p.F, p.F, grad_k + c0 * p.F);
      }
    }
  });
}

// Pools one view's packed frames [total, F] into instances and L2-normalizes them:
// z [M, F] (acc_t) and the norms before normalization [M].
template <typename scalar_t, typename acc_t>
void pool_normalize(const scalar_t* frames, const int64_t* offsets, int64_t N, int64_t F,
                    InstanceMapping map, acc_t* z, acc_t* norms) {
  at::parallel_for(0, N, 1, [&](int64_t i0, int64_t i1) {
    for (int64_t i = i0; i < i1; ++i) {
      const int64_t off = offsets[i], T = offsets[i + 1] - off;
      const int64_t first = map.per_frame ? off : i * map.num_windows;
      const int64_t count = map.per_frame ? T : map.num_windows;
      for (int64_t j = 0; j < count; ++j) {
        const int64_t s = map.per_frame ? j : window_start(j, T, map.num_windows);
        const int64_t e = map.per_frame ? j + 1 : window_end(j, T, map.num_windows);
        acc_t* u = z + (first + j) * F;
        std::fill(u, u + F, acc_t(0));
        for (int64_t t = s; t < e; ++t) {
          const scalar_t* f = frames + (off + t) * F;
          for (int64_t d = 0; d < F; ++d) u[d] += static_cast<acc_t>(f[d]);
        }
        acc_t sq = 0;
        const acc_t inv_len = acc_t(1) / acc_t(e - s);
        for (int64_t d = 0; d < F; ++d) {
          u[d] *= inv_len;
          sq += u[d] * u[d];
        }
        const acc_t norm = std::sqrt(sq);
        norms[first + j] = norm;
        const acc_t inv = acc_t(1) / std::max(norm, acc_t(kNormEps));
        for (int64_t d = 0; d < F; ++d) u[d] *= inv;
      }
    }
  });
}

// Backward of pool_normalize: grad_frames [total, F] from dz [M, F].
template <typename scalar_t, typename acc_t>
void pool_normalize_backward(const acc_t* dz, const acc_t* z, const acc_t* norms,
                             const int64_t* offsets, int64_t N, int64_t F, InstanceMapping map,
                             scalar_t* grad_frames) {
  at::parallel_for(0, N, 1, [&](int64_t i0, int64_t i1) {
    std::vector<acc_t> du, acc(F);
    for (int64_t i = i0; i < i1; ++i) {
      const int64_t off = offsets[i], T = offsets[i + 1] - off;
      const int64_t first = map.per_frame ? off : i * map.num_windows;
      const int64_t count = map.per_frame ? T : map.num_windows;
      // Through the normalization: du = (dz - z <z, dz>) / |u|, or dz / eps when clamped.
      du.assign(count * F, acc_t(0));
      for (int64_t j = 0; j < count; ++j) {
        const acc_t* zj = z + (first + j) * F;
        const acc_t* gj = dz + (first + j) * F;
        const acc_t norm = norms[first + j];
        acc_t* dj = du.data() + j * F;
        if (norm > acc_t(kNormEps)) {
          acc_t dot = 0;
          for (int64_t d = 0; d < F; ++d) dot += zj[d] * gj[d];
          for (int64_t d = 0; d < F; ++d) dj[d] = (gj[d] - zj[d] * dot) / norm;
        } else {
          for (int64_t d = 0; d < F; ++d) dj[d] = gj[d] / acc_t(kNormEps);
        }
      }
      // Through the pooling: each frame gathers du / |window| of every window holding it.
      for (int64_t t = 0; t < T; ++t) {
        scalar_t* out = grad_frames + (off + t) * F;
        if (map.per_frame) {
          for (int64_t d = 0; d < F; ++d) out[d] = static_cast<scalar_t>(du[t * F + d]);
          continue;
        }
        const int64_t Tw = map.num_windows;
        std::fill(acc.begin(), acc.end(), acc_t(0));
        const int64_t j_lo = std::max<int64_t>(0, t * Tw / T - 1);
        const int64_t j_hi = std::min<int64_t>(Tw - 1, (t + 1) * Tw / T + 1);
        for (int64_t j = j_lo; j <= j_hi; ++j) {
          const int64_t s = window_start(j, T, Tw), e = window_end(j, T, Tw);
          if (t < s || t >= e) continue;
          const acc_t w = acc_t(1) / acc_t(e - s);
          for (int64_t d = 0; d < F; ++d) acc[d] += w * du[j * F + d];
        }
        for (int64_t d = 0; d < F; ++d) out[d] = static_cast<scalar_t>(acc[d]);
      }
    }
  });
}

at::ScalarType acc_dtype(at::ScalarType t) { return t == at::kDouble ? at::kDouble : at::kFloat; }

// Positive (twin) and excluded (self) column of each of seq_nce's 2M rows.
std::pair<at::Tensor, at::Tensor> twin_indices(int64_t M) {
  at::Tensor pos = at::empty({2 * M}, at::kLong), excl = at::empty({2 * M}, at::kLong);
  auto* pp = pos.data_ptr<int64_t>();
  auto* pe = excl.data_ptr<int64_t>();
  for (int64_t r = 0; r < 2 * M; ++r) {
    pp[r] = twin_row(r, M);
    pe[r] = r;
  }
  return {pos, excl};
}

std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor> seq_nce_cpu(
    const at::Tensor& frames_a, const at::Tensor& frames_b, const at::Tensor& lengths,
    c10::string_view mapping, int64_t num_windows, double temperature) {
  const InstanceMapping map = parse_mapping(mapping, num_windows);
  const at::Tensor offsets = check_seq_nce_args(frames_a, frames_b, lengths, temperature);
  const int64_t N = lengths.size(0), total = frames_a.size(0), F = frames_a.size(1);
  const int64_t M = instances_per_view(map, total, N);
  const auto dtype = frames_a.scalar_type(), acc = acc_dtype(dtype);
  at::Tensor z = at::empty({2 * M, F}, frames_a.options().dtype(acc));
  at::Tensor norms = at::empty({2 * M}, z.options());
  at::Tensor loss_rows = at::empty({2 * M}, z.options()), lse = at::empty({2 * M}, z.options());
  const auto [pos, excl] = twin_indices(M);
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, dtype, "seq_nce_cpu", [&] {
    using acc_t = at::opmath_type<scalar_t>;
    const at::Tensor a = frames_a.contiguous(), b = frames_b.contiguous();
    const int64_t* off = offsets.data_ptr<int64_t>();
    acc_t* zp = z.data_ptr<acc_t>();
    acc_t* np = norms.data_ptr<acc_t>();
    pool_normalize<scalar_t, acc_t>(a.data_ptr<scalar_t>(), off, N, F, map, zp, np);
    pool_normalize<scalar_t, acc_t>(b.data_ptr<scalar_t>(), off, N, F, map, zp + M * F, np + M);
    const NceProblem<acc_t> p{zp, zp, 2 * M, 2 * M, F, pos.data_ptr<int64_t>(),
                              excl.data_ptr<int64_t>(), acc_t(1.0 / temperature)};
    nce_forward(p, loss_rows.data_ptr<acc_t>(), lse.data_ptr<acc_t>());
  });
  return {loss_rows.mean().to(dtype), z.to(dtype), norms, lse};
}

std::tuple<at::Tensor, at::Tensor> seq_nce_backward_cpu(
    const at::Tensor& grad_loss, const at::Tensor& instances, const at::Tensor& norms,
    const at::Tensor& lse, const at::Tensor& lengths, c10::string_view mapping,
    int64_t num_windows, double temperature, int64_t total_frames) {
  const InstanceMapping map = parse_mapping(mapping, num_windows);
  const at::Tensor offsets = lengths_to_offsets(lengths.to(at::kLong)).contiguous();
  const int64_t N = lengths.size(0), F = instances.size(1), M = instances.size(0) / 2;
  const auto dtype = instances.scalar_type(), acc = acc_dtype(dtype);
  const at::Tensor z = instances.to(acc).contiguous();
  const at::Tensor norms_c = norms.contiguous(), lse_c = lse.contiguous();
  at::Tensor dz = at::zeros({2 * M, F}, z.options());
  at::Tensor grad_a = at::empty({total_frames, F}, instances.options());
  at::Tensor grad_b = at::empty({total_frames, F}, instances.options());
  const auto [pos, excl] = twin_indices(M);
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, dtype, "seq_nce_backward_cpu", [&] {
    using acc_t = at::opmath_type<scalar_t>;
    // loss = mean over 2M rows: every row's upstream gradient is grad_loss / 2M.
    const std::vector<acc_t> g(2 * M, static_cast<acc_t>(grad_loss.item<double>() / (2.0 * M)));
    const acc_t* zp = z.data_ptr<acc_t>();
    const NceProblem<acc_t> p{zp, zp, 2 * M, 2 * M, F, pos.data_ptr<int64_t>(),
                              excl.data_ptr<int64_t>(), acc_t(1.0 / temperature)};
    acc_t* dzp = dz.data_ptr<acc_t>();
    nce_backward_rows(p, g.data(), lse_c.data_ptr<acc_t>(), /*symmetric=*/true, dzp);
    const int64_t* off = offsets.data_ptr<int64_t>();
    const acc_t* np = norms_c.data_ptr<acc_t>();
    pool_normalize_backward<scalar_t, acc_t>(dzp, zp, np, off, N, F, map,
                                             grad_a.data_ptr<scalar_t>());
    pool_normalize_backward<scalar_t, acc_t>(dzp + M * F, zp + M * F, np + M, off, N, F, map,
                                             grad_b.data_ptr<scalar_t>());
  });
  return {grad_a, grad_b};
}

std::tuple<at::Tensor, at::Tensor> nce_rows_cpu(const at::Tensor& rows, const at::Tensor& cols,
                                                const at::Tensor& positive,
                                                const at::Tensor& exclude, double temperature) {
  check_nce_rows_args(rows, cols, positive, exclude, temperature);
  const auto dtype = rows.scalar_type(), acc = acc_dtype(dtype);
  const at::Tensor q = rows.to(acc).contiguous(), k = cols.to(acc).contiguous();
  const at::Tensor pos = positive.contiguous(), excl = exclude.contiguous();
  at::Tensor loss = at::empty({rows.size(0)}, q.options()), lse = at::empty_like(loss);
  AT_DISPATCH_FLOATING_TYPES(acc, "nce_rows_cpu", [&] {
    const NceProblem<scalar_t> p{q.data_ptr<scalar_t>(), k.data_ptr<scalar_t>(), q.size(0),
                                 k.size(0), q.size(1), pos.data_ptr<int64_t>(),
                                 excl.data_ptr<int64_t>(), scalar_t(1.0 / temperature)};
    nce_forward(p, loss.data_ptr<scalar_t>(), lse.data_ptr<scalar_t>());
  });
  return {loss.to(dtype), lse};
}

std::tuple<at::Tensor, at::Tensor> nce_rows_backward_cpu(
    const at::Tensor& grad_loss, const at::Tensor& rows, const at::Tensor& cols,
    const at::Tensor& positive, const at::Tensor& exclude, const at::Tensor& lse,
    double temperature) {
  const auto dtype = rows.scalar_type(), acc = acc_dtype(dtype);
  const at::Tensor q = rows.to(acc).contiguous(), k = cols.to(acc).contiguous();
  const at::Tensor g = grad_loss.to(acc).contiguous(), lse_c = lse.to(acc).contiguous();
  const at::Tensor pos = positive.contiguous(), excl = exclude.contiguous();
  at::Tensor grad_q = at::zeros_like(q), grad_k = at::zeros_like(k);
  AT_DISPATCH_FLOATING_TYPES(acc, "nce_rows_backward_cpu", [&] {
    const NceProblem<scalar_t> p{q.data_ptr<scalar_t>(), k.data_ptr<scalar_t>(), q.size(0),
                                 k.size(0), q.size(1), pos.data_ptr<int64_t>(),
                                 excl.data_ptr<int64_t>(), scalar_t(1.0 / temperature)};
    const scalar_t* gp = g.data_ptr<scalar_t>();
    const scalar_t* lp = lse_c.data_ptr<scalar_t>();
    nce_backward_rows(p, gp, lp, /*symmetric=*/false, grad_q.data_ptr<scalar_t>());
    nce_backward_cols(p, gp, lp, grad_k.data_ptr<scalar_t>());
  });
  return {grad_q.to(dtype), grad_k.to(dtype)};
}

}  // namespace

TORCH_LIBRARY_IMPL(seqclr_ext, CPU, m) {
  m.impl("seq_nce", &seq_nce_cpu);
  m.impl("seq_nce_backward", &seq_nce_backward_cpu);
  m.impl("nce_rows", &nce_rows_cpu);
  m.impl("nce_rows_backward", &nce_rows_backward_cpu);
}

}  // namespace seqclr_ext
