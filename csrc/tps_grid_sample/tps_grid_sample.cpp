// Argument checks of tps_grid_sample and the K-only part of the TPS (Δ_C⁻¹), shared by the
// CPU and CUDA kernels. Everything here is ATen ops on tiny tensors, on any device.
#include "tps_grid_sample.h"

#include <ATen/ops/empty.h>
#include <ATen/ops/linalg_inv.h>
#include <ATen/ops/linspace.h>
#include <ATen/ops/matmul.h>
#include <ATen/ops/zeros.h>

#include <map>
#include <mutex>
#include <utility>

namespace seqclr_ext {

void check_tps_grid_sample_args(const at::Tensor& image, const at::Tensor& control_points,
                                at::IntArrayRef output_size) {
  TORCH_CHECK(image.dim() == 4, "image must be a 4-D [B, C, H, W] tensor, got ", image.dim(),
              "-D of shape ", image.sizes());
  TORCH_CHECK(image.size(1) > 0 && image.size(2) > 0 && image.size(3) > 0,
              "image must have C, H, W >= 1, got shape ", image.sizes());
  const auto dt = image.scalar_type();
  check_floating(image, "image");
  TORCH_CHECK(control_points.dim() == 3 && control_points.size(2) == 2,
              "control_points must be a 3-D [B, K, 2] tensor, got shape ", control_points.sizes());
  TORCH_CHECK(control_points.size(0) == image.size(0),
              "control_points must have image's batch size ", image.size(0), ", got ",
              control_points.size(0));
  const int64_t K = control_points.size(1);
  TORCH_CHECK(K >= 4 && K % 2 == 0,
              "control_points must hold an even number K >= 4 of points, got K = ", K);
  TORCH_CHECK(control_points.scalar_type() == dt,
              "control_points must have image's dtype ", dt, ", got ",
              control_points.scalar_type());
  check_same_device(control_points, "control_points", image, "image");
  TORCH_CHECK(output_size.size() == 2, "output_size must be (H_out, W_out), got ", output_size);
  TORCH_CHECK(output_size[0] >= 1 && output_size[1] >= 1,
              "output_size must be two positive ints, got ", output_size);
}

void check_tps_grid_sample_backward_args(const at::Tensor& grad_output, const at::Tensor& image,
                                         const at::Tensor& control_points) {
  TORCH_CHECK(grad_output.dim() == 4, "grad_output must be a 4-D [B, C, H_out, W_out] tensor, got ",
              grad_output.dim(), "-D of shape ", grad_output.sizes());
  check_tps_grid_sample_args(image, control_points, grad_output.sizes().slice(2));
  TORCH_CHECK(grad_output.size(0) == image.size(0) && grad_output.size(1) == image.size(1),
              "grad_output must have image's batch and channels [", image.size(0), ", ",
              image.size(1), ", H_out, W_out], got shape ", grad_output.sizes());
  check_same_device(grad_output, "grad_output", image, "image");
}

namespace {

// Base points C [K, 2] and Δ_C⁻¹ [K+3, K+3], float64 on the CPU.
std::pair<at::Tensor, at::Tensor> inverse_system(int64_t K) {
  static std::mutex mutex;
  static std::map<int64_t, std::pair<at::Tensor, at::Tensor>> cache;
  const std::lock_guard<std::mutex> lock(mutex);
  auto it = cache.find(K);
  if (it != cache.end()) return it->second;
  const auto opts = at::TensorOptions().dtype(at::kDouble);
  // x = linspace(-1, 1, K/2) on both edges, y = -1 (top) then +1 (bottom).
  const at::Tensor xs = at::linspace(-1.0, 1.0, K / 2, opts);
  at::Tensor base = at::empty({K, 2}, opts);
  const double* x = xs.data_ptr<double>();
  double* c = base.data_ptr<double>();
  for (int64_t k = 0; k < K; ++k) {
    c[2 * k] = x[k % (K / 2)];
    c[2 * k + 1] = k < K / 2 ? -1.0 : 1.0;
  }
  // Δ_C = [[1, C, U(C, C)], [0, Cᵀ], [0, 1ᵀ]] (DTRB's GridGenerator).
  at::Tensor delta = at::zeros({K + 3, K + 3}, opts);
  double* d = delta.data_ptr<double>();
  const int64_t n = K + 3;
  for (int64_t i = 0; i < K; ++i) {
    d[i * n] = 1.0;
    d[i * n + 1] = c[2 * i];
    d[i * n + 2] = c[2 * i + 1];
    for (int64_t j = 0; j < K; ++j) {
      const double dx = c[2 * i] - c[2 * j], dy = c[2 * i + 1] - c[2 * j + 1];
      d[i * n + 3 + j] = tps_kernel<double>(dx * dx + dy * dy);
    }
    d[K * n + 3 + i] = c[2 * i];
    d[(K + 1) * n + 3 + i] = c[2 * i + 1];
    d[(K + 2) * n + 3 + i] = 1.0;
  }
  auto entry = std::make_pair(base, at::linalg_inv(delta));
  cache.emplace(K, entry);
  return entry;
}

}  // namespace

TpsSystem tps_system(int64_t num_points, at::ScalarType acc, at::Device device) {
  const auto [base, inv] = inverse_system(num_points);
  const auto opts = at::TensorOptions().device(device);
  return {base.to(opts.dtype(acc)).contiguous(),
          inv.narrow(1, 0, num_points).to(opts.dtype(at::kDouble)).contiguous()};
}

at::Tensor tps_transform(const TpsSystem& sys, const at::Tensor& control_points,
                         at::ScalarType acc) {
  // A contiguous copy: the same BLAS path, hence the same T, whatever the input layout.
  return at::matmul(sys.inv_cols, control_points.to(at::kDouble).contiguous())
      .to(acc)
      .contiguous();
}

at::Tensor tps_control_point_grad(const TpsSystem& sys, const at::Tensor& grad_transform,
                                  at::ScalarType dtype) {
  return at::matmul(sys.inv_cols.t(), grad_transform.to(at::kDouble)).to(dtype);
}

TpsPlan tps_plan(const at::Tensor& image, const at::Tensor& control_points) {
  const auto dtype = image.scalar_type(), acc = acc_dtype(dtype);
  TpsSystem sys = tps_system(control_points.size(1), acc, image.device());
  at::Tensor T = tps_transform(sys, control_points, acc);
  return {dtype, acc, std::move(sys), std::move(T)};
}

TpsGrads tps_grad_buffers(const TpsPlan& plan, const at::Tensor& image, bool image_requires_grad) {
  const int64_t B = image.size(0), K = plan.sys.base.size(0);
  return {image_requires_grad ? at::zeros(image.sizes(), plan.T.options()) : at::Tensor(),
          at::zeros({B, K + 3, 2}, plan.T.options())};
}

std::tuple<at::Tensor, at::Tensor> tps_backward_outputs(const TpsPlan& plan,
                                                         const TpsGrads& grads,
                                                         const at::Tensor& image) {
  return {grads.grad_image.defined() ? grads.grad_image.to(plan.dtype)
                                     : at::empty({0}, image.options()),
          tps_control_point_grad(plan.sys, grads.grad_T, plan.dtype)};
}

}  // namespace seqclr_ext
