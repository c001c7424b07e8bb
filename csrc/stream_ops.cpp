// aghmn_fast::stream_step: the whole per-utterance step of the streaming recognizer after the
// reader, for a batch of conversations, in one op call: the window GRU over the stored fusion
// projections (incremental memory update), residual, attention hops with the AGRU / BiAGRU /
// soft-attention summary, and the classifier. Composite: it calls the registered recurrence ops
// and ATen, so it runs wherever those have kernels; inference only (no autograd).
#include <ATen/ATen.h>
#include <ATen/core/dispatch/Dispatcher.h>
#include <torch/library.h>

#include <string>
#include <tuple>
#include <vector>

namespace {

using at::Tensor;

std::tuple<Tensor, Tensor> window_gru_forward(const Tensor& proj, const Tensor& pad_proj,
                                              const Tensor& weight_hh, const Tensor& bias_hh,
                                              const Tensor& windows) {
  static auto op = c10::Dispatcher::singleton()
                       .findSchemaOrThrow("aghmn_fast::window_gru_forward", "")
                       .typed<std::tuple<Tensor, Tensor>(const Tensor&, const Tensor&, const Tensor&,
                                                         const Tensor&, const Tensor&)>();
  return op.call(proj, pad_proj, weight_hh, bias_hh, windows);
}

std::tuple<Tensor, Tensor> agru_forward(const Tensor& xproj, const Tensor& attn,
                                        const Tensor& weight_hh, const Tensor& bias_hh,
                                        const Tensor& h0, bool reverse) {
  static auto op = c10::Dispatcher::singleton()
                       .findSchemaOrThrow("aghmn_fast::agru_forward", "")
                       .typed<std::tuple<Tensor, Tensor>(const Tensor&, const Tensor&, const Tensor&,
                                                         const Tensor&, const Tensor&, bool)>();
  return op.call(xproj, attn, weight_hh, bias_hh, h0, reverse);
}

Tensor stream_step(const Tensor& q, const Tensor& windows, const Tensor& u_store,
                   const Tensor& proj_store, const Tensor& pad_proj, const Tensor& fusion_weight_hh,
                   const Tensor& fusion_bias_hh, at::TensorList summary_weights, int64_t hops,
                   const Tensor& classifier_weight, const Tensor& classifier_bias) {
  TORCH_CHECK(q.dim() == 2, "stream_step: q must be [B, H], got ", q.sizes());
  const int64_t B = q.size(0), H = q.size(1);
  TORCH_CHECK(windows.dim() == 2 && windows.size(0) == B, "stream_step: windows must be [B, K] with B = ",
              B, ", got ", windows.sizes());
  TORCH_CHECK(u_store.dim() == 2 && u_store.size(1) == H, "stream_step: u_store must be [S, ", H,
              "], got ", u_store.sizes());
  TORCH_CHECK(proj_store.dim() == 3 && proj_store.size(1) == u_store.size(0),
              "stream_step: proj_store must be [D, S, 3H] with S = ", u_store.size(0), ", got ",
              proj_store.sizes());
  TORCH_CHECK(summary_weights.size() == 0 || summary_weights.size() == 4 || summary_weights.size() == 8,
              "stream_step: summary_weights must hold 0 (soft attention), 4 (AGRU) or 8 (BiAGRU) "
              "tensors, got ", summary_weights.size());
  TORCH_CHECK(hops >= 1, "stream_step: hops must be >= 1, got ", hops);
  at::AutoDispatchBelowADInplaceOrView no_autograd;
  const int64_t K = windows.size(1);

  const Tensor keep = windows.ge(0);
  Tensor memory = u_store.index_select(0, windows.clamp_min(0).reshape({-1})).view({B, K, H});
  memory = memory.mul(keep.unsqueeze(-1).to(memory.scalar_type()));
  if (proj_store.size(0) > 0) {
    const Tensor states = std::get<0>(
        window_gru_forward(proj_store, pad_proj, fusion_weight_hh, fusion_bias_hh, windows));
    memory = memory.add(states.sum(0));
  }
  const Tensor h0 = at::zeros({B, H}, q.options());
  Tensor e = q;
  for (int64_t hop = 0; hop < hops; ++hop) {
    const Tensor scores = at::bmm(memory, e.unsqueeze(-1)).squeeze(-1).masked_fill(keep.logical_not(), -1e10);
    const Tensor attn = at::softmax(scores, -1).contiguous();
    Tensor o;
    if (summary_weights.empty()) {
      o = at::bmm(attn.unsqueeze(1), memory).squeeze(1);
    } else {
      for (size_t d = 0; d * 4 < summary_weights.size(); ++d) {
        const bool reverse = d == 1;
        const Tensor xproj = at::linear(memory, summary_weights[4 * d], summary_weights[4 * d + 2]).contiguous();
        const Tensor out = std::get<0>(agru_forward(xproj, attn, summary_weights[4 * d + 1],
                                                    summary_weights[4 * d + 3], h0, reverse));
        const Tensor h_n = out.select(1, reverse ? 0 : K - 1);
        o = o.defined() ? o.add(h_n) : h_n;
      }
    }
    e = e.add(o);
  }
  return at::softmax(at::linear(e, classifier_weight, classifier_bias), -1);
}

}  // namespace

TORCH_LIBRARY_FRAGMENT(aghmn_fast, m) {
  m.def(
      "stream_step(Tensor q, Tensor windows, Tensor u_store, Tensor proj_store, Tensor pad_proj, "
      "Tensor fusion_weight_hh, Tensor fusion_bias_hh, Tensor[] summary_weights, int hops, "
      "Tensor classifier_weight, Tensor classifier_bias) -> Tensor");
}

TORCH_LIBRARY_IMPL(aghmn_fast, CompositeExplicitAutograd, m) {
  m.impl("stream_step", &stream_step);
}
