// Framework-free test of the streaming step (stream/stream_cpu.h) against a naive double-precision
// AGHMN written from docs (AGHMN.md sections 1-6): the reader, the fusion GRU over the whole
// left-padded window (pads fed through in both directions), attention over all K slots with
// masked pads, the AGRU over all K slots, the classifier. The kernel skips pads and starts from
// precomputed pad states; this checks that the shortcut is exact. Several conversations share
// each push, at different history lengths, in one and in several tiles; every instruction-set
// variant, fp32 and fp64.
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <limits>
#include <random>
#include <vector>

#include "stream/stream_cpu.h"

namespace {

int g_failures = 0, g_checks = 0;
using Vec = std::vector<double>;

double sig(double x) { return 1.0 / (1.0 + std::exp(-x)); }

Vec randn(size_t n, double scale, std::mt19937& rng) {
  std::normal_distribution<double> d(0.0, scale);
  Vec v(n);
  for (auto& x : v) x = d(rng);
  return v;
}

struct Model {
  int64_t H, E, C, K, D, S, hops, L, V;
  Vec emb, r_ih[2], r_hh[2], r_bih[2], r_bhh[2], proj_w, proj_b;
  Vec f_ih[2], f_hh[2], f_bih[2], f_bhh[2], s_ih[2], s_hh[2], s_bih[2], s_bhh[2], cls_w, cls_b;
};

Model random_model(int64_t D, int64_t S, int64_t hops, std::mt19937& rng) {
  Model m;
  m.H = 13;
  m.E = 7;
  m.C = 5;
  m.K = 4;
  m.D = D;
  m.S = S;
  m.hops = hops;
  m.L = 6;
  m.V = 11;
  const int64_t H = m.H;
  m.emb = randn(m.V * m.E, 1.0, rng);
  for (int d = 0; d < 2; ++d) {
    m.r_ih[d] = randn(3 * H * m.E, 0.4, rng);
    m.r_hh[d] = randn(3 * H * H, 0.3, rng);
    m.r_bih[d] = randn(3 * H, 0.2, rng);
    m.r_bhh[d] = randn(3 * H, 0.2, rng);
    m.f_ih[d] = randn(3 * H * H, 0.3, rng);
    m.f_hh[d] = randn(3 * H * H, 0.3, rng);
    m.f_bih[d] = randn(3 * H, 0.3, rng);
    m.f_bhh[d] = randn(3 * H, 0.3, rng);
    m.s_ih[d] = randn(2 * H * H, 0.3, rng);
    m.s_hh[d] = randn(2 * H * H, 0.3, rng);
    m.s_bih[d] = randn(2 * H, 0.2, rng);
    m.s_bhh[d] = randn(2 * H, 0.2, rng);
  }
  m.proj_w = randn(H * 2 * H, 0.3, rng);
  m.proj_b = randn(H, 0.2, rng);
  m.cls_w = randn(m.C * H, 0.5, rng);
  m.cls_b = randn(m.C, 0.2, rng);
  return m;
}

Vec affine(const Vec& w, const Vec& b, const Vec& x, int64_t rows) {
  const int64_t cols = static_cast<int64_t>(x.size());
  Vec y(rows);
  for (int64_t i = 0; i < rows; ++i) {
    double s = b[i];
    for (int64_t k = 0; k < cols; ++k) s += w[i * cols + k] * x[k];
    y[i] = s;
  }
  return y;
}

Vec gru_step(const Vec& w_ih, const Vec& w_hh, const Vec& b_ih, const Vec& b_hh, const Vec& x,
             const Vec& h) {
  const int64_t H = static_cast<int64_t>(h.size());
  const Vec gi = affine(w_ih, b_ih, x, 3 * H), gh = affine(w_hh, b_hh, h, 3 * H);
  Vec out(H);
  for (int64_t j = 0; j < H; ++j) {
    const double r = sig(gi[j] + gh[j]), z = sig(gi[H + j] + gh[H + j]);
    const double n = std::tanh(gi[2 * H + j] + r * gh[2 * H + j]);
    out[j] = (1 - z) * n + z * h[j];
  }
  return out;
}

Vec naive_reader(const Model& m, const std::vector<int64_t>& tokens) {
  const int64_t H = m.H, n = static_cast<int64_t>(tokens.size());
  Vec pool(2 * H, -std::numeric_limits<double>::infinity());
  for (int d = 0; d < 2; ++d) {
    Vec h(H, 0.0);
    for (int64_t s = 0; s < n; ++s) {
      const int64_t tok = tokens[d == 0 ? s : n - 1 - s];
      const Vec x(m.emb.begin() + tok * m.E, m.emb.begin() + (tok + 1) * m.E);
      h = gru_step(m.r_ih[d], m.r_hh[d], m.r_bih[d], m.r_bhh[d], x, h);
      for (int64_t j = 0; j < H; ++j) pool[d * H + j] = std::max(pool[d * H + j], h[j]);
    }
  }
  if (n < m.L)
    for (auto& p : pool) p = std::max(p, 0.0);
  Vec u = affine(m.proj_w, m.proj_b, pool, H);
  for (auto& x : u) x = std::tanh(x);
  return u;
}

// Class probabilities of query u over the history (all earlier reader vectors).
Vec naive_probs(const Model& m, const std::vector<Vec>& history, const Vec& u) {
  const int64_t H = m.H, K = m.K, n = static_cast<int64_t>(history.size());
  Vec e = u;
  if (m.D > 0 && n > 0) {
    const int64_t first = K - std::min(n, K);
    std::vector<Vec> x(K, Vec(H, 0.0)), mem(K);
    for (int64_t k = first; k < K; ++k) x[k] = history[n - K + k];
    for (int64_t k = 0; k < K; ++k) mem[k] = x[k];
    for (int d = 0; d < m.D; ++d) {
      Vec h(H, 0.0);
      for (int64_t s = 0; s < K; ++s) {
        const int64_t k = d == 0 ? s : K - 1 - s;
        h = gru_step(m.f_ih[d], m.f_hh[d], m.f_bih[d], m.f_bhh[d], x[k], h);
        for (int64_t j = 0; j < H; ++j) mem[k][j] += h[j];
      }
    }
    for (int64_t hop = 0; hop < m.hops; ++hop) {
      Vec a(K);
      double mx = -std::numeric_limits<double>::infinity(), sum = 0;
      for (int64_t k = 0; k < K; ++k) {
        double s = 0;
        for (int64_t j = 0; j < H; ++j) s += e[j] * mem[k][j];
        a[k] = k < first ? -1e10 : s;
        mx = std::max(mx, a[k]);
      }
      for (auto& v : a) sum += (v = std::exp(v - mx));
      for (auto& v : a) v /= sum;
      Vec o(H, 0.0);
      if (m.S == 0)
        for (int64_t k = 0; k < K; ++k)
          for (int64_t j = 0; j < H; ++j) o[j] += a[k] * mem[k][j];
      for (int c = 0; c < m.S; ++c) {
        Vec h(H, 0.0);
        for (int64_t s = 0; s < K; ++s) {
          const int64_t k = c == 0 ? s : K - 1 - s;
          const Vec gi = affine(m.s_ih[c], m.s_bih[c], mem[k], 2 * H);
          const Vec gh = affine(m.s_hh[c], m.s_bhh[c], h, 2 * H);
          for (int64_t j = 0; j < H; ++j) {
            const double r = sig(gi[j] + gh[j]), nn = std::tanh(gi[H + j] + r * gh[H + j]);
            h[j] = a[k] * nn + (1 - a[k]) * h[j];
          }
        }
        for (int64_t j = 0; j < H; ++j) o[j] += h[j];
      }
      for (int64_t j = 0; j < H; ++j) e[j] += o[j];
    }
  }
  Vec z = affine(m.cls_w, m.cls_b, e, m.C);
  double mx = z[0], sum = 0;
  for (double v : z) mx = std::max(mx, v);
  for (auto& v : z) sum += (v = std::exp(v - mx));
  for (auto& v : z) v /= sum;
  return z;
}

template <typename T>
std::vector<T> cast(const Vec& v) {
  return std::vector<T>(v.begin(), v.end());
}

// `conversations` conversations share each push; conversation c starts at step c % 3 and owns
// store block (conversations - 1 - c), so tiles mix histories of different lengths.
template <typename T>
void run_case(const Model& m, std::mt19937& rng, double tol, const char* name, int conversations) {
  using namespace aghmn::cpu;
  const StreamDims d{m.H, m.E, m.C, m.K, m.D, m.S, m.hops, m.L, true};
  std::vector<std::vector<T>> keep;  // owns the cast weights
  auto p = [&keep](const Vec& v) {
    keep.push_back(cast<T>(v));
    return keep.back().data();
  };
  StreamWeights<T> w{};
  for (int i = 0; i < 2; ++i) {
    w.reader_w_ih[i] = p(m.r_ih[i]);
    w.reader_w_hh[i] = p(m.r_hh[i]);
    w.reader_b_ih[i] = p(m.r_bih[i]);
    w.reader_b_hh[i] = p(m.r_bhh[i]);
    w.fusion_w_ih[i] = p(m.f_ih[i]);
    w.fusion_w_hh[i] = p(m.f_hh[i]);
    w.fusion_b_ih[i] = p(m.f_bih[i]);
    w.fusion_b_hh[i] = p(m.f_bhh[i]);
    w.summary_w_ih[i] = p(m.s_ih[i]);
    w.summary_w_hh[i] = p(m.s_hh[i]);
    w.summary_b_ih[i] = p(m.s_bih[i]);
    w.summary_b_hh[i] = p(m.s_bhh[i]);
  }
  w.reader_proj_w = p(m.proj_w);
  w.reader_proj_b = p(m.proj_b);
  w.cls_w = p(m.cls_w);
  w.cls_b = p(m.cls_b);
  std::vector<T> packed(stream_layout<T>(d).total);
  stream_pack(d, w, packed.data());
  const std::vector<T> emb = cast<T>(m.emb);

  const int64_t rows = (conversations + 1) * m.K, Dp = std::max<int64_t>(m.D, 1);
  std::vector<T> u_store(rows * m.H, T(7)), proj_store(Dp * rows * 3 * m.H, T(7));
  std::vector<std::vector<Vec>> history(conversations);
  std::uniform_int_distribution<int64_t> token(0, m.V - 1), length(1, m.L);
  for (int64_t step = 0; step < 9; ++step) {
    std::vector<int64_t> blocks, counts, tokens, offsets{0}, who;
    for (int c = 0; c < conversations; ++c) {
      if (step < c % 3) continue;
      who.push_back(c);
      blocks.push_back(conversations - 1 - c);
      counts.push_back(static_cast<int64_t>(history[c].size()));
      const int64_t len = step == 4 ? m.L : length(rng);  // max_len: no zero in the pool
      for (int64_t t = 0; t < len; ++t) tokens.push_back(token(rng));
      offsets.push_back(static_cast<int64_t>(tokens.size()));
    }
    const int64_t B = static_cast<int64_t>(who.size());
    std::vector<T> u_out(B * m.H, std::numeric_limits<T>::quiet_NaN());
    std::vector<T> probs(B * m.C, std::numeric_limits<T>::quiet_NaN());
    StreamBatch<T> in{B, emb.data(), tokens.data(), offsets.data(), nullptr, blocks.data(),
                      counts.data(), u_store.data(), proj_store.data(), rows, u_out.data(),
                      probs.data()};
    stream_forward_tile(d, packed.data(), in, 0, B);
    stream_remember_tile(d, packed.data(), in, 0, B);
    for (int64_t b = 0; b < B; ++b) {
      const std::vector<int64_t> toks(tokens.begin() + offsets[b], tokens.begin() + offsets[b + 1]);
      const Vec u = naive_reader(m, toks);
      const Vec want = naive_probs(m, history[who[b]], u);
      for (int64_t c = 0; c < m.C; ++c) {
        const double got = static_cast<double>(probs[b * m.C + c]);
        ++g_checks;
        if (!(std::fabs(got - want[c]) <= tol)) {
          if (++g_failures <= 20)
            std::printf("FAIL %s step %ld conversation %ld class %ld: got %.9g want %.9g\n", name,
                        static_cast<long>(step), static_cast<long>(who[b]), static_cast<long>(c),
                        got, want[c]);
        }
      }
      history[who[b]].push_back(u);
    }
  }
}

}  // namespace

int main() {
  std::mt19937 rng(99);
  using aghmn::cpu::IsaLevel;
  const int64_t cases[][3] = {{2, 1, 1}, {2, 2, 2}, {1, 0, 3}, {1, 1, 1}, {0, 0, 1}};  // D, S, hops
  for (IsaLevel level : {IsaLevel::kAvx512, IsaLevel::kAvx2, IsaLevel::kBaseline}) {
    if (aghmn::cpu::set_isa_limit(level) != level) continue;  // the machine lacks it
    const int before = g_failures;
    for (const auto& c : cases) {
      const Model m = random_model(c[0], c[1], c[2], rng);
      for (int conversations : {2, 21}) {  // 21: more than one tile of kStreamTileRows
        run_case<float>(m, rng, 2e-5, "float", conversations);
        run_case<double>(m, rng, 1e-11, "double", conversations);
      }
    }
    std::printf("instruction set level %d: %s\n", static_cast<int>(level),
                g_failures == before ? "ok" : "FAILED");
  }
  std::printf("%d checks, %d failed\n", g_checks, g_failures);
  return g_failures == 0 && g_checks > 0 ? 0 : 1;
}
