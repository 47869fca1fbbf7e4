// CPU kernels of tps_grid_sample (DESIGN.md §2).
//
// Fused: the source point of every output pixel is computed from P̂(p) · T and sampled in
// place; the sampling grid is never stored. P̂ depends only on the output pixel, not on the
// image, so it is tabulated once per call ([K+3, H_out·W_out]: one output plane times K+3,
// its K logarithms per pixel paid once instead of once per image chunk) and every image's
// source points are vectorizable multiply-adds over it. Forward tasks are (output row, image
// chunk); backward tasks are image ranges: each image is handled by exactly one thread, which
// owns its grad_image slice, and d loss / d T of a chunk of images is one small GEMM of the
// chunk's d loss / d (source point) by P̂, so both gradients are deterministic without atomics.
// Everything accumulates in float32 (float64 for float64 inputs).
#include "tps_grid_sample.h"

#include <ATen/Dispatch.h>
#include <ATen/OpMathType.h>
#include <ATen/Parallel.h>
#include <ATen/core/LegacyTypeDispatch.h>
#include <ATen/ops/empty.h>
#include <ATen/ops/mm.h>
#include <torch/library.h>

#include <vector>

namespace seqclr_ext {
namespace {

constexpr int64_t kImagesPerTask = 16;

struct Plane4 {  // strides of a [B, C, H, W] tensor
  int64_t b, c, h, w;
};

inline Plane4 strides4(const at::Tensor& t) {
  return {t.stride(0), t.stride(1), t.stride(2), t.stride(3)};
}

// P̂ of every output pixel, transposed: table [K+3, n] with table[j][h * W_out + w] =
// P̂_j(pixel (h, w)), n = H_out · W_out.
template <typename acc_t>
at::Tensor basis_table(int64_t H_out, int64_t W_out, const acc_t* base, int64_t K,
                       const at::TensorOptions& options) {
  const int64_t n = H_out * W_out;
  at::Tensor table = at::empty({K + 3, n}, options);
  acc_t* tp = table.mutable_data_ptr<acc_t>();
  at::parallel_for(0, H_out, 1, [&](int64_t h0, int64_t h1) {
    for (int64_t h = h0; h < h1; ++h) {
      const acc_t py = pixel_centre<acc_t>(h, H_out);
      for (int64_t j = 0; j < K + 3; ++j) {
        acc_t* row = tp + j * n + h * W_out;
        for (int64_t w = 0; w < W_out; ++w) {
          row[w] = tps_basis<acc_t>(j, pixel_centre<acc_t>(w, W_out), py, base);
        }
      }
    }
  });
  return table;
}

// Source points of one output row for one image: (sx, sy)[w] = P̂(h, w) · T, with `basis`
// the row's slice of the table (entry j at basis[j * n]).
template <typename acc_t>
void source_row(const acc_t* basis, int64_t n, const acc_t* T, int64_t K, int64_t W_out,
                acc_t* sx, acc_t* sy) {
  for (int64_t w = 0; w < W_out; ++w) {
    sx[w] = T[0];
    sy[w] = T[1];
  }
  for (int64_t j = 1; j < K + 3; ++j) {
    const acc_t* row = basis + j * n;
    const acc_t tx = T[2 * j], ty = T[2 * j + 1];
    for (int64_t w = 0; w < W_out; ++w) {
      sx[w] += row[w] * tx;
      sy[w] += row[w] * ty;
    }
  }
}

template <typename scalar_t>
void forward_cpu(const at::Tensor& image, const at::Tensor& T, const at::Tensor& base,
                 at::Tensor& out) {
  using acc_t = at::opmath_type<scalar_t>;
  const int64_t B = image.size(0), C = image.size(1), H = image.size(2), W = image.size(3);
  const int64_t H_out = out.size(2), W_out = out.size(3), K = base.size(0);
  const int64_t n = H_out * W_out;
  const int64_t chunks = (B + kImagesPerTask - 1) / kImagesPerTask;
  const Plane4 s = strides4(image);
  const scalar_t* img = image.const_data_ptr<scalar_t>();
  const acc_t* Tp = T.const_data_ptr<acc_t>();
  scalar_t* op = out.mutable_data_ptr<scalar_t>();
  const at::Tensor table = basis_table<acc_t>(H_out, W_out, base.const_data_ptr<acc_t>(), K,
                                              T.options());
  const acc_t* tp = table.const_data_ptr<acc_t>();
  at::parallel_for(0, H_out * chunks, 1, [&](int64_t i0, int64_t i1) {
    std::vector<acc_t> sx(W_out), sy(W_out);
    std::vector<BilinearTap<acc_t>> taps(W_out);
    for (int64_t item = i0; item < i1; ++item) {
      const int64_t h = item / chunks, chunk = item % chunks;
      const int64_t b_end = std::min(B, (chunk + 1) * kImagesPerTask);
      for (int64_t b = chunk * kImagesPerTask; b < b_end; ++b) {
        source_row<acc_t>(tp + h * W_out, n, Tp + b * 2 * (K + 3), K, W_out, sx.data(),
                          sy.data());
        for (int64_t w = 0; w < W_out; ++w) taps[w] = bilinear_tap<acc_t>(sx[w], sy[w], H, W);
        for (int64_t c = 0; c < C; ++c) {
          const scalar_t* plane = img + b * s.b + c * s.c;
          scalar_t* dst = op + ((b * C + c) * H_out + h) * W_out;
          for (int64_t w = 0; w < W_out; ++w) {
            dst[w] = static_cast<scalar_t>(
                tap_value<acc_t>(tap_corners<scalar_t, acc_t>(plane, s.h, s.w, taps[w]), taps[w]));
          }
        }
      }
    }
  });
}

// grad_image (acc dtype, contiguous, zero-initialized; undefined when not needed) and
// d loss / d T [B, K+3, 2] (acc dtype).
template <typename scalar_t>
void backward_cpu(const at::Tensor& grad_out, const at::Tensor& image, const at::Tensor& T,
                  const at::Tensor& base, at::Tensor& grad_image, at::Tensor& grad_T) {
  using acc_t = at::opmath_type<scalar_t>;
  const int64_t B = image.size(0), C = image.size(1), H = image.size(2), W = image.size(3);
  const int64_t H_out = grad_out.size(2), W_out = grad_out.size(3), K = base.size(0);
  const int64_t n = H_out * W_out;
  const Plane4 s = strides4(image), sg = strides4(grad_out);
  const scalar_t* img = image.const_data_ptr<scalar_t>();
  const scalar_t* go = grad_out.const_data_ptr<scalar_t>();
  const acc_t* Tp = T.const_data_ptr<acc_t>();
  acc_t* gi = grad_image.defined() ? grad_image.mutable_data_ptr<acc_t>() : nullptr;
  acc_t* gT = grad_T.mutable_data_ptr<acc_t>();
  const at::Tensor table = basis_table<acc_t>(H_out, W_out, base.const_data_ptr<acc_t>(), K,
                                              T.options());
  const acc_t* tp = table.const_data_ptr<acc_t>();
  at::parallel_for(0, B, 1, [&](int64_t b0, int64_t b1) {
    at::AutoDispatchBelowADInplaceOrView guard;  // at::mm below, inside a worker thread
    std::vector<acc_t> sx(W_out), sy(W_out);
    std::vector<BilinearTap<acc_t>> taps(W_out);
    // d loss / d (source x, y) of every output pixel of the chunk's images: [2·images, n].
    at::Tensor grad_src = at::empty({2 * kImagesPerTask, n}, T.options());
    acc_t* gs = grad_src.mutable_data_ptr<acc_t>();
    // Chunks of kImagesPerTask images, rows outer: a row of P̂ is shared by the chunk's
    // images and the image rows they touch stay in cache from one output row to the next.
    for (int64_t c0 = b0; c0 < b1; c0 += kImagesPerTask) {
      const int64_t c1 = std::min(b1, c0 + kImagesPerTask);
      for (int64_t h = 0; h < H_out; ++h) {
        for (int64_t b = c0; b < c1; ++b) {
          acc_t* gx = gs + 2 * (b - c0) * n + h * W_out;
          acc_t* gy = gx + n;
          source_row<acc_t>(tp + h * W_out, n, Tp + b * 2 * (K + 3), K, W_out, sx.data(),
                            sy.data());
          for (int64_t w = 0; w < W_out; ++w) {
            taps[w] = bilinear_tap<acc_t>(sx[w], sy[w], H, W);
            gx[w] = gy[w] = acc_t(0);
          }
          for (int64_t c = 0; c < C; ++c) {
            const scalar_t* plane = img + b * s.b + c * s.c;
            const scalar_t* g_row = go + b * sg.b + c * sg.c + h * sg.h;
            acc_t* gi_plane = gi ? gi + (b * C + c) * H * W : nullptr;
            for (int64_t w = 0; w < W_out; ++w) {
              const acc_t g = static_cast<acc_t>(g_row[w * sg.w]);
              const auto v = tap_corners<scalar_t, acc_t>(plane, s.h, s.w, taps[w]);
              tap_coord_grad<acc_t>(v, taps[w], g, gx[w], gy[w]);
              if (gi_plane) {
                tap_scatter<acc_t>(taps[w], W, g, [&](int64_t o, acc_t x) { gi_plane[o] += x; });
              }
            }
          }
        }
      }
      // d loss / d T_j = Σ_p P̂_j(p) · (gx, gy)(p): [2·images, n] · [n, K+3].
      const at::Tensor dT = at::mm(grad_src.narrow(0, 0, 2 * (c1 - c0)), table.t());
      const acc_t* d = dT.const_data_ptr<acc_t>();
      for (int64_t b = c0; b < c1; ++b) {
        const acc_t* dx = d + 2 * (b - c0) * (K + 3);
        for (int64_t j = 0; j < K + 3; ++j) {
          gT[(b * (K + 3) + j) * 2] = dx[j];
          gT[(b * (K + 3) + j) * 2 + 1] = dx[K + 3 + j];
        }
      }
    }
  });
}

at::Tensor tps_grid_sample_cpu(const at::Tensor& image, const at::Tensor& control_points,
                               at::IntArrayRef output_size) {
  check_tps_grid_sample_args(image, control_points, output_size);
  at::Tensor out = at::empty({image.size(0), image.size(1), output_size[0], output_size[1]},
                             image.options());
  if (out.numel() == 0) return out;
  const TpsPlan plan = tps_plan(image, control_points);
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, plan.dtype, "tps_grid_sample_cpu", [&] {
    forward_cpu<scalar_t>(image, plan.T, plan.sys.base, out);
  });
  return out;
}

std::tuple<at::Tensor, at::Tensor> tps_grid_sample_backward_cpu(
    const at::Tensor& grad_output, const at::Tensor& image, const at::Tensor& control_points,
    bool image_requires_grad) {
  check_tps_grid_sample_backward_args(grad_output, image, control_points);
  const TpsPlan plan = tps_plan(image, control_points);
  TpsGrads grads = tps_grad_buffers(plan, image, image_requires_grad);
  const at::Tensor g = grad_output.to(plan.dtype);
  if (g.numel() > 0) {
    AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, plan.dtype,
                                    "tps_grid_sample_backward_cpu", [&] {
      backward_cpu<scalar_t>(g, image, plan.T, plan.sys.base, grads.grad_image, grads.grad_T);
    });
  }
  return tps_backward_outputs(plan, grads, image);
}

}  // namespace

TORCH_LIBRARY_IMPL(seqclr_ext, CPU, m) {
  m.impl("tps_grid_sample", &tps_grid_sample_cpu);
  m.impl("tps_grid_sample_backward", &tps_grid_sample_backward_cpu);
}

}  // namespace seqclr_ext
