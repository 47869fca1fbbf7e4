// Shared by the CPU and CUDA kernels of siman_normalize (DESIGN.md §3): argument checks
// (siman_normalize.cpp) and the local-statistics formulas both devices must agree on.
//
// Notation of both kernels, per image: ĉ = IN(content) [C, N] (N = H·W content positions),
// key = IN(style) / √C [C, L] (L = H_s·W_s style positions; the 1/√C of the scores folded
// in), the value V = [μ, σ] of every style position (SimAN eq. 1), scores S = ĉᵀ key
// [N, L], A = softmax over L, out = σ̂ ⊙ ĉ + μ̂ with [μ̂, σ̂] = A Vᵀ. The forward saves only
// the per-(image, channel) mean and rstd = 1/sqrt(var + eps) of both inputs and the
// log-sum-exp of every row of S; the backward recomputes S and A from them.
#pragma once

#include "../common.h"

#include <ATen/core/Tensor.h>
#include <c10/macros/Macros.h>

#include <cmath>
#include <cstdint>

namespace seqclr_ext {

// Checks siman_normalize's arguments: content [B, C, H, W] and style [B, C, H_s, W_s]
// floating, same dtype and device, C, H, W, H_s, W_s >= 1; kernel_size odd, >= 1 and at
// most H_s and W_s; eps finite and > 0.
void check_siman_normalize_args(const at::Tensor& content, const at::Tensor& style,
                                int64_t kernel_size, double eps);

// Checks siman_normalize_backward's arguments: those of the forward, grad_out of content's
// shape, dtype and device, lse [B, H·W] and the stats [B, 2, C] of the forward.
void check_siman_normalize_backward_args(const at::Tensor& grad_out, const at::Tensor& content,
                                         const at::Tensor& style, const at::Tensor& lse,
                                         const at::Tensor& content_stats,
                                         const at::Tensor& style_stats, int64_t kernel_size,
                                         double eps);

// [lo, hi): the positions of the k×k neighbourhood (half = k / 2) around i that exist on a
// side of n positions.
C10_HOST_DEVICE inline void window(int64_t i, int64_t n, int64_t half, int64_t& lo,
                                   int64_t& hi) {
  lo = i - half > 0 ? i - half : 0;
  hi = i + half + 1 < n ? i + half + 1 : n;
}

// SimAN eq. 1 at (i, j) of a contiguous H × W plane: the mean μ and σ = sqrt(var + eps)
// (biased variance, two passes) over the neighbourhood positions that exist.
template <typename acc_t, typename T>
C10_HOST_DEVICE inline void local_stats(const T* plane, int64_t H, int64_t W, int64_t half,
                                        int64_t i, int64_t j, acc_t eps, acc_t& mu,
                                        acc_t& sigma) {
  int64_t r0, r1, c0, c1;
  window(i, H, half, r0, r1);
  window(j, W, half, c0, c1);
  const acc_t inv_n = acc_t(1) / static_cast<acc_t>((r1 - r0) * (c1 - c0));
  acc_t sum = 0;
  for (int64_t r = r0; r < r1; ++r) {
    for (int64_t c = c0; c < c1; ++c) sum += static_cast<acc_t>(plane[r * W + c]);
  }
  mu = sum * inv_n;
  acc_t sq = 0;
  for (int64_t r = r0; r < r1; ++r) {
    for (int64_t c = c0; c < c1; ++c) {
      const acc_t d = static_cast<acc_t>(plane[r * W + c]) - mu;
      sq += d * d;
    }
  }
  sigma = std::sqrt(sq * inv_n + eps);
}

// d loss / d s at (i, j) through the local statistics of every position q whose
// neighbourhood holds (i, j) — exactly the neighbourhood of (i, j), the windows being
// symmetric: Σ_q (dμ_q + dσ_q (s_ij − μ_q) / σ_q) / n_q. All planes are contiguous H × W.
template <typename acc_t, typename T>
C10_HOST_DEVICE inline acc_t local_stats_grad(const T* s, const acc_t* mu,
                                              const acc_t* sigma, const acc_t* dmu,
                                              const acc_t* dsigma, int64_t H, int64_t W,
                                              int64_t half, int64_t i, int64_t j) {
  const acc_t x = static_cast<acc_t>(s[i * W + j]);
  int64_t r0, r1, c0, c1;
  window(i, H, half, r0, r1);
  window(j, W, half, c0, c1);
  acc_t g = 0;
  for (int64_t r = r0; r < r1; ++r) {
    int64_t qr0, qr1;
    window(r, H, half, qr0, qr1);
    for (int64_t c = c0; c < c1; ++c) {
      int64_t qc0, qc1;
      window(c, W, half, qc0, qc1);
      const int64_t q = r * W + c;
      const acc_t n = static_cast<acc_t>((qr1 - qr0) * (qc1 - qc0));
      g += (dmu[q] + dsigma[q] * (x - mu[q]) / sigma[q]) / n;
    }
  }
  return g;
}

}  // namespace seqclr_ext
