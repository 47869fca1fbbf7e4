// Shared by every op's CPU and CUDA kernels: the accumulation dtype, the input checks
// written the same way for every op, and the CUDA grid size.
#pragma once

#include <ATen/core/Tensor.h>
#include <c10/util/Exception.h>

#include <cstdint>
#include <limits>

namespace seqclr_ext {

// Float32 accumulation for float16, bfloat16 and float32, float64 for float64: the dtype of
// the saved statistics, and at::opmath_type of the kernels' scalar_t (the fake kernels in
// seqclr_ext/ops/_library.py follow the same rule).
inline at::ScalarType acc_dtype(at::ScalarType dtype) {
  return dtype == at::kDouble ? at::kDouble : at::kFloat;
}

// The dtypes the kernels are instantiated for.
inline void check_floating(const at::Tensor& t, const char* name) {
  const auto dt = t.scalar_type();
  TORCH_CHECK(dt == at::kFloat || dt == at::kDouble || dt == at::kHalf || dt == at::kBFloat16,
              name, " must be float32, float64, float16 or bfloat16, got ", dt);
}

// Every tensor argument lives on the device the call was dispatched to (`like`'s).
inline void check_same_device(const at::Tensor& t, const char* name, const at::Tensor& like,
                              const char* like_name) {
  TORCH_CHECK(t.device() == like.device(), name, " must be on ", like_name, "'s device ",
              like.device(), ", got ", t.device());
}

// Blocks of per_block items covering n items: CUDA's grid x limit is 2³¹ − 1.
inline unsigned int grid_size(int64_t n, int64_t per_block) {
  const int64_t blocks = (n + per_block - 1) / per_block;
  TORCH_CHECK(blocks <= std::numeric_limits<int32_t>::max(), "seqclr_ext: ", n,
              " items exceed the CUDA grid limit");
  return static_cast<unsigned int>(blocks);
}

}  // namespace seqclr_ext
