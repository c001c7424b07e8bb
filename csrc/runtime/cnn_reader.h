// The CNN word reader (CNNReader of aghmn_fast/models/aghmn.py) for the runtime: filters of
// widths 3, 4, 5 over the embedded tokens zero-padded to max(max_len, 5) positions, ReLU, max over
// time, Linear(3F -> H) + tanh. Its reader vectors are given to the stream kernel.
#pragma once
#include <cstdint>

#include "runtime/model.h"

namespace aghmn {
namespace rt {

// u [H] for one utterance of len (1..max_len) token ids.
void cnn_reader(const Model& m, const int64_t* tokens, int64_t len, float* u);

}  // namespace rt
}  // namespace aghmn
