// CUDA kernels of tps_grid_sample (DESIGN.md §2): the computation of tps_grid_sample_cpu.cpp.
//
// One thread per output pixel (all channels in a loop), blocks of kThreads pixels of one
// image (blockIdx.y strides over images); the image's T [K+3, 2] and the base points are
// staged in shared memory (read from global memory when K is too large for it). The source
// point is computed from P̂ · T and sampled in place: the grid is never stored.
//
// Backward: d loss / d T is reduced per image deterministically, without atomics: every
// block reduces its pixels' P̂_j · (gx, gy) in a fixed tree (warp shuffles, then warps in
// order) into partial[b, tile, j, :], and a second kernel sums the tiles in order. The
// control-point gradient is therefore bitwise reproducible. grad_image is a scatter of the
// bilinear weights with atomicAdd (as grid_sample's CUDA backward does): correct, but its
// float summation order — hence its last bits — may vary from run to run.
#include "tps_grid_sample.h"

#include <ATen/Dispatch.h>
#include <ATen/OpMathType.h>
#include <ATen/core/Tensor.h>
#include <ATen/ops/empty.h>
#include <ATen/ops/zeros.h>
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#include <torch/library.h>

#include <algorithm>
#include <cstdint>

namespace seqclr_ext {
namespace {

constexpr int kThreads = 256;
constexpr int kWarps = kThreads / 32;
constexpr int64_t kMaxGridY = 65535;
constexpr size_t kMaxSharedBytes = 48 * 1024;

struct Strides4 {
  int64_t b, c, h, w;
};

inline Strides4 strides4(const at::Tensor& t) {
  return {t.stride(0), t.stride(1), t.stride(2), t.stride(3)};
}

// Geometry shared by both kernels.
template <typename acc_t>
struct TpsArgs {
  const acc_t* T;     // [B, K+3, 2]
  const acc_t* base;  // [K, 2]
  int64_t B, C, H, W, K, H_out, W_out;
  bool stage;  // T and base staged in shared memory
};

template <typename acc_t>
size_t stage_bytes(int64_t K) {
  return static_cast<size_t>(4 * K + 6) * sizeof(acc_t);
}

// Points T_b and base at image b's transform and the base points, staged in shared memory
// when args.stage. Called by every thread of the block (it synchronizes).
template <typename acc_t>
__device__ void stage_transform(const TpsArgs<acc_t>& a, int64_t b, acc_t* smem,
                                const acc_t*& Tb, const acc_t*& base) {
  Tb = a.T + b * 2 * (a.K + 3);
  base = a.base;
  if (!a.stage) return;
  __syncthreads();  // the previous image's values are no longer read
  for (int64_t i = threadIdx.x; i < 2 * (a.K + 3); i += blockDim.x) smem[i] = Tb[i];
  for (int64_t i = threadIdx.x; i < 2 * a.K; i += blockDim.x) smem[2 * (a.K + 3) + i] = base[i];
  __syncthreads();
  Tb = smem;
  base = smem + 2 * (a.K + 3);
}

template <typename scalar_t>
__global__ void __launch_bounds__(kThreads)
tps_forward_kernel(TpsArgs<at::opmath_type<scalar_t>> a, const scalar_t* image, Strides4 s,
                   scalar_t* out) {
  using acc_t = at::opmath_type<scalar_t>;
  extern __shared__ __align__(sizeof(double)) unsigned char smem_raw[];
  acc_t* smem = reinterpret_cast<acc_t*>(smem_raw);
  const int64_t n = a.H_out * a.W_out;
  const int64_t p = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  for (int64_t b = blockIdx.y; b < a.B; b += gridDim.y) {
    const acc_t *Tb, *base;
    stage_transform<acc_t>(a, b, smem, Tb, base);
    if (p >= n) continue;
    const int64_t h = p / a.W_out, w = p % a.W_out;
    acc_t sx, sy;
    tps_source_point<acc_t>(pixel_centre<acc_t>(w, a.W_out), pixel_centre<acc_t>(h, a.H_out),
                            base, Tb, a.K, sx, sy);
    const BilinearTap<acc_t> t = bilinear_tap<acc_t>(sx, sy, a.H, a.W);
    for (int64_t c = 0; c < a.C; ++c) {
      const scalar_t* plane = image + b * s.b + c * s.c;
      out[(b * a.C + c) * n + p] = static_cast<scalar_t>(
          tap_value<acc_t>(tap_corners<scalar_t, acc_t>(plane, s.h, s.w, t), t));
    }
  }
}

// Sum of (x, y) over the block in a fixed order; the result is valid in thread 0.
template <typename acc_t>
__device__ void block_sum2(acc_t& x, acc_t& y, acc_t (*red)[2]) {
  for (int offset = 16; offset > 0; offset /= 2) {
    x += __shfl_down_sync(0xffffffffu, x, offset);
    y += __shfl_down_sync(0xffffffffu, y, offset);
  }
  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
  if (lane == 0) {
    red[warp][0] = x;
    red[warp][1] = y;
  }
  __syncthreads();
  if (threadIdx.x == 0) {
    for (int i = 1; i < kWarps; ++i) {
      x += red[i][0];
      y += red[i][1];
    }
  }
  __syncthreads();  // red is reused by the next call
}

// grad_image: acc dtype, contiguous, zero-initialized, nullptr when not needed.
// partial: [B, tiles, K+3, 2] with tiles = gridDim.x.
template <typename scalar_t>
__global__ void __launch_bounds__(kThreads)
tps_backward_kernel(TpsArgs<at::opmath_type<scalar_t>> a, const scalar_t* grad_out,
                    Strides4 sg, const scalar_t* image, Strides4 s,
                    at::opmath_type<scalar_t>* grad_image, at::opmath_type<scalar_t>* partial) {
  using acc_t = at::opmath_type<scalar_t>;
  extern __shared__ __align__(sizeof(double)) unsigned char smem_raw[];
  __shared__ acc_t red[kWarps][2];
  acc_t* smem = reinterpret_cast<acc_t*>(smem_raw);
  const int64_t n = a.H_out * a.W_out, tiles = gridDim.x;
  const int64_t p = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  const int64_t h = p / a.W_out, w = p % a.W_out;
  const acc_t px = pixel_centre<acc_t>(w, a.W_out), py = pixel_centre<acc_t>(h, a.H_out);
  for (int64_t b = blockIdx.y; b < a.B; b += gridDim.y) {
    const acc_t *Tb, *base;
    stage_transform<acc_t>(a, b, smem, Tb, base);
    acc_t gx = 0, gy = 0;
    if (p < n) {
      acc_t sx, sy;
      tps_source_point<acc_t>(px, py, base, Tb, a.K, sx, sy);
      const BilinearTap<acc_t> t = bilinear_tap<acc_t>(sx, sy, a.H, a.W);
      for (int64_t c = 0; c < a.C; ++c) {
        const acc_t g = static_cast<acc_t>(grad_out[b * sg.b + c * sg.c + h * sg.h + w * sg.w]);
        const auto v = tap_corners<scalar_t, acc_t>(image + b * s.b + c * s.c, s.h, s.w, t);
        tap_coord_grad<acc_t>(v, t, g, gx, gy);
        if (grad_image != nullptr) {
          acc_t* plane = grad_image + (b * a.C + c) * a.H * a.W;
          tap_scatter<acc_t>(t, a.W, g, [&](int64_t o, acc_t x) { atomicAdd(plane + o, x); });
        }
      }
    }
    // This tile's Σ_p P̂_j(p) · (gx, gy)(p) for every j, in a fixed order.
    acc_t* out = partial + (b * tiles + blockIdx.x) * 2 * (a.K + 3);
    for (int64_t j = 0; j < a.K + 3; ++j) {
      const acc_t basis = p < n ? tps_basis<acc_t>(j, px, py, base) : acc_t(0);
      acc_t x = basis * gx, y = basis * gy;
      block_sum2<acc_t>(x, y, red);
      if (threadIdx.x == 0) {
        out[2 * j] = x;
        out[2 * j + 1] = y;
      }
    }
  }
}

// grad_T[b, j, d] = Σ_tile partial[b, tile, j, d], tiles in order: one thread per entry.
template <typename acc_t>
__global__ void sum_tiles_kernel(const acc_t* partial, int64_t B, int64_t tiles, int64_t KT,
                                 acc_t* grad_T) {
  const int64_t i = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  if (i >= B * KT) return;
  const int64_t b = i / KT, e = i % KT;
  acc_t sum = 0;
  for (int64_t t = 0; t < tiles; ++t) sum += partial[(b * tiles + t) * KT + e];
  grad_T[i] = sum;
}

template <typename acc_t>
TpsArgs<acc_t> tps_args(const TpsPlan& plan, const at::Tensor& image, int64_t H_out,
                        int64_t W_out, size_t& smem_bytes) {
  const int64_t K = plan.sys.base.size(0);
  smem_bytes = stage_bytes<acc_t>(K);
  const bool stage = smem_bytes <= kMaxSharedBytes;
  if (!stage) smem_bytes = 0;
  return {plan.T.const_data_ptr<acc_t>(), plan.sys.base.const_data_ptr<acc_t>(), image.size(0),
          image.size(1), image.size(2), image.size(3), K, H_out, W_out, stage};
}

dim3 pixel_grid(int64_t B, int64_t n) {
  return dim3(grid_size(n, kThreads),
              static_cast<unsigned>(std::min(B, kMaxGridY)));
}

at::Tensor tps_grid_sample_cuda(const at::Tensor& image, const at::Tensor& control_points,
                                at::IntArrayRef output_size) {
  check_tps_grid_sample_args(image, control_points, output_size);
  const c10::cuda::CUDAGuard guard(image.device());
  const int64_t B = image.size(0), H_out = output_size[0], W_out = output_size[1];
  at::Tensor out = at::empty({B, image.size(1), H_out, W_out}, image.options());
  if (out.numel() == 0) return out;
  const TpsPlan plan = tps_plan(image, control_points);
  const cudaStream_t stream = c10::cuda::getCurrentCUDAStream();
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, plan.dtype, "tps_grid_sample_cuda", [&] {
    using acc_t = at::opmath_type<scalar_t>;
    size_t smem = 0;
    const auto args = tps_args<acc_t>(plan, image, H_out, W_out, smem);
    tps_forward_kernel<scalar_t><<<pixel_grid(B, H_out * W_out), kThreads, smem, stream>>>(
        args, image.const_data_ptr<scalar_t>(), strides4(image), out.mutable_data_ptr<scalar_t>());
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  });
  return out;
}

std::tuple<at::Tensor, at::Tensor> tps_grid_sample_backward_cuda(
    const at::Tensor& grad_output, const at::Tensor& image, const at::Tensor& control_points,
    bool image_requires_grad) {
  check_tps_grid_sample_backward_args(grad_output, image, control_points);
  const c10::cuda::CUDAGuard guard(image.device());
  const int64_t B = image.size(0), K = control_points.size(1);
  const int64_t H_out = grad_output.size(2), W_out = grad_output.size(3);
  const TpsPlan plan = tps_plan(image, control_points);
  TpsGrads grads = tps_grad_buffers(plan, image, image_requires_grad);
  const at::Tensor g = grad_output.to(plan.dtype);
  if (g.numel() > 0) {
    const dim3 grid = pixel_grid(B, H_out * W_out);
    at::Tensor partial = at::empty({B, static_cast<int64_t>(grid.x), K + 3, 2}, plan.T.options());
    const cudaStream_t stream = c10::cuda::getCurrentCUDAStream();
    AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, plan.dtype,
                                    "tps_grid_sample_backward_cuda", [&] {
      using acc_t = at::opmath_type<scalar_t>;
      size_t smem = 0;
      const auto args = tps_args<acc_t>(plan, image, H_out, W_out, smem);
      tps_backward_kernel<scalar_t><<<grid, kThreads, smem, stream>>>(
          args, g.const_data_ptr<scalar_t>(), strides4(g), image.const_data_ptr<scalar_t>(),
          strides4(image),
          grads.grad_image.defined() ? grads.grad_image.mutable_data_ptr<acc_t>() : nullptr,
          partial.mutable_data_ptr<acc_t>());
      C10_CUDA_KERNEL_LAUNCH_CHECK();
      const int64_t entries = B * 2 * (K + 3);
      sum_tiles_kernel<acc_t><<<grid_size(entries, kThreads),
                                kThreads, 0, stream>>>(partial.const_data_ptr<acc_t>(), B,
                                                       grid.x, 2 * (K + 3),
                                                       grads.grad_T.mutable_data_ptr<acc_t>());
      C10_CUDA_KERNEL_LAUNCH_CHECK();
    });
  }
  return tps_backward_outputs(plan, grads, image);
}

}  // namespace

TORCH_LIBRARY_IMPL(seqclr_ext, CUDA, m) {
  m.impl("tps_grid_sample", &tps_grid_sample_cuda);
  m.impl("tps_grid_sample_backward", &tps_grid_sample_backward_cuda);
}

}  // namespace seqclr_ext
