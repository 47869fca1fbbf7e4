// Shared by the CPU and CUDA kernels of seq_nce and nce_rows: argument checks (host
// code in seq_nce.cpp) and the small formulas both devices must agree on.
#pragma once

#include "../common.h"

#include <ATen/core/Tensor.h>
#include <c10/macros/Macros.h>
#include <c10/util/string_view.h>

#include <cmath>
#include <limits>

namespace seqclr_ext {

// Instances are divided by max(|z|, kNormEps) (seqclr_ext/ops/seq_nce.py: NORM_EPS).
constexpr double kNormEps = 1e-8;
// The most windows per image (seqclr_ext/ops/seq_nce.py: MAX_WINDOWS): a bound, so that a
// mistyped num_windows fails at once instead of running an O((N·num_windows)²) loss for hours.
constexpr int64_t kMaxWindows = 1024;

// How frames become contrastive instances (DESIGN.md §1): one instance per frame, or
// `num_windows` adaptive-average windows per image ("all" is window with 1).
struct InstanceMapping {
  bool per_frame;
  int64_t num_windows;  // unused when per_frame
};

InstanceMapping parse_mapping(c10::string_view mapping, int64_t num_windows);

// Checks seq_nce's arguments; returns the offsets of the packed images, the exclusive
// prefix sum of `lengths` ([N + 1] int64 on lengths' device).
at::Tensor check_seq_nce_args(
    const at::Tensor& frames_a, const at::Tensor& frames_b, const at::Tensor& lengths,
    double temperature);

// Offsets from already-checked lengths (the backward's inputs were checked forward).
at::Tensor lengths_to_offsets(const at::Tensor& lengths);

void check_nce_rows_args(
    const at::Tensor& rows, const at::Tensor& cols, const at::Tensor& positive,
    const at::Tensor& exclude, double temperature);

// Instances per view: one per frame, or num_windows per image.
inline int64_t instances_per_view(InstanceMapping map, int64_t total_frames, int64_t num_images) {
  return map.per_frame ? total_frames : num_images * map.num_windows;
}

// Window j of T' over a sequence of T frames is [start, end): adaptive_avg_pool1d's
// bounds, which overlap when T' does not divide T and repeat frames when T < T'.
C10_HOST_DEVICE inline int64_t window_start(int64_t j, int64_t T, int64_t Tw) {
  return (j * T) / Tw;
}
C10_HOST_DEVICE inline int64_t window_end(int64_t j, int64_t T, int64_t Tw) {
  return ((j + 1) * T + Tw - 1) / Tw;
}

// In seq_nce's [Z_a; Z_b] (2M rows), row r's positive is its twin in the other view.
C10_HOST_DEVICE inline int64_t twin_row(int64_t r, int64_t M) {
  return r < M ? r + M : r - M;
}

// Merges the log-sum-exp state (max m, sum s of exp(x - m)) with a block's (m2, s2).
template <typename acc_t>
C10_HOST_DEVICE inline void lse_merge(acc_t& m, acc_t& s, acc_t m2, acc_t s2) {
  if (m2 == -std::numeric_limits<acc_t>::infinity()) return;
  if (m2 > m) {
    s = s * std::exp(m - m2) + s2;
    m = m2;
  } else {
    s = s + s2 * std::exp(m2 - m);
  }
}

// d loss_r / d logit_rc, scaled by the row's upstream gradient over τ:
// g_r/τ · (softmax_rc − [c is the positive]), the excluded column contributing nothing.
template <typename acc_t>
C10_HOST_DEVICE inline acc_t nce_logit_grad(
    acc_t logit, acc_t lse, acc_t g_over_tau, bool excluded, bool positive) {
  const acc_t p = excluded ? acc_t(0) : std::exp(logit - lse);
  return g_over_tau * (positive ? p - acc_t(1) : p);
}

}  // namespace seqclr_ext
