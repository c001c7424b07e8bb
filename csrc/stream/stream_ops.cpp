// aghmn_fast::stream_step: the whole per-utterance step of the streaming recognizer after the
// reader, for a batch of conversations, in one op call: the window GRU over the stored fusion
// projections (incremental memory update), residual, attention hops with the AGRU / BiAGRU /
// soft-attention summary, and the classifier. Composite: it calls the registered recurrence ops
// and ATen, so it runs wherever those have kernels; inference only (no autograd).
//
// aghmn_fast::stream_pack / stream_push: the CPU path that also runs the reader and writes the
// ring store, one call per push with weights packed once (kernel: stream/stream_cpu.h).
#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <ATen/core/dispatch/Dispatcher.h>
#include <torch/library.h>

#include <algorithm>
#include <string>
#include <tuple>
#include <vector>

#include "stream/stream_cpu.h"
#include "stream/stream_weights.h"

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

// ---- stream_pack / stream_push ------------------------------------------------------------
// The model's sizes, named as in the schema (see aghmn::cpu::StreamDims), checked.
aghmn::cpu::StreamDims stream_dims(int64_t H, int64_t E, int64_t C, int64_t K, int64_t D, int64_t S,
                                   int64_t hops, int64_t max_len, bool bigru_reader) {
  aghmn::cpu::StreamDims d{H, E, C, K, D, S, hops, max_len, bigru_reader};
  TORCH_CHECK(d.H >= 1 && d.E >= 1 && d.C >= 1 && d.K >= 1 && d.hops >= 1 && d.max_len >= 1,
              "stream: H, E, C, K, hops and max_len must be positive, got H = ", H, ", E = ", E,
              ", C = ", C, ", K = ", K, ", hops = ", hops, ", max_len = ", max_len);
  TORCH_CHECK(d.D >= 0 && d.D <= 2 && d.S >= 0 && d.S <= 2, "stream: D (fusion directions) and S "
              "(summary cells) must be in [0, 2], got D = ", d.D, ", S = ", d.S);
  TORCH_CHECK(d.D > 0 || d.S == 0, "stream: a context-free model (D = 0) has no summary cells");
  return d;
}

// weights: the tensors of aghmn::cpu::stream_weight_specs (stream/stream_weights.h) in its order
// (the list the native runtime reads by name from a model file). precision "bf16" packs the
// weight matrices as bf16 (float32 weights only) for a push over a bfloat16 ring store.
Tensor stream_pack(at::TensorList weights, int64_t H_, int64_t E, int64_t C, int64_t K, int64_t D,
                   int64_t S, int64_t hops, int64_t max_len, bool bigru_reader,
                   c10::string_view precision) {
  const aghmn::cpu::StreamDims d = stream_dims(H_, E, C, K, D, S, hops, max_len, bigru_reader);
  TORCH_CHECK(precision == "fp32" || precision == "bf16", "stream_pack: precision must be "
              "'fp32' or 'bf16', got '", std::string(precision), "'");
  const bool bf16 = precision == "bf16";
  TORCH_CHECK(!weights.empty(), "stream_pack: weights is empty");
  const Tensor& like = weights[0];
  TORCH_CHECK(like.scalar_type() == at::kFloat || like.scalar_type() == at::kDouble,
              "stream_pack: weights must be float32 or float64, got ", like.scalar_type());
  const std::vector<aghmn::cpu::StreamWeightSpec> specs = aghmn::cpu::stream_weight_specs(d);
  TORCH_CHECK(weights.size() == specs.size(), "stream_pack: expected ", specs.size(), " weight "
              "tensors for these sizes (bigru_reader = ", d.bigru_reader, ", D = ", d.D, ", S = ",
              d.S, "), got ", weights.size());
  for (size_t i = 0; i < specs.size(); ++i) {
    const Tensor& t = weights[i];
    TORCH_CHECK(t.scalar_type() == like.scalar_type() && t.device().is_cpu() && t.is_contiguous(),
                "stream_pack: weights[", i, "] must be a contiguous CPU ", like.scalar_type(),
                " tensor");
    const std::vector<int64_t> shape = specs[i].cols ? std::vector<int64_t>{specs[i].rows, specs[i].cols}
                                                     : std::vector<int64_t>{specs[i].rows};
    TORCH_CHECK(t.sizes() == at::IntArrayRef(shape), "stream_pack: weights[", i, "] (",
                specs[i].name, ") must have shape ", at::IntArrayRef(shape), ", got ", t.sizes());
  }
  Tensor packed;
  if (bf16) {
    TORCH_CHECK(like.scalar_type() == at::kFloat, "stream_pack: precision 'bf16' packs float32 "
                "weights, got ", like.scalar_type());
    std::vector<const float*> ptrs;
    for (const Tensor& t : weights) ptrs.push_back(t.data_ptr<float>());
    using aghmn::cpu::Bf16;
    packed = at::empty({aghmn::cpu::stream_layout<float, Bf16>(d).total}, like.options());
    aghmn::cpu::stream_pack<float, Bf16>(d, aghmn::cpu::stream_weights_in_order(d, ptrs),
                                         packed.data_ptr<float>());
    return packed;
  }
  AT_DISPATCH_FLOATING_TYPES(like.scalar_type(), "stream_pack", [&] {
    std::vector<const scalar_t*> ptrs;
    for (const Tensor& t : weights) ptrs.push_back(t.data_ptr<scalar_t>());
    packed = at::empty({aghmn::cpu::stream_layout<scalar_t>(d).total}, like.options());
    aghmn::cpu::stream_pack(d, aghmn::cpu::stream_weights_in_order(d, ptrs),
                            packed.data_ptr<scalar_t>());
  });
  return packed;
}

Tensor stream_push(const Tensor& packed, const Tensor& embedding, at::IntArrayRef tokens,
                   at::IntArrayRef lengths, const std::optional<Tensor>& u, at::IntArrayRef blocks,
                   at::IntArrayRef counts, Tensor& u_store, Tensor& proj_store, int64_t H_,
                   int64_t E, int64_t C, int64_t K_, int64_t D, int64_t S, int64_t hops,
                   int64_t max_len, bool bigru_reader) {
  const aghmn::cpu::StreamDims d = stream_dims(H_, E, C, K_, D, S, hops, max_len, bigru_reader);
  const int64_t B = static_cast<int64_t>(blocks.size()), H = d.H, K = d.K;
  TORCH_CHECK(packed.dim() == 1 && packed.is_contiguous() && packed.device().is_cpu() &&
              (packed.scalar_type() == at::kFloat || packed.scalar_type() == at::kDouble),
              "stream_push: packed must be a 1-D contiguous float32/float64 CPU tensor "
              "(from stream_pack)");
  // A bfloat16 ring store (and embedding table) means bf16 storage: packed by
  // stream_pack(precision="bf16"), float32, computing in float32.
  const bool bf16 = u_store.scalar_type() == at::kBFloat16;
  TORCH_CHECK(!bf16 || packed.scalar_type() == at::kFloat, "stream_push: a bfloat16 store needs "
              "float32 packed weights from stream_pack(precision='bf16')");
  const auto dtype = packed.scalar_type();
  const auto store_dtype = bf16 ? at::kBFloat16 : dtype;
  TORCH_CHECK(B >= 1, "stream_push: blocks is empty (no conversations)");
  TORCH_CHECK(static_cast<int64_t>(counts.size()) == B, "stream_push: counts has ", counts.size(),
              " entries, blocks has ", B);
  TORCH_CHECK(u_store.dim() == 2 && u_store.size(1) == H && u_store.size(0) % K == 0 &&
              u_store.scalar_type() == store_dtype && u_store.is_contiguous() && u_store.device().is_cpu(),
              "stream_push: u_store must be a contiguous CPU [capacity * K, H] tensor of the packed "
              "dtype, got ", u_store.sizes());
  const int64_t rows = u_store.size(0);
  // An empty proj_store: no projection cache (the push recomputes them from u_store).
  const bool cached = proj_store.numel() > 0;
  TORCH_CHECK(!cached || (proj_store.dim() == 3 && proj_store.size(0) == std::max<int64_t>(d.D, 1) &&
              proj_store.size(1) == rows && proj_store.size(2) == 3 * H &&
              proj_store.scalar_type() == store_dtype && proj_store.is_contiguous() &&
              proj_store.device().is_cpu()),
              "stream_push: proj_store must be a contiguous CPU [max(D, 1), ", rows, ", 3H] tensor "
              "of u_store's dtype, or empty (no projection cache), got ", proj_store.sizes(), " ",
              proj_store.scalar_type());
  std::vector<int64_t> sorted(blocks.begin(), blocks.end());
  std::sort(sorted.begin(), sorted.end());
  for (int64_t b = 0; b < B; ++b) {
    TORCH_CHECK(blocks[b] >= 0 && blocks[b] < rows / K, "stream_push: blocks[", b, "] = ",
                blocks[b], " is outside the store's ", rows / K, " blocks");
    TORCH_CHECK(counts[b] >= 0, "stream_push: counts[", b, "] = ", counts[b], " is negative");
    TORCH_CHECK(b == 0 || sorted[b] != sorted[b - 1], "stream_push: block ", sorted[b],
                " appears twice (one utterance per conversation per call)");
  }
  std::vector<int64_t> offsets(B + 1, 0);
  if (d.bigru_reader) {
    TORCH_CHECK(static_cast<int64_t>(lengths.size()) == B, "stream_push: lengths has ",
                lengths.size(), " entries, blocks has ", B);
    TORCH_CHECK(embedding.dim() == 2 && embedding.size(1) == d.E && embedding.scalar_type() == store_dtype &&
                embedding.is_contiguous() && embedding.device().is_cpu(),
                "stream_push: embedding must be a contiguous CPU [V, ", d.E, "] tensor of u_store's "
                "dtype, got ", embedding.sizes(), " ", embedding.scalar_type());
    for (int64_t b = 0; b < B; ++b) {
      TORCH_CHECK(lengths[b] >= 1 && lengths[b] <= d.max_len, "stream_push: lengths[", b, "] = ",
                  lengths[b], " is outside [1, ", d.max_len, "]");
      offsets[b + 1] = offsets[b] + lengths[b];
    }
    TORCH_CHECK(static_cast<int64_t>(tokens.size()) == offsets[B], "stream_push: tokens has ",
                tokens.size(), " ids, lengths sum to ", offsets[B]);
    const int64_t V = embedding.size(0);
    for (size_t t = 0; t < tokens.size(); ++t)
      TORCH_CHECK(tokens[t] >= 0 && tokens[t] < V, "stream_push: tokens[", t, "] = ", tokens[t],
                  " is outside the vocabulary [0, ", V, ")");
  } else {
    TORCH_CHECK(u.has_value() && u->dim() == 2 && u->size(0) == B && u->size(1) == H &&
                u->scalar_type() == dtype && u->is_contiguous() && u->device().is_cpu(),
                "stream_push: u must be a contiguous CPU [", B, ", ", H, "] tensor of the packed "
                "dtype (reader vectors, for a model without the BiGRU reader)");
  }
  Tensor probs = at::empty({B, d.C}, packed.options());
  Tensor u_out = at::empty({B, H}, packed.options());
  // The kernel over storage S (T, or Bf16 for a bfloat16 store: same bits, read as such).
  auto run = [&](auto compute, auto storage, int64_t need) {
    using T = decltype(compute);
    using S = decltype(storage);
    TORCH_CHECK(packed.numel() == need, "stream_push: packed has ", packed.numel(), " elements, "
                "these sizes need ", need, " (pack with the same sizes and precision)");
    aghmn::cpu::StreamBatch<T, S> in{};
    in.B = B;
    in.embedding = d.bigru_reader ? static_cast<const S*>(embedding.data_ptr()) : nullptr;
    in.tokens = tokens.data();
    in.tok_offsets = offsets.data();
    in.u_given = d.bigru_reader ? nullptr : u->data_ptr<T>();
    in.blocks = blocks.data();
    in.counts = counts.data();
    in.u_store = static_cast<S*>(u_store.data_ptr());
    in.proj_store = cached ? static_cast<S*>(proj_store.data_ptr()) : nullptr;
    in.store_rows = rows;
    in.u_out = u_out.data_ptr<T>();
    in.probs = probs.data_ptr<T>();
    const T* w = packed.data_ptr<T>();
    const int64_t R = aghmn::cpu::kStreamTileRows, tiles = (B + R - 1) / R;
    // Reads of every conversation's window finish before any slot is overwritten.
    at::parallel_for(0, tiles, 1, [&](int64_t begin, int64_t end) {
      for (int64_t t = begin; t < end; ++t)
        aghmn::cpu::stream_forward_tile(d, w, in, t * R, std::min(R, B - t * R));
    });
    at::parallel_for(0, tiles, 1, [&](int64_t begin, int64_t end) {
      for (int64_t t = begin; t < end; ++t)
        aghmn::cpu::stream_remember_tile(d, w, in, t * R, std::min(R, B - t * R));
    });
  };
  if (bf16) {
    using aghmn::cpu::Bf16;
    run(float{}, Bf16{}, aghmn::cpu::stream_layout<float, Bf16>(d).total);
  } else {
    AT_DISPATCH_FLOATING_TYPES(dtype, "stream_push", [&] {
      run(scalar_t{}, scalar_t{}, aghmn::cpu::stream_layout<scalar_t>(d).total);
    });
  }
  return probs;
}

// The fusion input projections [max(D, 1), N, 3H] of stored reader vectors u [N, H] (u_store's
// dtype: bf16 for a bf16 store), as stream_push caches them, bit for bit (zeros when D = 0).
Tensor stream_project(const Tensor& packed, const Tensor& u, int64_t H_, int64_t E, int64_t C,
                      int64_t K, int64_t D, int64_t S, int64_t hops, int64_t max_len,
                      bool bigru_reader) {
  const aghmn::cpu::StreamDims d = stream_dims(H_, E, C, K, D, S, hops, max_len, bigru_reader);
  TORCH_CHECK(packed.dim() == 1 && packed.is_contiguous() && packed.device().is_cpu() &&
              (packed.scalar_type() == at::kFloat || packed.scalar_type() == at::kDouble),
              "stream_project: packed must be a 1-D contiguous float32/float64 CPU tensor "
              "(from stream_pack)");
  const bool bf16 = u.scalar_type() == at::kBFloat16;
  TORCH_CHECK(u.dim() == 2 && u.size(1) == d.H && u.is_contiguous() && u.device().is_cpu() &&
              (bf16 ? packed.scalar_type() == at::kFloat : u.scalar_type() == packed.scalar_type()),
              "stream_project: u must be a contiguous CPU [N, ", d.H, "] tensor of the store's "
              "dtype, got ", u.sizes(), " ", u.scalar_type());
  const int64_t n = u.size(0);
  Tensor proj = at::zeros({std::max<int64_t>(d.D, 1), n, 3 * d.H}, u.options());
  auto run = [&](auto compute, auto storage, int64_t need) {
    using T = decltype(compute);
    using St = decltype(storage);
    TORCH_CHECK(packed.numel() == need, "stream_project: packed has ", packed.numel(),
                " elements, these sizes need ", need, " (pack with the same sizes and precision)");
    aghmn::cpu::stream_project_rows<T, St>(d, packed.data_ptr<T>(),
                                           static_cast<const St*>(u.data_ptr()), n,
                                           static_cast<St*>(proj.data_ptr()));
  };
  if (bf16) {
    using aghmn::cpu::Bf16;
    run(float{}, Bf16{}, aghmn::cpu::stream_layout<float, Bf16>(d).total);
  } else {
    AT_DISPATCH_FLOATING_TYPES(packed.scalar_type(), "stream_project", [&] {
      run(scalar_t{}, scalar_t{}, aghmn::cpu::stream_layout<scalar_t>(d).total);
    });
  }
  return proj;
}

}  // namespace

// Schemas: csrc/library.cpp.
TORCH_LIBRARY_IMPL(aghmn_fast, CPU, m) {
  m.impl("stream_pack", &stream_pack);
  m.impl("stream_push", &stream_push);
  m.impl("stream_project", &stream_project);
}

TORCH_LIBRARY_IMPL(aghmn_fast, CompositeExplicitAutograd, m) {
  m.impl("stream_step", &stream_step);
}
