// Argument checks of siman_normalize, shared by the CPU and CUDA kernels.
#include "siman_normalize.h"

namespace seqclr_ext {
namespace {

void check_feature_map(const at::Tensor& t, const char* name) {
  TORCH_CHECK(t.dim() == 4, name, " must be a 4-D [B, C, H, W] tensor, got ", t.dim(),
              "-D of shape ", t.sizes());
  TORCH_CHECK(t.size(1) > 0 && t.size(2) > 0 && t.size(3) > 0, name,
              " must have C, H, W >= 1, got shape ", t.sizes());
}

void check_stats(const at::Tensor& t, const char* name, const at::Tensor& content,
                 at::ScalarType acc) {
  TORCH_CHECK(t.dim() == 3 && t.size(0) == content.size(0) && t.size(1) == 2 &&
                  t.size(2) == content.size(1),
              name, " must have shape [", content.size(0), ", 2, ", content.size(1), "], got ",
              t.sizes());
  TORCH_CHECK(t.scalar_type() == acc, name, " must be ", acc, ", got ", t.scalar_type());
  check_same_device(t, name, content, "content");
}

}  // namespace

void check_siman_normalize_args(const at::Tensor& content, const at::Tensor& style,
                                int64_t kernel_size, double eps) {
  check_feature_map(content, "content");
  check_feature_map(style, "style");
  const auto dt = content.scalar_type();
  check_floating(content, "content");
  TORCH_CHECK(style.scalar_type() == dt, "style must have content's dtype ", dt, ", got ",
              style.scalar_type());
  check_same_device(style, "style", content, "content");
  TORCH_CHECK(style.size(0) == content.size(0), "style must have content's batch size ",
              content.size(0), ", got ", style.size(0));
  TORCH_CHECK(style.size(1) == content.size(1), "style must have content's channel count ",
              content.size(1), ", got ", style.size(1));
  TORCH_CHECK(kernel_size >= 1 && kernel_size % 2 == 1,
              "kernel_size must be an odd integer >= 1, got ", kernel_size);
  TORCH_CHECK(kernel_size <= style.size(2) && kernel_size <= style.size(3),
              "kernel_size must be at most the style map's height and width (H_s = ",
              style.size(2), ", W_s = ", style.size(3), "), got ", kernel_size);
  TORCH_CHECK(eps > 0 && std::isfinite(eps), "eps must be a finite number > 0, got ", eps);
}

void check_siman_normalize_backward_args(const at::Tensor& grad_out, const at::Tensor& content,
                                         const at::Tensor& style, const at::Tensor& lse,
                                         const at::Tensor& content_stats,
                                         const at::Tensor& style_stats, int64_t kernel_size,
                                         double eps) {
  check_siman_normalize_args(content, style, kernel_size, eps);
  TORCH_CHECK(grad_out.sizes() == content.sizes(), "grad_out must have content's shape ",
              content.sizes(), ", got ", grad_out.sizes());
  TORCH_CHECK(grad_out.scalar_type() == content.scalar_type(),
              "grad_out must have content's dtype ", content.scalar_type(), ", got ",
              grad_out.scalar_type());
  check_same_device(grad_out, "grad_out", content, "content");
  const auto acc = acc_dtype(content.scalar_type());
  const int64_t B = content.size(0), N = content.size(2) * content.size(3);
  TORCH_CHECK(lse.dim() == 2 && lse.size(0) == B && lse.size(1) == N, "lse must have shape [",
              B, ", ", N, "], got ", lse.sizes());
  TORCH_CHECK(lse.scalar_type() == acc, "lse must be ", acc, ", got ", lse.scalar_type());
  check_same_device(lse, "lse", content, "content");
  check_stats(content_stats, "content_stats", content, acc);
  check_stats(style_stats, "style_stats", content, acc);
}

}  // namespace seqclr_ext
