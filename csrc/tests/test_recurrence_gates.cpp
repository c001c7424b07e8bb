// The CUDA recurrence skeleton (common/recurrence.cuh) is generic over the gate count: a toy
// cell with G gate blocks (G = 1 and 4, which no op has) runs forward and backward on the SIMT
// emulator, in every weight placement and tile configuration the planner picks, against a plain
// double loop. The toy cell: h_t = tanh(x_t + sum_g c_g (W_g h_{t-1} + b_g)), c_g = 1 / (g + 1).
// Prints "recurrence_gates: N checks passed" and exits 0, or prints every failure and exits 1.
// Built by CMake (ctest), with -Wno-unknown-pragmas: the kernels' "#pragma unroll" is CUDA's.
#define AGHMN_SIMT_EMULATION 1
#include "tests/simt_emulator.h"
// clang-format off
#include "common/recurrence.cuh"
// clang-format on

#include <cmath>
#include <cstdio>
#include <random>
#include <set>
#include <vector>

namespace {

namespace d = aghmn::cuda::detail;

template <typename T>
struct ToyArgs {
  const T* x = nullptr;       // [B, T, H]
  const T* weight = nullptr;  // [G*H, H]
  const T* bias = nullptr;    // [G*H]
  const T* h0 = nullptr;      // [B, H]
  T* output = nullptr;        // [B, T, H]
  // backward
  const T* grad_output = nullptr;  // [B, T, H]
  T* grad_x = nullptr;             // [B, T, H]
  T* grad_h0 = nullptr;            // [B, H]
  int64_t batch = 0, steps = 0, hidden = 0;
  bool reverse = false;
};

constexpr double coefficient(int g) { return 1.0 / (g + 1); }

template <typename T, int G>
struct ToyForwardCell : d::ReversibleSteps {
  using Scalar = T;
  using Args = ToyArgs<T>;
  static constexpr int kGates = G;
  static constexpr bool kSlotIndex = false;
  struct In {
    T x;
  };
  AGHMN_CELL const T* weight(const Args& p, int) { return p.weight; }
  AGHMN_CELL const T* bias(const Args& p, int) { return p.bias; }
  AGHMN_CELL T initial(const Args& p, int64_t row, int k) { return p.h0[row * p.hidden + k]; }
  AGHMN_CELL int slot(const Args&, int64_t, int) { return -1; }
  AGHMN_CELL In load(const Args& p, const d::Geometry&, const int*, int, int64_t row, int, int t,
                     int j) {
    return {p.x[(row * p.steps + t) * p.hidden + j]};
  }
  AGHMN_CELL T finish(const Args& p, const d::Geometry&, int, int64_t row, int t, int j,
                      const In& in, const T (&hg)[kGates], T) {
    T pre = in.x;
    for (int g = 0; g < G; ++g) pre += T(coefficient(g)) * hg[g];
    const T h = std::tanh(pre);
    p.output[(row * p.steps + t) * p.hidden + j] = h;
    return h;
  }
};

template <typename T, int G>
struct ToyBackwardCell : d::ReversibleSteps {
  using Scalar = T;
  using Args = ToyArgs<T>;
  static constexpr int kGates = G;
  static constexpr bool kAttnGrad = false;
  static constexpr bool kInitialGrad = true;
  struct In {
    T go, h;
  };
  AGHMN_CELL const T* weight(const Args& p, int) { return p.weight; }
  AGHMN_CELL In load(const Args& p, const d::Geometry&, int, int64_t row, int t, int, int j) {
    const int64_t at = (row * p.steps + t) * p.hidden + j;
    return {p.grad_output[at], p.output[at]};
  }
  AGHMN_CELL d::UnitGrads<T, G> step(const Args& p, const d::Geometry&, int, int64_t row, int t,
                                     int j, const In& in, T carry) {
    const T dpre = (in.go + carry) * (T(1) - in.h * in.h);
    p.grad_x[(row * p.steps + t) * p.hidden + j] = dpre;
    d::UnitGrads<T, G> u{};
    for (int g = 0; g < G; ++g) u.dg[g] = T(coefficient(g)) * dpre;
    return u;
  }
  AGHMN_CELL void write_initial_grad(const Args& p, int64_t row, int j, T carry) {
    p.grad_h0[row * p.hidden + j] = carry;
  }
};

int g_checks = 0, g_failures = 0;

void close(const char* what, double got, double want, double tol, const char* config) {
  ++g_checks;
  if (std::isfinite(got) && std::fabs(got - want) <= tol * (1 + std::fabs(want))) return;
  ++g_failures;
  std::printf("FAIL %s [%s]: got %.17g want %.17g\n", what, config, got, want);
}

/// The toy recurrence in double, forward and backward (BPTT).
struct Reference {
  std::vector<double> out, grad_x, grad_h0;
};

Reference reference(int G, int64_t B, int64_t T, int64_t H, bool reverse,
                    const std::vector<double>& x, const std::vector<double>& w,
                    const std::vector<double>& b, const std::vector<double>& h0,
                    const std::vector<double>& go) {
  Reference r{std::vector<double>(B * T * H), std::vector<double>(B * T * H),
              std::vector<double>(B * H)};
  for (int64_t row = 0; row < B; ++row) {
    std::vector<double> h(h0.begin() + row * H, h0.begin() + (row + 1) * H), next(H);
    for (int64_t i = 0; i < T; ++i) {
      const int64_t t = reverse ? T - 1 - i : i;
      for (int64_t j = 0; j < H; ++j) {
        double pre = x[(row * T + t) * H + j];
        for (int g = 0; g < G; ++g) {
          double hg = b[g * H + j];
          for (int64_t k = 0; k < H; ++k) hg += w[(g * H + j) * H + k] * h[k];
          pre += coefficient(g) * hg;
        }
        next[j] = std::tanh(pre);
        r.out[(row * T + t) * H + j] = next[j];
      }
      h = next;
    }
    std::vector<double> carry(H, 0.0), dpre(H);
    for (int64_t i = T - 1; i >= 0; --i) {
      const int64_t t = reverse ? T - 1 - i : i;
      for (int64_t j = 0; j < H; ++j) {
        const double hv = r.out[(row * T + t) * H + j];
        dpre[j] = (go[(row * T + t) * H + j] + carry[j]) * (1 - hv * hv);
        r.grad_x[(row * T + t) * H + j] = dpre[j];
      }
      for (int64_t k = 0; k < H; ++k) {
        double c = 0;
        for (int g = 0; g < G; ++g)
          for (int64_t j = 0; j < H; ++j) c += coefficient(g) * dpre[j] * w[(g * H + j) * H + k];
        carry[k] = c;
      }
    }
    for (int64_t k = 0; k < H; ++k) r.grad_h0[row * H + k] = carry[k];
  }
  return r;
}

template <typename T>
std::vector<T> cast(const std::vector<double>& v) {
  return std::vector<T>(v.begin(), v.end());
}

/// One forward + backward of the toy cell with G gates; returns the plans' weight placements
/// and tile configurations it ran (forward and backward).
template <typename T, int G>
void run(int64_t B, int64_t steps, int64_t H, bool reverse, std::set<int>* placements,
         std::set<bool>* tiles) {
  std::mt19937_64 rng(1000 * G + 100 * B + H);
  std::uniform_real_distribution<double> unit(-1.0, 1.0);
  auto draw = [&](int64_t n, double scale) {
    std::vector<double> v(n);
    for (double& e : v) e = scale * unit(rng);
    return v;
  };
  const double ws = 1.0 / std::sqrt(static_cast<double>(G * H));
  const auto x = draw(B * steps * H, 1.0), w = draw(G * H * H, ws), b = draw(G * H, 0.1),
             h0 = draw(B * H, 0.5), go = draw(B * steps * H, 1.0);
  const Reference want = reference(G, B, steps, H, reverse, x, w, b, h0, go);

  auto tx = cast<T>(x), tw = cast<T>(w), tb = cast<T>(b), th0 = cast<T>(h0), tgo = cast<T>(go);
  std::vector<T> out(B * steps * H, T(NAN)), gx(B * steps * H, T(NAN)), gh0(B * H, T(NAN));
  ToyArgs<T> p;
  p.x = tx.data();
  p.weight = tw.data();
  p.bias = tb.data();
  p.h0 = th0.data();
  p.output = out.data();
  p.grad_output = tgo.data();
  p.grad_x = gx.data();
  p.grad_h0 = gh0.data();
  p.batch = B;
  p.steps = steps;
  p.hidden = H;
  p.reverse = reverse;

  char config[160];
  std::snprintf(config, sizeof config, "%s G=%d B=%lld T=%lld H=%lld reverse=%d",
                sizeof(T) == 4 ? "float" : "double", G, static_cast<long long>(B),
                static_cast<long long>(steps), static_cast<long long>(H), reverse ? 1 : 0);
  d::Plan plan;
  cudaError_t err = d::choose_plan<T>(
      d::launch_shape<ToyForwardCell<T, G>, false>(B, H, steps, 1), true, &plan);
  if (err == cudaSuccess) err = d::run_recurrence<ToyForwardCell<T, G>, false>(plan, p, nullptr);
  placements->insert(static_cast<int>(plan.weights));
  tiles->insert(plan.throughput);
  if (err == cudaSuccess)
    err = d::choose_plan<T>(d::launch_shape<ToyBackwardCell<T, G>, true>(B, H, steps, 1), false,
                            &plan);
  if (err == cudaSuccess) err = d::run_recurrence<ToyBackwardCell<T, G>, true>(plan, p, nullptr);
  placements->insert(static_cast<int>(plan.weights));
  tiles->insert(plan.throughput);
  ++g_checks;
  if (err != cudaSuccess || !aghmn_emu::rt().message.empty()) {
    ++g_failures;
    std::printf("FAIL launch [%s]: error %d %s\n", config, static_cast<int>(err),
                aghmn_emu::rt().message.c_str());
    aghmn_emu::rt().message.clear();
    return;
  }
  const double tol = sizeof(T) == 4 ? 2e-5 : 1e-12;
  for (size_t i = 0; i < out.size(); ++i) close("output", out[i], want.out[i], tol, config);
  for (size_t i = 0; i < gx.size(); ++i) close("grad_x", gx[i], want.grad_x[i], tol, config);
  for (size_t i = 0; i < gh0.size(); ++i) close("grad_h0", gh0[i], want.grad_h0[i], tol, config);
}

/// Every shape of `run` on an emulated device with `sms` SMs and `smem` bytes of shared memory.
template <typename T, int G>
void sweep(int sms, int smem, std::set<int>* placements, std::set<bool>* tiles) {
  aghmn_emu::rt().settings = {sms, smem, smem + 1024, 0, 0};
  aghmn_emu::rt().smem_attribute.clear();
  for (int64_t H : {5, 33}) {
    for (int64_t B : {1, 3, 12}) run<T, G>(B, 4, H, B == 3, placements, tiles);
  }
}

}  // namespace

int main() {
  std::set<int> placements;
  std::set<bool> tiles;
  // One SM: the register plan for one sequence, the throughput tiles beyond; a small shared
  // memory: weights from global memory.
  for (int sms : {1, 132}) {
    for (int smem : {232448, 4096}) {
      sweep<float, 1>(sms, smem, &placements, &tiles);
      sweep<double, 1>(sms, smem, &placements, &tiles);
      sweep<float, 4>(sms, smem, &placements, &tiles);
      sweep<double, 4>(sms, smem, &placements, &tiles);
    }
  }
  // The sweep must have reached every weight placement and both tile configurations.
  ++g_checks;
  if (placements.size() != 3 || tiles.size() != 2) {
    ++g_failures;
    std::printf("FAIL coverage: %zu weight placements, %zu tile configurations\n",
                placements.size(), tiles.size());
  }
  if (g_failures) {
    std::printf("recurrence_gates: %d of %d checks failed\n", g_failures, g_checks);
    return 1;
  }
  std::printf("recurrence_gates: %d checks passed\n", g_checks);
  return 0;
}
