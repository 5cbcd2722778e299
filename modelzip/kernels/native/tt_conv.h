// The fused TT-conv's entry point, defined in tt_conv_driver.h and built once per ISA: tt_conv.cpp
// (AVX-512) and tt_conv_avx2.cpp (AVX2 + FMA), bound by entry_points.h. Each build names its own
// namespace (-DMODELZIP_ISA=..., modelzip/kernels/_native.py), so both extensions can be loaded
// in one process.
#pragma once
#include <torch/extension.h>

#include <vector>

namespace MODELZIP_ISA {

torch::Tensor tt_conv2d(torch::Tensor x, torch::Tensor spatial, torch::Tensor tile_in,
                        torch::Tensor tile_mask, torch::Tensor tile_out, torch::Tensor tile_omask,
                        std::vector<torch::Tensor> weights, std::vector<torch::Tensor> row_in,
                        std::vector<torch::Tensor> k_off, std::vector<torch::Tensor> row_out,
                        std::vector<torch::Tensor> col_out, std::vector<int64_t> src,
                        std::vector<int64_t> dst, torch::Tensor bias, int64_t O, int64_t P,
                        int64_t Q, int64_t zsize, int64_t bufsize, int64_t nbuf, int64_t out_buf);

}  // namespace MODELZIP_ISA
