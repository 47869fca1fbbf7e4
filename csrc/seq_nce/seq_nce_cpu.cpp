// CPU kernels of seq_nce and nce_rows (DESIGN.md §1).
//
// The similarity matrix is never stored: rows are processed in blocks, each block sweeps
// the columns in tiles (a BLAS GEMM into a per-thread [kRows, kCols] buffer) and keeps an
// online log-sum-exp. The backward recomputes each tile from the saved per-row log-sum-exp.
// Row blocks own their gradient rows and column blocks their gradient columns, so the
// result is deterministic without atomics. Everything accumulates in float32 (float64 for
// float64 inputs).
#include "seq_nce.h"
#include "../cpu_parallel.h"

#include <ATen/Dispatch.h>
#include <ATen/OpMathType.h>
#include <ATen/Parallel.h>
#include <ATen/ops/empty.h>
#include <ATen/ops/amax.h>
#include <ATen/ops/full.h>
#include <ATen/ops/mm.h>
#include <ATen/ops/mul.h>
#include <ATen/ops/sum.h>
#include <ATen/ops/empty_like.h>
#include <ATen/ops/zeros.h>
#include <ATen/ops/zeros_like.h>
#include <torch/library.h>

#include <algorithm>
#include <array>
#include <limits>
#include <utility>
#include <vector>

namespace seqclr_ext {
namespace {

constexpr int64_t kRows = 128;  // rows per block
constexpr int64_t kCols = 512;  // columns per tile

// One NCE problem: rows q [R, F] against columns k [C, F] (contiguous, accumulation dtype),
// row r's positive column pos[r] and excluded column excl[r] (-1: none).
struct NceProblem {
  at::Tensor q, k;
  const int64_t* pos;
  const int64_t* excl;
  double inv_tau;
};

// The tiles are per-thread buffers filled by ATen's BLAS and transformed in place by
// ATen's vectorized elementwise kernels (single-threaded inside our parallel region).
template <typename acc_t>
void nce_forward(const NceProblem& p, acc_t* loss, acc_t* lse) {
  const int64_t R = p.q.size(0), C = p.k.size(0);
  at::parallel_for(0, (R + kRows - 1) / kRows, 1, [&](int64_t b0, int64_t b1) {
    const PlainAtenGuard plain_aten;
    at::Tensor buf = at::empty({kRows, kCols}, p.q.options());
    at::Tensor block_max = at::empty({kRows, 1}, p.q.options());
    at::Tensor block_sum = at::empty({kRows}, p.q.options());
    std::array<acc_t, kRows> m, s, pos_logit;
    for (int64_t b = b0; b < b1; ++b) {
      const int64_t r0 = b * kRows, nr = std::min(kRows, R - r0);
      m.fill(-std::numeric_limits<acc_t>::infinity());
      s.fill(acc_t(0));
      for (int64_t c0 = 0; c0 < C; c0 += kCols) {
        const int64_t nc = std::min(kCols, C - c0);
        at::Tensor x = buf.narrow(0, 0, nr).narrow(1, 0, nc);
        at::mm_out(x, p.q.narrow(0, r0, nr), p.k.narrow(0, c0, nc).t());
        x.mul_(p.inv_tau);
        acc_t* xp = buf.data_ptr<acc_t>();
        for (int64_t i = 0; i < nr; ++i) {
          const int64_t e = p.excl[r0 + i] - c0, pc = p.pos[r0 + i] - c0;
          if (pc >= 0 && pc < nc) pos_logit[i] = xp[i * kCols + pc];
          if (e >= 0 && e < nc) xp[i * kCols + e] = -std::numeric_limits<acc_t>::infinity();
        }
        at::Tensor mx = block_max.narrow(0, 0, nr), sm = block_sum.narrow(0, 0, nr);
        at::amax_out(mx, x, 1, /*keepdim=*/true);
        at::sum_out(sm, x.sub_(mx).exp_(), 1);
        const acc_t* mxp = mx.data_ptr<acc_t>();
        const acc_t* smp = sm.data_ptr<acc_t>();
        // A row whose tile held only its excluded column has max -inf: lse_merge skips it.
        for (int64_t i = 0; i < nr; ++i) lse_merge(m[i], s[i], mxp[i], smp[i]);
      }
      for (int64_t i = 0; i < nr; ++i) {
        lse[r0 + i] = m[i] + std::log(s[i]);
        loss[r0 + i] = lse[r0 + i] - pos_logit[i];
      }
    }
  });
}

// W = dS (or dS + dS^T) for one tile x of raw dot products, in place: x[i, j] holds
// q_{r0+i} · k_{c0+j}. dS_rc = g_r/τ (softmax_rc - [c = pos_r]), 0 at c = excl_r.
// gt = g/τ per row, as a tensor.
template <typename acc_t>
void logit_grads(const NceProblem& p, at::Tensor x, int64_t r0, int64_t c0, const at::Tensor& lse,
                 const at::Tensor& gt, bool symmetric, at::Tensor scratch) {
  const int64_t nr = x.size(0), nc = x.size(1), ld = x.stride(0);
  acc_t* xp = x.data_ptr<acc_t>();
  const acc_t* gp = gt.data_ptr<acc_t>();
  at::Tensor y;
  if (symmetric) {  // the transposed term g_c/τ (softmax_cr - [r = pos_c]), same tile
    y = scratch.narrow(0, 0, nr).narrow(1, 0, nc);
    at::mul_out(y, x, p.inv_tau);
    y.sub_(lse.narrow(0, c0, nc).unsqueeze(0)).exp_().mul_(gt.narrow(0, c0, nc).unsqueeze(0));
  }
  x.mul_(p.inv_tau).sub_(lse.narrow(0, r0, nr).unsqueeze(1)).exp_();
  x.mul_(gt.narrow(0, r0, nr).unsqueeze(1));
  acc_t* yp = symmetric ? y.data_ptr<acc_t>() : nullptr;
  for (int64_t i = 0; i < nr; ++i) {
    const int64_t r = r0 + i, e = p.excl[r] - c0, pc = p.pos[r] - c0;
    if (e >= 0 && e < nc) xp[i * ld + e] = 0;
    if (pc >= 0 && pc < nc) xp[i * ld + pc] -= gp[r];
    // seq_nce's pairing (excl[r] = r, pos an involution) puts the transposed term's
    // excluded and positive entries of row r at the same two columns.
    if (symmetric && e >= 0 && e < nc) yp[i * ld + e] = 0;
    if (symmetric && pc >= 0 && pc < nc) yp[i * ld + pc] -= gp[p.pos[r]];
  }
  if (symmetric) x.add_(y);
}

// grad_q = dS · k by row blocks (each block owns its gradient rows). With `symmetric` (q
// and k are the same matrix with seq_nce's pairing) it adds dS^T · q from the same
// recomputed tile, so one pass gives the whole gradient of the shared matrix.
template <typename acc_t>
void nce_backward_rows(const NceProblem& p, const at::Tensor& gt, const at::Tensor& lse,
                       bool symmetric, at::Tensor& grad_q) {
  const int64_t R = p.q.size(0), C = p.k.size(0);
  at::parallel_for(0, (R + kRows - 1) / kRows, 1, [&](int64_t b0, int64_t b1) {
    const PlainAtenGuard plain_aten;
    at::Tensor buf = at::empty({kRows, kCols}, p.q.options());
    at::Tensor scratch = symmetric ? at::empty({kRows, kCols}, p.q.options()) : at::Tensor();
    for (int64_t b = b0; b < b1; ++b) {
      const int64_t r0 = b * kRows, nr = std::min(kRows, R - r0);
      at::Tensor g_blk = grad_q.narrow(0, r0, nr);
      for (int64_t c0 = 0; c0 < C; c0 += kCols) {
        const int64_t nc = std::min(kCols, C - c0);
        at::Tensor x = buf.narrow(0, 0, nr).narrow(1, 0, nc);
        at::mm_out(x, p.q.narrow(0, r0, nr), p.k.narrow(0, c0, nc).t());
        logit_grads<acc_t>(p, x, r0, c0, lse, gt, symmetric, scratch);
        g_blk.addmm_(x, p.k.narrow(0, c0, nc));
      }
    }
  });
}

// grad_k = dS^T · q by column blocks (each block owns its gradient rows).
template <typename acc_t>
void nce_backward_cols(const NceProblem& p, const at::Tensor& gt, const at::Tensor& lse,
                       at::Tensor& grad_k) {
  const int64_t R = p.q.size(0), C = p.k.size(0);
  at::parallel_for(0, (C + kCols - 1) / kCols, 1, [&](int64_t b0, int64_t b1) {
    const PlainAtenGuard plain_aten;
    at::Tensor buf = at::empty({kRows, kCols}, p.q.options());
    for (int64_t b = b0; b < b1; ++b) {
      const int64_t c0 = b * kCols, nc = std::min(kCols, C - c0);
      at::Tensor g_blk = grad_k.narrow(0, c0, nc);
      for (int64_t r0 = 0; r0 < R; r0 += kRows) {
        const int64_t nr = std::min(kRows, R - r0);
        at::Tensor x = buf.narrow(0, 0, nr).narrow(1, 0, nc);
        at::mm_out(x, p.q.narrow(0, r0, nr), p.k.narrow(0, c0, nc).t());
        logit_grads<acc_t>(p, x, r0, c0, lse, gt, /*symmetric=*/false, at::Tensor());
        g_blk.addmm_(x.t(), p.q.narrow(0, r0, nr));
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
  const auto dtype = frames_a.scalar_type();
  at::Tensor z = at::empty({2 * M, F}, frames_a.options().dtype(acc_dtype(dtype)));
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
  });
  // The saved instances are in the input dtype, and the logits are computed from exactly
  // what is saved: the backward recomputes them from it, and must meet the same lse.
  at::Tensor instances = z.to(dtype);
  const at::Tensor zq = instances.to(z.scalar_type());
  const NceProblem p{zq, zq, pos.data_ptr<int64_t>(), excl.data_ptr<int64_t>(), 1.0 / temperature};
  AT_DISPATCH_FLOATING_TYPES(zq.scalar_type(), "seq_nce_cpu", [&] {
    nce_forward<scalar_t>(p, loss_rows.data_ptr<scalar_t>(), lse.data_ptr<scalar_t>());
  });
  return {loss_rows.mean().to(dtype), instances, norms, lse};
}

std::tuple<at::Tensor, at::Tensor> seq_nce_backward_cpu(
    const at::Tensor& grad_loss, const at::Tensor& instances, const at::Tensor& norms,
    const at::Tensor& lse, const at::Tensor& lengths, c10::string_view mapping,
    int64_t num_windows, double temperature, int64_t total_frames) {
  const InstanceMapping map = parse_mapping(mapping, num_windows);
  const at::Tensor offsets = lengths_to_offsets(lengths.to(at::kLong)).contiguous();
  const int64_t N = lengths.size(0), F = instances.size(1), M = instances.size(0) / 2;
  const auto dtype = instances.scalar_type();
  const at::Tensor z = instances.to(acc_dtype(dtype)).contiguous();
  const at::Tensor norms_c = norms.contiguous(), lse_c = lse.contiguous();
  // loss = mean over the 2M rows: each row's upstream gradient is grad_loss / 2M.
  const at::Tensor gt = at::full({2 * M}, grad_loss.item<double>() / (2.0 * M * temperature),
                                 z.options());
  at::Tensor dz = at::zeros({2 * M, F}, z.options());
  at::Tensor grad_a = at::empty({total_frames, F}, instances.options());
  at::Tensor grad_b = at::empty({total_frames, F}, instances.options());
  const auto [pos, excl] = twin_indices(M);
  const NceProblem p{z, z, pos.data_ptr<int64_t>(), excl.data_ptr<int64_t>(), 1.0 / temperature};
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, dtype, "seq_nce_backward_cpu", [&] {
    using acc_t = at::opmath_type<scalar_t>;
    nce_backward_rows<acc_t>(p, gt, lse_c, /*symmetric=*/true, dz);
    const int64_t* off = offsets.data_ptr<int64_t>();
    const acc_t* zp = z.data_ptr<acc_t>();
    const acc_t* dzp = dz.data_ptr<acc_t>();
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
  const at::Tensor pos = positive.contiguous(), excl = exclude.contiguous();
  const NceProblem p{rows.to(acc).contiguous(), cols.to(acc).contiguous(),
                     pos.data_ptr<int64_t>(), excl.data_ptr<int64_t>(), 1.0 / temperature};
  at::Tensor loss = at::empty({rows.size(0)}, p.q.options()), lse = at::empty_like(loss);
  AT_DISPATCH_FLOATING_TYPES(acc, "nce_rows_cpu", [&] {
    nce_forward<scalar_t>(p, loss.data_ptr<scalar_t>(), lse.data_ptr<scalar_t>());
  });
  return {loss.to(dtype), lse};
}

std::tuple<at::Tensor, at::Tensor> nce_rows_backward_cpu(
    const at::Tensor& grad_loss, const at::Tensor& rows, const at::Tensor& cols,
    const at::Tensor& positive, const at::Tensor& exclude, const at::Tensor& lse,
    double temperature) {
  const auto dtype = rows.scalar_type(), acc = acc_dtype(dtype);
  const at::Tensor pos = positive.contiguous(), excl = exclude.contiguous();
  const NceProblem p{rows.to(acc).contiguous(), cols.to(acc).contiguous(),
                     pos.data_ptr<int64_t>(), excl.data_ptr<int64_t>(), 1.0 / temperature};
  const at::Tensor gt = grad_loss.to(acc).mul(1.0 / temperature).contiguous();
  const at::Tensor lse_c = lse.to(acc).contiguous();
  at::Tensor grad_q = at::zeros_like(p.q), grad_k = at::zeros_like(p.k);
  AT_DISPATCH_FLOATING_TYPES(acc, "nce_rows_backward_cpu", [&] {
    nce_backward_rows<scalar_t>(p, gt, lse_c, /*symmetric=*/false, grad_q);
    nce_backward_cols<scalar_t>(p, gt, lse_c, grad_k);
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
