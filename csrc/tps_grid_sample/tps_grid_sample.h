// Shared by the CPU and CUDA kernels of tps_grid_sample (DESIGN.md §2): argument checks and
// the host-side TPS system (tps_grid_sample.cpp), and the per-pixel formulas both devices
// must agree on: the TPS basis P̂(p) and the border-clamped bilinear sample of
// grid_sample(padding_mode='border', align_corners=True).
#pragma once

#include "../common.h"

#include <ATen/core/Tensor.h>
#include <c10/macros/Macros.h>
#include <c10/util/ArrayRef.h>

#include <cmath>
#include <cstdint>
#include <tuple>

namespace seqclr_ext {

// Checks tps_grid_sample's arguments: image [B, C, H, W] floating, control_points
// [B, K, 2] (K even, >= 4) of image's dtype and device, output_size two positive ints.
void check_tps_grid_sample_args(const at::Tensor& image, const at::Tensor& control_points,
                                at::IntArrayRef output_size);

// Checks tps_grid_sample_backward's arguments (those of the forward, and grad_output of
// shape [B, C, H_out, W_out] of image's dtype and device).
void check_tps_grid_sample_backward_args(const at::Tensor& grad_output, const at::Tensor& image,
                                         const at::Tensor& control_points);

// The part of the TPS that depends only on K, on `device`: the base points C [K, 2] in the
// accumulation dtype, and the first K columns of Δ_C⁻¹ [K+3, K] in float64 (Δ_C inverted
// once per K on the host in float64 and cached), so that T = Δ_C⁻¹ [C′; 0] = inv_cols · C′.
struct TpsSystem {
  at::Tensor base;      // [K, 2], accumulation dtype
  at::Tensor inv_cols;  // [K + 3, K], float64
};
TpsSystem tps_system(int64_t num_points, at::ScalarType acc, at::Device device);

// T = Δ_C⁻¹ [C′; 0] per image: [B, K+3, 2] contiguous, in `acc`. The tiny product runs in
// float64 (T's entries cancel in P̂ · T: rounding T only once keeps float32 accurate).
at::Tensor tps_transform(const TpsSystem& sys, const at::Tensor& control_points,
                         at::ScalarType acc);

// d loss / d C′ [B, K, 2] (in `dtype`) from d loss / d T [B, K+3, 2]: inv_colsᵀ · dT.
at::Tensor tps_control_point_grad(const TpsSystem& sys, const at::Tensor& grad_transform,
                                  at::ScalarType dtype);

// What the kernels of both devices start from: the dtypes, the K-only system and every
// image's T [B, K+3, 2] (accumulation dtype).
struct TpsPlan {
  at::ScalarType dtype, acc;
  TpsSystem sys;
  at::Tensor T;
};
TpsPlan tps_plan(const at::Tensor& image, const at::Tensor& control_points);

// The backward's zero-initialized accumulators (accumulation dtype): d loss / d T
// [B, K+3, 2], and d loss / d image (contiguous, like image; undefined when not needed).
struct TpsGrads {
  at::Tensor grad_image, grad_T;
};
TpsGrads tps_grad_buffers(const TpsPlan& plan, const at::Tensor& image, bool image_requires_grad);

// The backward op's outputs from the accumulators: grad_image in image's dtype (a zero-size
// tensor when not needed) and d loss / d C′.
std::tuple<at::Tensor, at::Tensor> tps_backward_outputs(const TpsPlan& plan,
                                                         const TpsGrads& grads,
                                                         const at::Tensor& image);

// U(r) = r² log r written on d2 = r² as d2·log(d2)/2, with U(0) = 0.
template <typename acc_t>
C10_HOST_DEVICE inline acc_t tps_kernel(acc_t d2) {
  return d2 > acc_t(0) ? acc_t(0.5) * d2 * std::log(d2) : acc_t(0);
}

// Normalized coordinate of output pixel i's centre among n: (2i+1)/n − 1.
template <typename acc_t>
C10_HOST_DEVICE inline acc_t pixel_centre(int64_t i, int64_t n) {
  return static_cast<acc_t>(2 * i + 1) / static_cast<acc_t>(n) - acc_t(1);
}

// Entry j of P̂(p) = [1, x, y, U(|p − c_0|), ..., U(|p − c_{K−1}|)]; base is C [K, 2].
template <typename acc_t>
C10_HOST_DEVICE inline acc_t tps_basis(int64_t j, acc_t px, acc_t py, const acc_t* base) {
  if (j == 0) return acc_t(1);
  if (j == 1) return px;
  if (j == 2) return py;
  const acc_t dx = px - base[2 * (j - 3)], dy = py - base[2 * (j - 3) + 1];
  return tps_kernel<acc_t>(dx * dx + dy * dy);
}

// The source point P̂(p) · T of output point p; T is [K+3, 2] row-major.
template <typename acc_t>
C10_HOST_DEVICE inline void tps_source_point(acc_t px, acc_t py, const acc_t* base,
                                             const acc_t* T, int64_t K, acc_t& sx, acc_t& sy) {
  sx = T[0] + px * T[2] + py * T[4];
  sy = T[1] + px * T[3] + py * T[5];
  for (int64_t k = 0; k < K; ++k) {
    const acc_t u = tps_basis<acc_t>(k + 3, px, py, base);
    sx += u * T[2 * (k + 3)];
    sy += u * T[2 * (k + 3) + 1];
  }
}

// One bilinear tap of grid_sample(mode='bilinear', padding_mode='border',
// align_corners=True) at normalized (x, y) in an H × W plane: the north-west corner
// (x0, y0), the steps nx, ny to the east / south neighbours, the four interpolation weights
// (PyTorch's formulas), and d(clamped pixel coordinate)/d(normalized coordinate):
// (size − 1)/2 strictly inside, 0 where the border clamp is active (grid_sample treats the
// border itself as clamped). Branch-free: x0 stops at size − 2, so the east neighbour
// always exists (at the right border the weights are 0 and 1, the same value as
// grid_sample's single in-bounds corner); a plane one pixel wide has step 0 and weight 0.
// A NaN coordinate clamps to pixel 0, as grid_sample's does (so a non-finite control point
// does not turn the whole output NaN), and ±inf to the borders.
template <typename acc_t>
struct BilinearTap {
  int64_t x0, y0;
  int64_t nx, ny;  // 1, or 0 for a plane one pixel wide / high
  acc_t wx0, wx1, wy0, wy1;
  acc_t dx, dy;
};

template <typename acc_t>
C10_HOST_DEVICE inline void border_clamp(acc_t coord, int64_t size, int64_t& i0, int64_t& step,
                                         acc_t& w0, acc_t& w1, acc_t& d) {
  const acc_t max = static_cast<acc_t>(size - 1);
  const acc_t ic = (coord + acc_t(1)) / acc_t(2) * max;  // unnormalize, align_corners=True
  const bool inside = ic > acc_t(0) && ic < max;
  const acc_t c = ic > acc_t(0) ? (ic < max ? ic : max) : acc_t(0);  // NaN fails: 0
  // c >= 0, so truncation is floor (and no libm call on CPU).
  const int64_t last = size > 1 ? size - 2 : 0;
  i0 = c >= acc_t(1) ? static_cast<int64_t>(c) : 0;
  if (i0 > last) i0 = last;
  step = size > 1 ? 1 : 0;
  w0 = static_cast<acc_t>(i0 + 1) - c;
  w1 = c - static_cast<acc_t>(i0);
  d = inside ? max / acc_t(2) : acc_t(0);
}

template <typename acc_t>
C10_HOST_DEVICE inline BilinearTap<acc_t> bilinear_tap(acc_t x, acc_t y, int64_t H, int64_t W) {
  BilinearTap<acc_t> t;
  border_clamp<acc_t>(x, W, t.x0, t.nx, t.wx0, t.wx1, t.dx);
  border_clamp<acc_t>(y, H, t.y0, t.ny, t.wy0, t.wy1, t.dy);
  return t;
}

// The four corner values of a tap in one plane (strides sH, sW).
template <typename acc_t>
struct Corners {
  acc_t nw, ne, sw, se;
};

template <typename scalar_t, typename acc_t>
C10_HOST_DEVICE inline Corners<acc_t> tap_corners(const scalar_t* plane, int64_t sH, int64_t sW,
                                                  const BilinearTap<acc_t>& t) {
  const scalar_t* p = plane + t.y0 * sH + t.x0 * sW;
  const int64_t e = t.nx * sW, s = t.ny * sH;
  return {static_cast<acc_t>(p[0]), static_cast<acc_t>(p[e]), static_cast<acc_t>(p[s]),
          static_cast<acc_t>(p[s + e])};
}

template <typename acc_t>
C10_HOST_DEVICE inline acc_t tap_value(const Corners<acc_t>& v, const BilinearTap<acc_t>& t) {
  return v.nw * (t.wx0 * t.wy0) + v.ne * (t.wx1 * t.wy0) + v.sw * (t.wx0 * t.wy1) +
         v.se * (t.wx1 * t.wy1);
}

// Adds g · d value / d (x, y) (normalized coordinates, border clamp included) to (gx, gy).
template <typename acc_t>
C10_HOST_DEVICE inline void tap_coord_grad(const Corners<acc_t>& v, const BilinearTap<acc_t>& t,
                                           acc_t g, acc_t& gx, acc_t& gy) {
  gx += g * t.dx * ((v.ne - v.nw) * t.wy0 + (v.se - v.sw) * t.wy1);
  gy += g * t.dy * ((v.sw - v.nw) * t.wx0 + (v.se - v.ne) * t.wx1);
}

// Scatters g · (bilinear weights) to the four corners: add(offset, value) with offsets in
// an H × W contiguous plane (a corner repeated by a zero step gets weight 0).
template <typename acc_t, typename Add>
C10_HOST_DEVICE inline void tap_scatter(const BilinearTap<acc_t>& t, int64_t W, acc_t g,
                                        Add&& add) {
  const int64_t o = t.y0 * W + t.x0, e = t.nx, s = t.ny * W;
  add(o, g * (t.wx0 * t.wy0));
  add(o + e, g * (t.wx1 * t.wy0));
  add(o + s, g * (t.wx0 * t.wy1));
  add(o + s + e, g * (t.wx1 * t.wy1));
}

}  // namespace seqclr_ext
