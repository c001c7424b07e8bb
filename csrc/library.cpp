// Every schema of the aghmn_fast op library, in one place (contracts: docs/OPS.md). The
// implementations register per op folder: csrc/<op>/<op>_ops.cpp (CPU), csrc/<op>/<op>_cuda.cu
// (CUDA), csrc/stream/stream_ops.cpp (streaming). Adding an op adds its schema line here.
#include <torch/library.h>

TORCH_LIBRARY(aghmn_fast, m) {
  // ---- AGRU (csrc/agru/)
  m.def(
      "agru_forward(Tensor xproj, Tensor attn, Tensor weight_hh, Tensor bias_hh, Tensor h0, "
      "bool reverse) -> (Tensor output, Tensor gates)");
  m.def(
      "agru_backward(Tensor grad_output, Tensor attn, Tensor weight_hh, Tensor h0, "
      "Tensor output, Tensor gates, bool reverse) -> (Tensor grad_xproj, Tensor grad_attn, "
      "Tensor grad_ghh, Tensor grad_h0)");
  // ---- window GRU (csrc/window_gru/)
  m.def(
      "window_gru_forward(Tensor proj, Tensor pad_proj, Tensor weight_hh, Tensor bias_hh, "
      "Tensor windows) -> (Tensor output, Tensor gates)");
  m.def(
      "window_gru_backward(Tensor grad_output, Tensor weight_hh, Tensor windows, Tensor output, "
      "Tensor gates, int num_utterances) -> (Tensor grad_proj, Tensor grad_pad_proj, "
      "Tensor grad_ghh)");
  // ---- streaming, inference only (csrc/stream/)
  m.def(
      "stream_step(Tensor q, Tensor windows, Tensor u_store, Tensor proj_store, Tensor pad_proj, "
      "Tensor fusion_weight_hh, Tensor fusion_bias_hh, Tensor[] summary_weights, int hops, "
      "Tensor classifier_weight, Tensor classifier_bias) -> Tensor");
  // The model's sizes are named keyword arguments (aghmn::cpu::StreamDims, csrc/stream/stream_cpu.h).
  m.def(
      "stream_pack(Tensor[] weights, *, int H, int E, int C, int K, int D, int S, int hops, "
      "int max_len, bool bigru_reader, str precision=\"fp32\") -> Tensor");
  m.def(
      "stream_push(Tensor packed, Tensor embedding, int[] tokens, int[] lengths, Tensor? u, "
      "int[] blocks, int[] counts, Tensor(a!) u_store, Tensor(b!) proj_store, *, int H, int E, "
      "int C, int K, int D, int S, int hops, int max_len, bool bigru_reader) -> Tensor");
  m.def(
      "stream_project(Tensor packed, Tensor u, *, int H, int E, int C, int K, int D, int S, "
      "int hops, int max_len, bool bigru_reader) -> Tensor");
}
