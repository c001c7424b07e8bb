// See cnn_reader.h. A window that lies wholly in the zero padding gives ReLU(bias) for every
// filter, so those windows are one value and the real ones skip their zero positions; the sums
// run in another order than PyTorch's convolution (agreement within fp32 rounding, not bitwise).
#include "runtime/cnn_reader.h"

#include <algorithm>
#include <cmath>
#include <vector>

namespace aghmn {
namespace rt {

void cnn_reader(const Model& m, const int64_t* tokens, int64_t len, float* u) {
  const ModelDims& d = m.dims;
  const int64_t E = d.E, F = d.cnn_filters, H = d.H;
  const int64_t P = std::max<int64_t>(d.max_len, 5);  // padded positions
  std::vector<float> pooled(3 * F), acc(F);
  for (int w = 0; w < 3; ++w) {
    const int64_t k = 3 + w, windows = P - k + 1;
    const float* W = m.conv_w[w].data();  // [k][E][F]
    const float* b = m.conv_b[w].data();
    float* best = pooled.data() + w * F;
    const int64_t real = std::min(len, windows);  // windows that start on a real token
    for (int64_t f = 0; f < F; ++f) best[f] = real < windows ? std::max(b[f], 0.0f) : -INFINITY;
    for (int64_t t = 0; t < real; ++t) {
      std::copy(b, b + F, acc.begin());
      for (int64_t j = 0; j < k && t + j < len; ++j) {
        const float* x = m.embed + tokens[t + j] * E;
        const float* Wj = W + j * E * F;
        for (int64_t c = 0; c < E; ++c) {
          const float xc = x[c];
          const float* row = Wj + c * F;
          for (int64_t f = 0; f < F; ++f) acc[f] += row[f] * xc;
        }
      }
      for (int64_t f = 0; f < F; ++f) best[f] = std::max(best[f], std::max(acc[f], 0.0f));
    }
  }
  for (int64_t h = 0; h < H; ++h) {
    const float* row = m.proj_w.data() + h * 3 * F;
    float s = m.proj_b[h];
    for (int64_t i = 0; i < 3 * F; ++i) s += row[i] * pooled[i];
    u[h] = std::tanh(s);
  }
}

}  // namespace rt
}  // namespace aghmn
