// The thin PyTorch binding of the fused kernels: op schemas and CPU implementations.
// Kernel math lives in csrc/include/aghmn/*.h, which needs no torch header.
#include <torch/library.h>

TORCH_LIBRARY(aghmn_fast, m) {
}
