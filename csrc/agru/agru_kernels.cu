// AGRU (attention GRU) recurrences: the cells plugged into recurrence.cuh and their launchers.
#include "agru/agru_kernels.h"
#include "common/recurrence.cuh"

namespace aghmn {
namespace cuda {
namespace detail {

template <typename T>
struct AgruForwardCell : ReversibleSteps {
  using Scalar = T;
  using Args = AgruForwardParams<T>;
  static constexpr int kGates = 2;
  static constexpr bool kSlotIndex = false;
  struct In {
    T xr, xn, a;
  };

  AGHMN_CELL const T* weight(const Args& p, int) { return p.weight_hh; }
  AGHMN_CELL const T* bias(const Args& p, int) { return p.bias_hh; }
  AGHMN_CELL T initial(const Args& p, int64_t row, int k) {
    return __ldg(p.h0 + row * p.hidden + k);
  }
  AGHMN_CELL int slot(const Args&, int64_t, int) { return -1; }

  AGHMN_CELL In load(const Args& p, const Geometry&, const int*, int, int64_t row, int,
                            int t, int j) {
    const int64_t H = p.hidden, pos = row * p.steps + t;
    const T* x = p.xproj + pos * 2 * H;
    return {__ldg(x + j), __ldg(x + H + j), __ldg(p.attn + pos)};
  }

  AGHMN_CELL T finish(const Args& p, const Geometry&, int, int64_t row, int t, int j,
                             const In& in, const T (&hg)[kGates], T h) {
    const AgruForward<T> o = agru_forward_unit(in.xr, in.xn, hg[0], hg[1], in.a, h);
    const int64_t H = p.hidden, pos = row * p.steps + t;
    p.output[pos * H + j] = o.h_new;
    T* g = p.gates + pos * 3 * H;
    g[j] = o.r;
    g[H + j] = o.n;
    g[2 * H + j] = hg[1];
    return o.h_new;
  }
};

template <typename T>
struct AgruBackwardCell : ReversibleSteps {
  using Scalar = T;
  using Args = AgruBackwardParams<T>;
  static constexpr int kGates = 2;
  static constexpr bool kAttnGrad = true;
  static constexpr bool kInitialGrad = true;
  struct In {
    T go, a, r, n, hn, h_prev;
  };

  AGHMN_CELL const T* weight(const Args& p, int) { return p.weight_hh; }

  AGHMN_CELL In load(const Args& p, const Geometry&, int, int64_t row, int t, int t_prev,
                            int j) {
    const int64_t H = p.hidden, pos = row * p.steps + t;
    const T* g = p.gates + pos * 3 * H;
    const T h_prev = t_prev >= 0 ? __ldg(p.output + (row * p.steps + t_prev) * H + j)
                                 : __ldg(p.h0 + row * H + j);
    return {__ldg(p.grad_output + pos * H + j), __ldg(p.attn + pos), __ldg(g + j),
            __ldg(g + H + j), __ldg(g + 2 * H + j), h_prev};
  }

  AGHMN_CELL UnitGrads<T, kGates> step(const Args& p, const Geometry&, int, int64_t row,
                                              int t, int j, const In& in, T carry) {
    const AgruBackward<T> g = agru_backward_unit(in.go + carry, in.a, in.r, in.n, in.hn, in.h_prev);
    const int64_t H = p.hidden, pos = row * p.steps + t;
    T* gx = p.grad_xproj + pos * 2 * H;
    gx[j] = g.dpr;
    gx[H + j] = g.dpn;
    T* gh = p.grad_ghh + pos * 2 * H;
    gh[j] = g.dpr;
    gh[H + j] = g.dhn;
    return {{g.dpr, g.dhn}, g.dh_direct, g.da};
  }

  AGHMN_CELL void write_attn_grad(const Args& p, int64_t row, int t, T value) {
    p.grad_attn[row * p.steps + t] = value;
  }
  AGHMN_CELL void write_initial_grad(const Args& p, int64_t row, int j, T carry) {
    p.grad_h0[row * p.hidden + j] = carry;
  }
};

}  // namespace detail

template <typename T>
cudaError_t agru_forward(const AgruForwardParams<T>& p, cudaStream_t stream) {
  if (p.batch < 0 || p.steps < 0) return cudaErrorInvalidValue;
  detail::Plan plan;
  const detail::Shape shape =
      detail::launch_shape<detail::AgruForwardCell<T>, false>(p.batch, p.hidden, p.steps, 1);
  cudaError_t err = detail::choose_plan<T>(shape, true, &plan);
  if (err != cudaSuccess || p.batch == 0 || p.steps == 0) return err;
  return detail::run_recurrence<detail::AgruForwardCell<T>, false>(plan, p, stream);
}

template <typename T>
cudaError_t agru_backward(const AgruBackwardParams<T>& p, cudaStream_t stream) {
  if (p.batch < 0 || p.steps < 0) return cudaErrorInvalidValue;
  detail::Plan plan;
  const detail::Shape shape =
      detail::launch_shape<detail::AgruBackwardCell<T>, true>(p.batch, p.hidden, p.steps, 1);
  cudaError_t err = detail::choose_plan<T>(shape, false, &plan);
  if (err != cudaSuccess || p.batch == 0) return err;
  if (p.steps == 0)  // nothing flows back: grad_h0 is zero
    return cudaMemsetAsync(p.grad_h0, 0, sizeof(T) * p.batch * p.hidden, stream);
  return detail::run_recurrence<detail::AgruBackwardCell<T>, true>(plan, p, stream);
}

template cudaError_t agru_forward<float>(const AgruForwardParams<float>&, cudaStream_t);
template cudaError_t agru_forward<double>(const AgruForwardParams<double>&, cudaStream_t);
template cudaError_t agru_backward<float>(const AgruBackwardParams<float>&, cudaStream_t);
template cudaError_t agru_backward<double>(const AgruBackwardParams<double>&, cudaStream_t);

}  // namespace cuda
}  // namespace aghmn
