// Shared by the CPU kernels: the dispatch state of ATen calls made inside at::parallel_for
// (workers, and the calling thread that runs the first chunk).
#pragma once

#include <ATen/core/LegacyTypeDispatch.h>
#include <c10/core/impl/LocalDispatchKeySet.h>

namespace seqclr_ext {

// Plain ATen below autograd (workers do not inherit the caller's autograd state) and below
// autocast (under torch.autocast a kernel's float32 GEMMs must not turn into bfloat16 ones).
struct PlainAtenGuard {
  at::AutoDispatchBelowADInplaceOrView below_autograd;
  c10::impl::ExcludeDispatchKeyGuard below_autocast{c10::autocast_dispatch_keyset};
};

}  // namespace seqclr_ext
