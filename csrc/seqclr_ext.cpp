// The schema of every seqclr_ext operator. Kernels are registered per device with
// TORCH_LIBRARY_IMPL next to their sources (csrc/<op>/<op>_{cpu,cuda}.*); autograd and
// fake (meta) kernels are registered from Python in seqclr_ext/ops.
#include <torch/library.h>

TORCH_LIBRARY(seqclr_ext, m) {
  // SeqCLR loss (DESIGN.md §1): pool both packed views to instances, L2-normalize, and
  // take the mean NT-Xent over the 2M rows of [Z_a; Z_b]. Also returns what the backward
  // needs: the normalized instances [2M, F], their pre-normalization norms [2M] and each
  // row's log-sum-exp [2M] (float32, float64 for float64 inputs).
  m.def(
      "seq_nce(Tensor frames_a, Tensor frames_b, Tensor lengths, str mapping, "
      "int num_windows, float temperature) -> "
      "(Tensor loss, Tensor instances, Tensor norms, Tensor lse)");
  m.def(
      "seq_nce_backward(Tensor grad_loss, Tensor instances, Tensor norms, Tensor lse, "
      "Tensor lengths, str mapping, int num_windows, float temperature, "
      "SymInt total_frames) -> (Tensor grad_a, Tensor grad_b)");
  // The primitive under seq_nce: row r of `rows` against every column of `cols`,
  // positive column positive[r], column exclude[r] left out of the denominator (-1:
  // none). Returns each row's loss -log softmax at the positive, and its log-sum-exp.
  m.def(
      "nce_rows(Tensor rows, Tensor cols, Tensor positive, Tensor exclude, "
      "float temperature) -> (Tensor loss, Tensor lse)");
  m.def(
      "nce_rows_backward(Tensor grad_loss, Tensor rows, Tensor cols, Tensor positive, "
      "Tensor exclude, Tensor lse, float temperature) -> (Tensor grad_rows, Tensor grad_cols)");
  // TPS rectification (DESIGN.md §2): warp image [B, C, H, W] with control points C′
  // [B, K, 2] to [B, C, H_out, W_out]. The backward returns d/d image (a zero-size tensor
  // when image_requires_grad is false) and d/d control_points.
  m.def("tps_grid_sample(Tensor image, Tensor control_points, SymInt[2] output_size) -> Tensor");
  m.def(
      "tps_grid_sample_backward(Tensor grad_output, Tensor image, Tensor control_points, "
      "bool image_requires_grad) -> (Tensor grad_image, Tensor grad_control_points)");
  // SimAN's similarity-aware normalization (DESIGN.md §3): content [B, C, H, W] takes the
  // local statistics (k×k, eq. 1) of the style [B, C, H_s, W_s] positions it resembles.
  // Also returns what the backward needs: every content position's log-sum-exp of the
  // scores [B, H·W], and the instance-norm (mean, rstd) of content and style [B, 2, C]
  // (float32, float64 for float64 inputs).
  m.def(
      "siman_normalize(Tensor content, Tensor style, int kernel_size, float eps) -> "
      "(Tensor out, Tensor lse, Tensor content_stats, Tensor style_stats)");
  m.def(
      "siman_normalize_backward(Tensor grad_out, Tensor content, Tensor style, Tensor lse, "
      "Tensor content_stats, Tensor style_stats, int kernel_size, float eps) -> "
      "(Tensor grad_content, Tensor grad_style)");
}
