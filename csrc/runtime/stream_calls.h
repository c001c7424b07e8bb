// The runtime's only door into the stream kernel (csrc/stream/stream_cpu.h, the same source the
// torch "push" path runs): every call into that header is in stream_calls.cpp, so a change of
// the kernel's entry points touches one file here.
#pragma once
#include <cstdint>
#include <string>
#include <vector>

#include "runtime/model.h"

namespace aghmn {
namespace rt {

// Floats of the packed weights the kernel expects for these dims (stream_layout<float>.total).
int64_t packed_floats(const ModelDims& d);

// A weight the kernel packs: its state-dict name and shape ([rows] when cols is 0).
struct KernelWeight {
  std::string name;
  int64_t rows, cols;
};

// The weights the kernel packs for these dims, in its order (stream/stream_weights.h: the list
// the torch op stream_pack takes too).
std::vector<KernelWeight> kernel_weights(const ModelDims& d);

// The kernel's packed buffer of the weights (pointers in kernel_weights(d)'s order, each
// holding its shape's floats): the same packing as the torch op's; bf16: the weight matrices
// rounded to bf16 (stream_pack(precision="bf16")).
std::vector<float> pack_kernel_weights(const ModelDims& d, const std::vector<const float*>& w,
                                       bool bf16 = false);

// One round of B distinct conversations (as aghmn::cpu::StreamBatch; tokens for the BiGRU
// reader, u_given [B, H] for the CNN reader).
struct PushRound {
  int64_t B;
  const int64_t* tokens;
  const int64_t* tok_offsets;  // [B + 1]
  const float* u_given;
  const int64_t* blocks;
  const int64_t* counts;
  void* u_store;      // [rows, H]: float, or bf16 bits (uint16_t) when the model is bf16
  void* proj_store;   // [max(D, 1), rows, 3H], as u_store; nullptr: no projection cache
  int64_t store_rows;
  float* u_out;  // [B, H]
  float* probs;  // [B, C]
};

// The fusion input projections [max(D, 1), n, 3H] of n stored reader vectors u [n, H] (store
// elements: float, or bf16 bits for a bf16 model), bit for bit as a push caches them; proj is
// left as it is when D = 0.
void project_slots(const Model& m, const void* u, int64_t n, void* proj);

// Probabilities of every conversation of the round, then the new utterances written into the
// ring store (in tiles, as the torch push path).
void stream_round(const Model& m, const PushRound& r);

}  // namespace rt
}  // namespace aghmn
