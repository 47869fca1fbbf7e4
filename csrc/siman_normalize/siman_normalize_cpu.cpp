// CPU kernels of siman_normalize (DESIGN.md §3; notation in siman_normalize.h).
//
// One task per image (at::parallel_for over the batch): the thread that owns an image builds
// its ĉ, key and V = [μ; σ] in its own buffers, then sweeps the content positions in row
// tiles. A tile's scores [rows, L] are one GEMM; the softmax and its gradient are ATen's
// vectorized elementwise kernels on the tile (single-threaded inside the parallel region);
// the products with V, key and ĉ are GEMMs. There is no unfold copy of the style map (the
// local statistics are a count-aware box filter) and no attention beyond one tile: the
// backward recomputes every tile from the saved log-sum-exp. Each image's outputs are
// written by one thread in a fixed order, so the results are deterministic and do not
// depend on the thread count. Everything accumulates in float32 (float64 for float64).
#include "siman_normalize.h"
#include "../cpu_parallel.h"

#include <ATen/Dispatch.h>
#include <ATen/Parallel.h>
#include <ATen/ops/addcmul.h>
#include <ATen/ops/amax.h>
#include <ATen/ops/empty.h>
#include <ATen/ops/linalg_vector_norm.h>
#include <ATen/ops/log.h>
#include <ATen/ops/mean.h>
#include <ATen/ops/mm.h>
#include <ATen/ops/mul.h>
#include <ATen/ops/sub.h>
#include <ATen/ops/sum.h>
#include <torch/library.h>

#include <algorithm>
#include <cmath>

namespace seqclr_ext {
namespace {

// Rows of a score tile: as many as keep it near kTileElems elements, at least kMinRows (for
// efficient GEMMs), at most N.
constexpr int64_t kTileElems = int64_t(1) << 16;
constexpr int64_t kMinRows = 16;

struct Shape {
  int64_t B, C, H, W, Hs, Ws, N, L, rows;
};

Shape shape_of(const at::Tensor& content, const at::Tensor& style) {
  Shape s{content.size(0), content.size(1), content.size(2), content.size(3),
          style.size(2),   style.size(3),   0,               0,
          0};
  s.N = s.H * s.W;
  s.L = s.Hs * s.Ws;
  s.rows = std::min(s.N, std::max(kMinRows, kTileElems / s.L));
  return s;
}

// One image's operands, in the owning thread's buffers (accumulation dtype).
struct ImageBuffers {
  at::Tensor ch;   // ĉ [C, N]
  at::Tensor raw;  // style [C, L]
  at::Tensor key;  // IN(style) / √C [C, L]
  at::Tensor V;    // [μ; σ] [2C, L]
  at::Tensor scratch;  // [2L + 2W_s] for the box filters

  ImageBuffers(const Shape& s, const at::TensorOptions& acc)
      : ch(at::empty({s.C, s.N}, acc)),
        raw(at::empty({s.C, s.L}, acc)),
        key(at::empty({s.C, s.L}, acc)),
        V(at::empty({2 * s.C, s.L}, acc)),
        scratch(at::empty({2 * s.L + 2 * s.Ws}, acc)) {}
};

// Centres x [C, n] in place and writes its instance-norm statistics into stats [2, C]: the
// mean and rstd = 1/sqrt(var + eps) (biased variance, two passes; ATen's vectorized
// reductions, single-threaded inside the parallel region).
void centre_and_stats(at::Tensor& x, double eps, const at::Tensor& stats) {
  at::Tensor m = stats[0];
  at::mean_out(m, x, 1);
  x.sub_(m.unsqueeze(1));
  at::Tensor r = stats[1];
  at::linalg_vector_norm_out(r, x, 2, at::IntArrayRef{1});
  r.square_().div_(static_cast<double>(x.size(1))).add_(eps).rsqrt_();
}

// μ and σ of SimAN eq. 1 for every position of one contiguous Hs × Ws plane: the sums of
// local_stats (siman_normalize.h) in the same order, as row-vectorizable loops.
template <typename acc_t>
void box_stats(const acc_t* s, int64_t Hs, int64_t Ws, int64_t half, acc_t eps,
               const acc_t* col_count, acc_t* mu, acc_t* sigma, acc_t* row_acc) {
  for (int64_t i = 0; i < Hs; ++i) {
    int64_t r0, r1;
    window(i, Hs, half, r0, r1);
    acc_t* m = mu + i * Ws;
    std::fill(row_acc, row_acc + Ws, acc_t(0));
    for (int64_t r = r0; r < r1; ++r) {
      for (int64_t dj = -half; dj <= half; ++dj) {
        const int64_t o = r * Ws + dj;
        for (int64_t j = std::max<int64_t>(0, -dj); j < std::min(Ws, Ws - dj); ++j) {
          row_acc[j] += s[o + j];
        }
      }
    }
    const acc_t rows = static_cast<acc_t>(r1 - r0);
    for (int64_t j = 0; j < Ws; ++j) m[j] = row_acc[j] * (acc_t(1) / (rows * col_count[j]));
    std::fill(row_acc, row_acc + Ws, acc_t(0));
    for (int64_t r = r0; r < r1; ++r) {
      for (int64_t dj = -half; dj <= half; ++dj) {
        const int64_t o = r * Ws + dj;
        for (int64_t j = std::max<int64_t>(0, -dj); j < std::min(Ws, Ws - dj); ++j) {
          const acc_t d = s[o + j] - m[j];
          row_acc[j] += d * d;
        }
      }
    }
    for (int64_t j = 0; j < Ws; ++j) {
      sigma[i * Ws + j] = std::sqrt(row_acc[j] * (acc_t(1) / (rows * col_count[j])) + eps);
    }
  }
}

// Adds d loss / d s through the local statistics to ds (one Hs × Ws plane): every position
// q whose neighbourhood holds p gives (dμ_q + dσ_q (s_p − μ_q) / σ_q) / n_q
// (local_stats_grad in siman_normalize.h), here with a = dμ / n and b = dσ / (σ n) per q
// first, then row-vectorizable loops.
template <typename acc_t>
void box_stats_grad(const acc_t* s, const acc_t* mu, const acc_t* sigma, const acc_t* dmu,
                    const acc_t* dsigma, int64_t Hs, int64_t Ws, int64_t half,
                    const acc_t* col_count, acc_t* a, acc_t* b, acc_t* ds) {
  for (int64_t i = 0; i < Hs; ++i) {
    int64_t r0, r1;
    window(i, Hs, half, r0, r1);
    const acc_t rows = static_cast<acc_t>(r1 - r0);
    for (int64_t j = 0; j < Ws; ++j) {
      const int64_t q = i * Ws + j;
      const acc_t inv_n = acc_t(1) / (rows * col_count[j]);
      a[q] = dmu[q] * inv_n;
      b[q] = dsigma[q] * inv_n / sigma[q];
    }
  }
  for (int64_t i = 0; i < Hs; ++i) {
    int64_t r0, r1;
    window(i, Hs, half, r0, r1);
    const acc_t* x = s + i * Ws;
    acc_t* g = ds + i * Ws;
    for (int64_t r = r0; r < r1; ++r) {
      for (int64_t dj = -half; dj <= half; ++dj) {
        const int64_t o = r * Ws + dj;
        for (int64_t j = std::max<int64_t>(0, -dj); j < std::min(Ws, Ws - dj); ++j) {
          g[j] += a[o + j] + b[o + j] * (x[j] - mu[o + j]);
        }
      }
    }
  }
}

// Neighbourhood positions along the width at each column j (the count's column factor).
template <typename acc_t>
void column_counts(int64_t Ws, int64_t half, acc_t* count) {
  for (int64_t j = 0; j < Ws; ++j) {
    int64_t c0, c1;
    window(j, Ws, half, c0, c1);
    count[j] = static_cast<acc_t>(c1 - c0);
  }
}

// Loads image b into the buffers: ĉ, the raw style, key and V. With `fresh` the
// instance-norm statistics are computed into content_stats[b] / style_stats[b] (the
// forward); otherwise the saved ones are used (the backward). Both centre with the same op
// and scale with the same op, so they get the same ĉ and key.
template <typename acc_t>
void load_image(const at::Tensor& content, const at::Tensor& style, int64_t b, const Shape& s,
                at::Tensor& content_stats, at::Tensor& style_stats, int64_t kernel_size,
                double eps, bool fresh, ImageBuffers& img) {
  img.ch.view({s.C, s.H, s.W}).copy_(content[b]);
  img.raw.view({s.C, s.Hs, s.Ws}).copy_(style[b]);
  const at::Tensor cs = content_stats[b].unsqueeze(2), ss = style_stats[b].unsqueeze(2);
  img.key.copy_(img.raw);
  if (fresh) {
    centre_and_stats(img.ch, eps, content_stats[b]);
    centre_and_stats(img.key, eps, style_stats[b]);
  } else {
    img.ch.sub_(cs[0]);
    img.key.sub_(ss[0]);
  }
  img.ch.mul_(cs[1]);
  img.key.mul_(ss[1]).div_(std::sqrt(double(s.C)));
  const acc_t* raw = img.raw.const_data_ptr<acc_t>();
  acc_t* mu = img.V.mutable_data_ptr<acc_t>();
  acc_t* sigma = mu + s.C * s.L;
  acc_t* col_count = img.scratch.mutable_data_ptr<acc_t>();
  column_counts<acc_t>(s.Ws, kernel_size / 2, col_count);
  for (int64_t c = 0; c < s.C; ++c) {
    box_stats<acc_t>(raw + c * s.L, s.Hs, s.Ws, kernel_size / 2, static_cast<acc_t>(eps),
                     col_count, mu + c * s.L, sigma + c * s.L, col_count + s.Ws);
  }
}

template <typename acc_t>
void forward_cpu(const at::Tensor& content, const at::Tensor& style, int64_t kernel_size,
                 double eps, at::Tensor& out, at::Tensor& lse, at::Tensor& content_stats,
                 at::Tensor& style_stats) {
  const Shape s = shape_of(content, style);
  const auto acc = lse.options();
  at::parallel_for(0, s.B, 1, [&](int64_t b0, int64_t b1) {
    const PlainAtenGuard plain_aten;
    ImageBuffers img(s, acc);
    at::Tensor tile = at::empty({s.rows, s.L}, acc);
    at::Tensor aligned = at::empty({2 * s.C, s.rows}, acc);  // [μ̂; σ̂] of a tile
    at::Tensor row_max = at::empty({s.rows, 1}, acc), row_sum = at::empty({s.rows, 1}, acc);
    for (int64_t b = b0; b < b1; ++b) {
      load_image<acc_t>(content, style, b, s, content_stats, style_stats, kernel_size, eps,
                        /*fresh=*/true, img);
      const at::Tensor out_b = out[b].view({s.C, s.N});
      for (int64_t p0 = 0; p0 < s.N; p0 += s.rows) {
        const int64_t np = std::min(s.rows, s.N - p0);
        const at::Tensor ch = img.ch.narrow(1, p0, np);
        at::Tensor x = tile.narrow(0, 0, np);
        at::Tensor mx = row_max.narrow(0, 0, np), sm = row_sum.narrow(0, 0, np);
        at::mm_out(x, ch.t(), img.key);
        at::amax_out(mx, x, 1, /*keepdim=*/true);
        at::sum_out(sm, x.sub_(mx).exp_(), 1, /*keepdim=*/true);
        x.div_(sm);
        at::Tensor lse_p = lse[b].narrow(0, p0, np);
        at::log_out(lse_p, sm.squeeze(1));
        lse_p.add_(mx.squeeze(1));
        at::Tensor o = aligned.narrow(1, 0, np);
        at::mm_out(o, img.V, x.t());
        at::Tensor out_p = out_b.narrow(1, p0, np);  // σ̂ ⊙ ĉ + μ̂
        at::addcmul_out(out_p, o.narrow(0, 0, s.C), o.narrow(0, s.C, s.C), ch);
      }
    }
  });
}

template <typename acc_t>
void backward_cpu(const at::Tensor& grad_out, const at::Tensor& content, const at::Tensor& style,
                  const at::Tensor& lse, at::Tensor content_stats, at::Tensor style_stats,
                  int64_t kernel_size, double eps, at::Tensor& grad_content,
                  at::Tensor& grad_style) {
  const Shape s = shape_of(content, style);
  const auto acc = lse.options();
  const double sqrt_c = std::sqrt(double(s.C));
  const int64_t half = kernel_size / 2;
  at::parallel_for(0, s.B, 1, [&](int64_t b0, int64_t b1) {
    const PlainAtenGuard plain_aten;
    ImageBuffers img(s, acc);
    at::Tensor d_out = at::empty({2 * s.C, s.N}, acc);  // d loss / d [μ̂; σ̂] = [g; g ⊙ ĉ]
    at::Tensor d_ch = at::empty({s.C, s.N}, acc);
    at::Tensor d_key = at::empty({s.C, s.L}, acc), d_V = at::empty({2 * s.C, s.L}, acc);
    at::Tensor tile = at::empty({s.rows, s.L}, acc), d_tile = at::empty({s.rows, s.L}, acc);
    at::Tensor sigma_hat = at::empty({s.C, s.rows}, acc), row_dot = at::empty({s.rows, 1}, acc);
    for (int64_t b = b0; b < b1; ++b) {
      load_image<acc_t>(content, style, b, s, content_stats, style_stats, kernel_size, eps,
                        /*fresh=*/false, img);
      const at::Tensor g = d_out.narrow(0, 0, s.C);
      at::Tensor g_ch = d_out.narrow(0, s.C, s.C);
      g.view({s.C, s.H, s.W}).copy_(grad_out[b]);
      at::mul_out(g_ch, g, img.ch);
      d_key.zero_();
      d_V.zero_();
      for (int64_t p0 = 0; p0 < s.N; p0 += s.rows) {
        const int64_t np = std::min(s.rows, s.N - p0);
        const at::Tensor ch = img.ch.narrow(1, p0, np), dO = d_out.narrow(1, p0, np);
        // A, recomputed from the saved log-sum-exp.
        at::Tensor a = tile.narrow(0, 0, np);
        at::mm_out(a, ch.t(), img.key);
        a.sub_(lse[b].narrow(0, p0, np).unsqueeze(1)).exp_();
        at::Tensor sh = sigma_hat.narrow(1, 0, np);
        at::mm_out(sh, img.V.narrow(0, s.C, s.C), a.t());
        // dS = A ⊙ (dA − rowsum(A ⊙ dA)), dA = dO · V.
        at::Tensor ds = d_tile.narrow(0, 0, np), dot = row_dot.narrow(0, 0, np);
        at::mm_out(ds, dO.t(), img.V);
        at::sum_out(dot, ds.mul_(a), 1, /*keepdim=*/true);
        ds.addcmul_(a, dot, -1);
        // d ĉ = dS · keyᵀ + g ⊙ σ̂ (this tile's columns); d key += ĉ dS; d V += dO A.
        at::Tensor dc = d_ch.narrow(1, p0, np);
        at::mm_out(dc, img.key, ds.t());
        dc.addcmul_(g.narrow(1, p0, np), sh);
        d_key.addmm_(ch, ds);
        d_V.addmm_(dO, a);
      }
      // Through the instance norms: dx = rstd (dx̂ − mean(dx̂) − x̂ mean(dx̂ ⊙ x̂)); for the
      // style x̂ = √C key and dx̂ = d key / √C.
      const at::Tensor cs = content_stats[b].unsqueeze(2), ss = style_stats[b].unsqueeze(2);
      const at::Tensor c_dot = at::mul(d_ch, img.ch).mean(1, /*keepdim=*/true);
      d_ch.sub_(d_ch.mean(1, /*keepdim=*/true)).addcmul_(img.ch, c_dot, -1).mul_(cs[1]);
      grad_content[b].copy_(d_ch.view({s.C, s.H, s.W}));
      const at::Tensor s_dot = at::mul(d_key, img.key).mean(1, /*keepdim=*/true);
      d_key.sub_(d_key.mean(1, /*keepdim=*/true)).div_(sqrt_c);
      d_key.addcmul_(img.key, s_dot, -sqrt_c).mul_(ss[1]);
      // Through the local statistics.
      const acc_t* raw = img.raw.const_data_ptr<acc_t>();
      const acc_t* mu = img.V.const_data_ptr<acc_t>();
      const acc_t* dmu = d_V.const_data_ptr<acc_t>();
      acc_t* dst = d_key.mutable_data_ptr<acc_t>();
      acc_t* col_count = img.scratch.mutable_data_ptr<acc_t>();
      acc_t* a = col_count + s.Ws;
      column_counts<acc_t>(s.Ws, half, col_count);
      for (int64_t c = 0; c < s.C; ++c) {
        const int64_t o = c * s.L, o_sigma = (s.C + c) * s.L;
        box_stats_grad<acc_t>(raw + o, mu + o, mu + o_sigma, dmu + o, dmu + o_sigma, s.Hs, s.Ws,
                              half, col_count, a, a + s.L, dst + o);
      }
      grad_style[b].copy_(d_key.view({s.C, s.Hs, s.Ws}));
    }
  });
}

std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor> siman_normalize_cpu(
    const at::Tensor& content, const at::Tensor& style, int64_t kernel_size, double eps) {
  check_siman_normalize_args(content, style, kernel_size, eps);
  const int64_t B = content.size(0), C = content.size(1);
  const auto acc = content.options().dtype(acc_dtype(content.scalar_type()));
  at::Tensor out = at::empty(content.sizes(), content.options());
  at::Tensor lse = at::empty({B, content.size(2) * content.size(3)}, acc);
  at::Tensor content_stats = at::empty({B, 2, C}, acc), style_stats = at::empty({B, 2, C}, acc);
  AT_DISPATCH_FLOATING_TYPES(acc.dtype().toScalarType(), "siman_normalize_cpu", [&] {
    forward_cpu<scalar_t>(content, style, kernel_size, eps, out, lse, content_stats,
                          style_stats);
  });
  return {out, lse, content_stats, style_stats};
}

std::tuple<at::Tensor, at::Tensor> siman_normalize_backward_cpu(
    const at::Tensor& grad_out, const at::Tensor& content, const at::Tensor& style,
    const at::Tensor& lse, const at::Tensor& content_stats, const at::Tensor& style_stats,
    int64_t kernel_size, double eps) {
  check_siman_normalize_backward_args(grad_out, content, style, lse, content_stats, style_stats,
                                      kernel_size, eps);
  at::Tensor grad_content = at::empty(content.sizes(), content.options());
  at::Tensor grad_style = at::empty(style.sizes(), style.options());
  AT_DISPATCH_FLOATING_TYPES(lse.scalar_type(), "siman_normalize_backward_cpu", [&] {
    backward_cpu<scalar_t>(grad_out, content, style, lse, content_stats, style_stats,
                           kernel_size, eps, grad_content, grad_style);
  });
  return {grad_content, grad_style};
}

}  // namespace

TORCH_LIBRARY_IMPL(seqclr_ext, CPU, m) {
  m.impl("siman_normalize", &siman_normalize_cpu);
  m.impl("siman_normalize_backward", &siman_normalize_backward_cpu);
}

}  // namespace seqclr_ext
