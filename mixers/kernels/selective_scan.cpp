// Fused CPU selective scan (Mamba-1 S6) forward and backward: the torch extension.
//
// The math (and why it is laid out as it is) is in selective_scan_core.h, shared with the
// onnxruntime custom op (ort_selective_scan.cpp); this file checks torch tensors and runs the
// blocks on ATen's thread pool.

#include <ATen/Parallel.h>

#include "selective_scan_core.h"

namespace {

using archgen_scan::W;
using archgen_scan::backward_block;
using archgen_scan::forward_block;

void check_inputs(const torch::Tensor& x, const torch::Tensor& dt, const torch::Tensor& A,
                  const torch::Tensor& Bm, const torch::Tensor& Cm, const torch::Tensor& Dk) {
  TORCH_CHECK(x.device().is_cpu(), "selective_scan: CPU tensors only");
  TORCH_CHECK(x.dim() == 3 && dt.sizes() == x.sizes(), "selective_scan: x, dt must be [B, L, D]");
  TORCH_CHECK(A.dim() == 2 && A.size(0) == x.size(2), "selective_scan: A must be [D, N]");
  TORCH_CHECK(Bm.dim() == 3 && Bm.size(0) == x.size(0) && Bm.size(1) == x.size(1) &&
                  Bm.size(2) == A.size(1) && Cm.sizes() == Bm.sizes(),
              "selective_scan: B, C must be [B, L, N]");
  TORCH_CHECK(Dk.dim() == 1 && Dk.size(0) == x.size(2), "selective_scan: D must be [D]");
  for (const auto* t : {&x, &dt, &A, &Bm, &Cm, &Dk}) {
    TORCH_CHECK(t->is_contiguous(), "selective_scan: inputs must be contiguous");
    TORCH_CHECK(t->scalar_type() == x.scalar_type(), "selective_scan: mixed dtypes");
  }
}

}  // namespace

torch::Tensor scan_fwd(torch::Tensor x, torch::Tensor dt, torch::Tensor A, torch::Tensor Bm,
                       torch::Tensor Cm, torch::Tensor Dk) {
  check_inputs(x, dt, A, Bm, Cm, Dk);
  const int64_t batch = x.size(0), L = x.size(1), D = x.size(2), N = A.size(1);
  const int64_t n_blk = (D + W - 1) / W;
  auto y = torch::empty_like(x);
  AT_DISPATCH_FLOATING_TYPES(x.scalar_type(), "scan_fwd", [&] {
    const auto *xp = x.data_ptr<scalar_t>(), *dtp = dt.data_ptr<scalar_t>();
    const auto *Ap = A.data_ptr<scalar_t>(), *Bp = Bm.data_ptr<scalar_t>();
    const auto *Cp = Cm.data_ptr<scalar_t>(), *Dp = Dk.data_ptr<scalar_t>();
    auto* yp = y.data_ptr<scalar_t>();
    at::parallel_for(0, batch * n_blk, 1, [&](int64_t begin, int64_t end) {
      for (int64_t i = begin; i < end; ++i) {
        const int64_t b = i / n_blk, c0 = (i % n_blk) * W;
        forward_block(xp + b * L * D, dtp + b * L * D, Ap, Bp + b * L * N, Cp + b * L * N, Dp,
                      yp + b * L * D, L, D, N, c0);
      }
    });
  });
  return y;
}

std::vector<torch::Tensor> scan_bwd(torch::Tensor x, torch::Tensor dt, torch::Tensor A,
                                    torch::Tensor Bm, torch::Tensor Cm, torch::Tensor Dk,
                                    torch::Tensor gy) {
  check_inputs(x, dt, A, Bm, Cm, Dk);
  TORCH_CHECK(gy.sizes() == x.sizes() && gy.is_contiguous() &&
                  gy.scalar_type() == x.scalar_type(),
              "selective_scan: bad output gradient");
  const int64_t batch = x.size(0), L = x.size(1), D = x.size(2), N = A.size(1);
  const int64_t n_blk = (D + W - 1) / W;
  auto gx = torch::empty_like(x), gdt = torch::empty_like(x);
  auto gA_t = torch::zeros({batch, N, D}, x.options());
  auto gB = torch::empty({n_blk, batch, L, N}, x.options());
  auto gC = torch::empty({n_blk, batch, L, N}, x.options());
  auto gD = torch::zeros({batch, D}, x.options());
  AT_DISPATCH_FLOATING_TYPES(x.scalar_type(), "scan_bwd", [&] {
    const auto *xp = x.data_ptr<scalar_t>(), *dtp = dt.data_ptr<scalar_t>();
    const auto *Ap = A.data_ptr<scalar_t>(), *Bp = Bm.data_ptr<scalar_t>();
    const auto *Cp = Cm.data_ptr<scalar_t>(), *Dp = Dk.data_ptr<scalar_t>();
    const auto* gyp = gy.data_ptr<scalar_t>();
    auto *gxp = gx.data_ptr<scalar_t>(), *gdtp = gdt.data_ptr<scalar_t>();
    auto *gAp = gA_t.data_ptr<scalar_t>(), *gBp = gB.data_ptr<scalar_t>();
    auto *gCp = gC.data_ptr<scalar_t>(), *gDp = gD.data_ptr<scalar_t>();
    at::parallel_for(0, batch * n_blk, 1, [&](int64_t begin, int64_t end) {
      for (int64_t i = begin; i < end; ++i) {
        const int64_t b = i / n_blk, blk = i % n_blk, c0 = blk * W;
        const int64_t part = (blk * batch + b) * L * N;
        backward_block(xp + b * L * D, dtp + b * L * D, Ap, Bp + b * L * N, Cp + b * L * N, Dp,
                       gyp + b * L * D, gxp + b * L * D, gdtp + b * L * D, gAp + b * N * D,
                       gBp + part, gCp + part, gDp + b * D, L, D, N, c0);
      }
    });
  });
  return {gx, gdt, gA_t.sum(0).t().contiguous(), gB.sum(0), gC.sum(0), gD.sum(0)};
}
