// CPU kernels of tps_grid_sample (DESIGN.md §2).
//
// Fused: the source points P̂(p) · T are computed per tile of output pixels and sampled in
// place; the sampling grid is never stored. P̂ depends only on the output pixel, not on the
// image, so it is tabulated once per call ([K+3, H_out·W_out]: its K logarithms per pixel
// paid once), and a tile's source points for a chunk of images are one small GEMM. The
// bilinear taps are branch-free. Forward tasks are (pixel tile, image chunk); backward tasks
// are image ranges: each image is handled by exactly one thread, which owns its grad_image
// slice, and d loss / d T of a chunk of images is a fixed-order sum of GEMMs of the chunk's
// d loss / d (source point) by P̂, so both gradients are deterministic without atomics.
// Everything accumulates in float32 (float64 for float64 inputs).
#include "tps_grid_sample.h"
#include "../cpu_parallel.h"

#include <ATen/Dispatch.h>
#include <ATen/OpMathType.h>
#include <ATen/Parallel.h>
#include <ATen/ops/addmm.h>
#include <ATen/ops/empty.h>
#include <ATen/ops/mm.h>
#include <ATen/ops/zeros.h>
#include <torch/library.h>

#include <algorithm>
#include <array>
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

// The source points of a tile of output pixels for a range of images, by one GEMM:
// [2·images, K+3] (rows x, y of each image's Tᵀ) times the tile's columns of the table
// [K+3, pixels]. Row 2i holds image i's x, row 2i + 1 its y. Only tiles are ever stored.
inline at::Tensor source_tile(const at::Tensor& Tt, int64_t b0, int64_t b1,
                              const at::Tensor& table, int64_t p0, int64_t p1) {
  return at::mm(Tt.narrow(0, 2 * b0, 2 * (b1 - b0)), table.narrow(1, p0, p1 - p0));
}

// Output pixels per tile: a few rows of the output, so that a tile's source points and
// taps stay in L1/L2 while every channel of the tile's images is sampled.
inline int64_t tile_pixels(int64_t W_out) {
  return std::max<int64_t>(1, 1024 / W_out) * W_out;
}

template <typename scalar_t>
void forward_cpu(const at::Tensor& image, const at::Tensor& Tt, const at::Tensor& table,
                 at::Tensor& out) {
  using acc_t = at::opmath_type<scalar_t>;
  const int64_t B = image.size(0), C = image.size(1), H = image.size(2), W = image.size(3);
  const int64_t n = out.size(2) * out.size(3), tile = tile_pixels(out.size(3));
  const int64_t tiles = (n + tile - 1) / tile;
  const int64_t chunks = (B + kImagesPerTask - 1) / kImagesPerTask;
  const Plane4 s = strides4(image);
  const scalar_t* img = image.const_data_ptr<scalar_t>();
  scalar_t* op = out.mutable_data_ptr<scalar_t>();
  at::parallel_for(0, tiles * chunks, 1, [&](int64_t i0, int64_t i1) {
    const PlainAtenGuard plain_aten;  // at::mm below
    // Per pixel only what sampling a channel needs: the north-west offset and the four
    // weights (compact, so a tile's taps stay in L1 across the channels).
    std::vector<int64_t> offset(tile);
    std::vector<std::array<acc_t, 4>> weight(tile);
    for (int64_t item = i0; item < i1; ++item) {
      const int64_t p0 = (item / chunks) * tile, p1 = std::min(n, p0 + tile);
      const int64_t b0 = (item % chunks) * kImagesPerTask, b1 = std::min(B, b0 + kImagesPerTask);
      const at::Tensor src = source_tile(Tt, b0, b1, table, p0, p1);
      const acc_t* sp = src.const_data_ptr<acc_t>();
      for (int64_t b = b0; b < b1; ++b) {
        const acc_t* sx = sp + 2 * (b - b0) * (p1 - p0);
        const acc_t* sy = sx + (p1 - p0);
        int64_t east = 0, south = 0;  // the same for every tap of an image
        for (int64_t p = 0; p < p1 - p0; ++p) {
          const BilinearTap<acc_t> t = bilinear_tap<acc_t>(sx[p], sy[p], H, W);
          offset[p] = t.y0 * s.h + t.x0 * s.w;
          weight[p] = {t.wx0 * t.wy0, t.wx1 * t.wy0, t.wx0 * t.wy1, t.wx1 * t.wy1};
          east = t.nx * s.w;
          south = t.ny * s.h;
        }
        for (int64_t c = 0; c < C; ++c) {
          const scalar_t* plane = img + b * s.b + c * s.c;
          scalar_t* dst = op + (b * C + c) * n + p0;
          for (int64_t p = 0; p < p1 - p0; ++p) {  // tap_value's sum, in its order
            const scalar_t* q = plane + offset[p];
            const auto& w = weight[p];
            dst[p] = static_cast<scalar_t>(
                static_cast<acc_t>(q[0]) * w[0] + static_cast<acc_t>(q[east]) * w[1] +
                static_cast<acc_t>(q[south]) * w[2] + static_cast<acc_t>(q[south + east]) * w[3]);
          }
        }
      }
    }
  });
}

// grad_image (acc dtype, contiguous, zero-initialized; undefined when not needed) and
// d loss / d T [B, K+3, 2] (acc dtype).
template <typename scalar_t>
void backward_cpu(const at::Tensor& grad_out, const at::Tensor& image, const at::Tensor& Tt,
                  const at::Tensor& table, at::Tensor& grad_image, at::Tensor& grad_T) {
  using acc_t = at::opmath_type<scalar_t>;
  const int64_t B = image.size(0), C = image.size(1), H = image.size(2), W = image.size(3);
  const int64_t W_out = grad_out.size(3), n = grad_out.size(2) * W_out, K3 = table.size(0);
  const int64_t tile = tile_pixels(W_out);
  const Plane4 s = strides4(image), sg = strides4(grad_out);
  const scalar_t* img = image.const_data_ptr<scalar_t>();
  const scalar_t* go = grad_out.const_data_ptr<scalar_t>();
  acc_t* gi = grad_image.defined() ? grad_image.mutable_data_ptr<acc_t>() : nullptr;
  acc_t* gT = grad_T.mutable_data_ptr<acc_t>();
  at::parallel_for(0, B, 1, [&](int64_t b0, int64_t b1) {
    const PlainAtenGuard plain_aten;  // at::mm below
    std::vector<BilinearTap<acc_t>> taps(tile);
    // d loss / d (source x, y) of a tile's pixels for the chunk's images: [2·images, tile].
    at::Tensor grad_src = at::empty({2 * kImagesPerTask, tile}, table.options());
    acc_t* gs = grad_src.mutable_data_ptr<acc_t>();
    for (int64_t c0 = b0; c0 < b1; c0 += kImagesPerTask) {
      const int64_t c1 = std::min(b1, c0 + kImagesPerTask);
      // d loss / d T of the chunk as [2·images, K+3]: Σ over tiles, in order.
      at::Tensor dT = at::zeros({2 * (c1 - c0), K3}, table.options());
      for (int64_t p0 = 0; p0 < n; p0 += tile) {
        const int64_t p1 = std::min(n, p0 + tile), np = p1 - p0;
        const at::Tensor src = source_tile(Tt, c0, c1, table, p0, p1);
        const acc_t* sp = src.const_data_ptr<acc_t>();
        for (int64_t b = c0; b < c1; ++b) {
          const acc_t* sx = sp + 2 * (b - c0) * np;
          const acc_t* sy = sx + np;
          acc_t* gx = gs + 2 * (b - c0) * tile;
          acc_t* gy = gx + tile;
          for (int64_t p = 0; p < np; ++p) {
            taps[p] = bilinear_tap<acc_t>(sx[p], sy[p], H, W);
            gx[p] = gy[p] = acc_t(0);
          }
          for (int64_t c = 0; c < C; ++c) {
            const scalar_t* plane = img + b * s.b + c * s.c;
            const scalar_t* g_plane = go + b * sg.b + c * sg.c;
            acc_t* gi_plane = gi ? gi + (b * C + c) * H * W : nullptr;
            // Tiles are whole output rows; grad_out may be strided (e.g. expanded by sum()).
            for (int64_t h = p0 / W_out, p = 0; p < np; ++h) {
              const scalar_t* g_row = g_plane + h * sg.h;
              for (int64_t w = 0; w < W_out; ++w, ++p) {
                const acc_t g = static_cast<acc_t>(g_row[w * sg.w]);
                const auto v = tap_corners<scalar_t, acc_t>(plane, s.h, s.w, taps[p]);
                tap_coord_grad<acc_t>(v, taps[p], g, gx[p], gy[p]);
                if (gi_plane) {
                  tap_scatter<acc_t>(taps[p], W, g, [&](int64_t o, acc_t x) { gi_plane[o] += x; });
                }
              }
            }
          }
        }
        // d loss / d T_j += Σ_p P̂_j(p) · (gx, gy)(p): [2·images, np] · [np, K+3].
        dT.addmm_(grad_src.narrow(0, 0, 2 * (c1 - c0)).narrow(1, 0, np),
                  table.narrow(1, p0, np).t());
      }
      const acc_t* d = dT.const_data_ptr<acc_t>();
      for (int64_t b = c0; b < c1; ++b) {
        for (int64_t j = 0; j < K3; ++j) {
          gT[(b * K3 + j) * 2] = d[2 * (b - c0) * K3 + j];
          gT[(b * K3 + j) * 2 + 1] = d[(2 * (b - c0) + 1) * K3 + j];
        }
      }
    }
  });
}

// The inputs of both kernels: Tᵀ as [2B, K+3] (rows x, y per image) and P̂'s table.
struct CpuPlan {
  at::Tensor Tt, table;
};

template <typename acc_t>
CpuPlan cpu_plan(const TpsPlan& plan, int64_t H_out, int64_t W_out) {
  const int64_t B = plan.T.size(0), K = plan.sys.base.size(0);
  return {plan.T.transpose(1, 2).contiguous().view({2 * B, K + 3}),
          basis_table<acc_t>(H_out, W_out, plan.sys.base.const_data_ptr<acc_t>(), K,
                             plan.T.options())};
}

at::Tensor tps_grid_sample_cpu(const at::Tensor& image, const at::Tensor& control_points,
                               at::IntArrayRef output_size) {
  check_tps_grid_sample_args(image, control_points, output_size);
  at::Tensor out = at::empty({image.size(0), image.size(1), output_size[0], output_size[1]},
                             image.options());
  if (out.numel() == 0) return out;
  const TpsPlan plan = tps_plan(image, control_points);
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, plan.dtype, "tps_grid_sample_cpu", [&] {
    const CpuPlan cpu = cpu_plan<at::opmath_type<scalar_t>>(plan, out.size(2), out.size(3));
    forward_cpu<scalar_t>(image, cpu.Tt, cpu.table, out);
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
      const CpuPlan cpu = cpu_plan<at::opmath_type<scalar_t>>(plan, g.size(2), g.size(3));
      backward_cpu<scalar_t>(g, image, cpu.Tt, cpu.table, grads.grad_image, grads.grad_T);
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
