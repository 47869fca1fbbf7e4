// Argument checks of seq_nce and nce_rows, shared by the CPU and CUDA kernels.
#include "seq_nce.h"

#include <ATen/ops/cat.h>
#include <ATen/ops/cumsum.h>
#include <ATen/ops/stack.h>
#include <ATen/ops/zeros.h>

namespace seqclr_ext {
namespace {

void check_float_matrix(const at::Tensor& t, const char* name) {
  TORCH_CHECK(t.dim() == 2, name, " must be a 2-D [N, F] tensor, got ", t.dim(), "-D of shape ",
              t.sizes());
  TORCH_CHECK(t.size(0) > 0 && t.size(1) > 0, name, " must not be empty, got shape ", t.sizes());
  check_floating(t, name);
}

void check_index_vector(const at::Tensor& t, const char* name, const at::Tensor& like,
                        const char* like_name, int64_t expected_len) {
  TORCH_CHECK(t.scalar_type() == at::kLong, name, " must be an int64 tensor, got ", t.scalar_type());
  TORCH_CHECK(t.dim() == 1 && t.size(0) == expected_len, name, " must have shape [",
              expected_len, "], got ", t.sizes());
  check_same_device(t, name, like, like_name);
}

void check_temperature(double temperature) {
  TORCH_CHECK(temperature > 0 && std::isfinite(temperature),
              "temperature must be a finite number > 0, got ", temperature);
}

}  // namespace

InstanceMapping parse_mapping(c10::string_view mapping, int64_t num_windows) {
  if (mapping == "frame") return {true, 0};
  if (mapping == "all") return {false, 1};
  TORCH_CHECK(mapping == "window", "mapping must be one of 'all', 'window', 'frame', got '",
              std::string(mapping), "'");
  TORCH_CHECK(num_windows >= 1 && num_windows <= kMaxWindows, "num_windows must be in [1, ",
              kMaxWindows, "] for mapping='window', got ", num_windows);
  return {false, num_windows};
}

at::Tensor lengths_to_offsets(const at::Tensor& lengths) {
  return at::cat({at::zeros({1}, lengths.options()), at::cumsum(lengths, 0)});
}

at::Tensor check_seq_nce_args(const at::Tensor& frames_a, const at::Tensor& frames_b,
                              const at::Tensor& lengths, double temperature) {
  check_float_matrix(frames_a, "frames_a");
  check_float_matrix(frames_b, "frames_b");
  TORCH_CHECK(frames_a.sizes() == frames_b.sizes(),
              "frames_a and frames_b must have the same shape, got ", frames_a.sizes(), " and ",
              frames_b.sizes());
  TORCH_CHECK(frames_a.scalar_type() == frames_b.scalar_type(),
              "frames_a and frames_b must have the same dtype, got ", frames_a.scalar_type(),
              " and ", frames_b.scalar_type());
  check_same_device(frames_b, "frames_b", frames_a, "frames_a");
  TORCH_CHECK(!at::isFloatingType(lengths.scalar_type()) && lengths.scalar_type() != at::kBool,
              "lengths must be an integer tensor, got ", lengths.scalar_type());
  TORCH_CHECK(lengths.dim() == 1 && lengths.size(0) > 0,
              "lengths must be a non-empty 1-D tensor, got shape ", lengths.sizes());
  check_same_device(lengths, "lengths", frames_a, "frames_a");
  check_temperature(temperature);
  const at::Tensor lens = lengths.to(at::kLong);
  // One host read for both value checks (a single sync on CUDA).
  const at::Tensor stats = at::stack({lens.min(), lens.sum()}).cpu();
  const int64_t min_len = stats[0].item<int64_t>(), total = stats[1].item<int64_t>();
  TORCH_CHECK(min_len >= 1, "lengths must all be >= 1, got a length of ", min_len);
  TORCH_CHECK(total == frames_a.size(0), "lengths must sum to total_frames = frames_a.size(0) = ",
              frames_a.size(0), ", got a sum of ", total);
  return lengths_to_offsets(lens);
}

void check_nce_rows_args(const at::Tensor& rows, const at::Tensor& cols, const at::Tensor& positive,
                         const at::Tensor& exclude, double temperature) {
  check_float_matrix(rows, "rows");
  check_float_matrix(cols, "cols");
  TORCH_CHECK(rows.size(1) == cols.size(1), "rows and cols must have the same feature size, got ",
              rows.size(1), " and ", cols.size(1));
  TORCH_CHECK(rows.scalar_type() == cols.scalar_type(), "rows and cols must have the same dtype, got ",
              rows.scalar_type(), " and ", cols.scalar_type());
  check_same_device(cols, "cols", rows, "rows");
  check_index_vector(positive, "positive", rows, "rows", rows.size(0));
  check_index_vector(exclude, "exclude", rows, "rows", rows.size(0));
  check_temperature(temperature);
  const int64_t C = cols.size(0);
  const at::Tensor stats =
      at::stack({positive.min(), positive.max(), exclude.min(), exclude.max(),
                 positive.eq(exclude).any().to(at::kLong)})
          .cpu();
  const auto* s = stats.data_ptr<int64_t>();
  TORCH_CHECK(s[0] >= 0 && s[1] < C, "positive must index columns in [0, ", C,
              "), got values in [", s[0], ", ", s[1], "]");
  TORCH_CHECK(s[2] >= -1 && s[3] < C, "exclude must index columns in [0, ", C,
              ") or be -1 (none), got values in [", s[2], ", ", s[3], "]");
  TORCH_CHECK(s[4] == 0, "positive and exclude must differ in every row");
}

}  // namespace seqclr_ext
