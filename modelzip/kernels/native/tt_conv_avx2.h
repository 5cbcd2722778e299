// Declaration shared by tt_conv_avx2.cpp (definition) and avx2.cpp (the Python bindings); the
// arguments are tt_conv.h's.
#pragma once
#include <torch/extension.h>

#include <vector>

namespace modelzip_avx2 {

torch::Tensor tt_conv2d(torch::Tensor x, torch::Tensor spatial, torch::Tensor tile_in,
                        torch::Tensor tile_mask, torch::Tensor tile_out, torch::Tensor tile_omask,
                        std::vector<torch::Tensor> weights, std::vector<torch::Tensor> row_in,
                        std::vector<torch::Tensor> k_off, std::vector<torch::Tensor> row_out,
                        std::vector<torch::Tensor> col_out, std::vector<int64_t> src,
                        std::vector<int64_t> dst, torch::Tensor bias, int64_t O, int64_t P,
                        int64_t Q, int64_t zsize, int64_t bufsize, int64_t nbuf, int64_t out_buf);

}  // namespace modelzip_avx2
