// archgen's onnxruntime custom-op library: the Mamba-1 selective scan as one node.
//
// Op archgen.SelectiveScan (domain "archgen", since version 1), float32, CPU execution
// provider: inputs x, dt [B, L, D], A [D, N], B, C [B, L, N], D [D]; output
// y = C_t . h_t + D x_t with h_t = exp(dt_t A) h_{t-1} + dt_t x_t B_t, the same contract as
// the torch op archgen::selective_scan and the same math (selective_scan_core.h).
// Attribute delta_softplus (int, default 0) and optional input 7, dt_bias [D]: with
// delta_softplus = 1, dt is the raw dt projection and the scan uses softplus(dt + dt_bias) in
// float32 (mamba-ssm's delta_softplus), which saves onnxruntime's slow Softplus and the Add;
// graphs written before the attribute existed mean 0 and run unchanged.
//
// Written against the C API only (third_party/onnxruntime/onnxruntime_c_api.h, API 21): the C
// API is append-only, so the library asks the runtime for the oldest version that has every
// function used here (17: KernelContext_ParallelFor) and runs on any newer onnxruntime.
// The blocks run on the session's intra-op thread pool (KernelContext_ParallelFor), so the
// scan uses exactly the threads the session was given.

#include "onnxruntime_c_api.h"
#include "selective_scan_core.h"

#include <climits>
#include <cstdint>
#include <string>
#include <vector>

namespace {

constexpr uint32_t kApiVersion = 17;
constexpr const char* kDomain = "archgen";
constexpr const char* kOpName = "SelectiveScan";
constexpr size_t kInputs = 7;     // x, dt, A, B, C, D, dt_bias (optional)
constexpr size_t kRequired = 6;

const OrtApi* g_api = nullptr;

struct ScanArgs {
  const float *x, *dt, *A, *Bm, *Cm, *Dk, *dt_bias;
  float* y;
  int64_t L, D, N, n_blk;
  bool delta_softplus;
};

struct Kernel {
  bool delta_softplus;
};

void run_block(void* data, size_t i) {
  const auto& a = *static_cast<const ScanArgs*>(data);
  const int64_t b = static_cast<int64_t>(i) / a.n_blk;
  const int64_t c0 = (static_cast<int64_t>(i) % a.n_blk) * archgen_scan::W;
  const int64_t bld = b * a.L * a.D, bln = b * a.L * a.N;
  archgen_scan::forward_block(a.x + bld, a.dt + bld, a.A, a.Bm + bln, a.Cm + bln, a.Dk,
                              a.y + bld, a.L, a.D, a.N, c0, a.dt_bias, a.delta_softplus);
}

OrtStatus* fail(const std::string& message) {
  return g_api->CreateStatus(ORT_INVALID_ARGUMENT, ("archgen.SelectiveScan: " + message).c_str());
}

#define RETURN_IF_ERROR(expr)             \
  do {                                    \
    OrtStatus* status_ = (expr);          \
    if (status_ != nullptr) return status_; \
  } while (0)

// The shape of input i (its element type must be float).
OrtStatus* input_shape(OrtKernelContext* ctx, size_t i, const OrtValue** value,
                       std::vector<int64_t>* shape) {
  RETURN_IF_ERROR(g_api->KernelContext_GetInput(ctx, i, value));
  OrtTensorTypeAndShapeInfo* info = nullptr;
  RETURN_IF_ERROR(g_api->GetTensorTypeAndShape(*value, &info));
  ONNXTensorElementDataType type = ONNX_TENSOR_ELEMENT_DATA_TYPE_UNDEFINED;
  size_t rank = 0;
  OrtStatus* status = g_api->GetTensorElementType(info, &type);
  if (status == nullptr) status = g_api->GetDimensionsCount(info, &rank);
  if (status == nullptr) {
    shape->assign(rank, 0);
    status = g_api->GetDimensions(info, shape->data(), rank);
  }
  g_api->ReleaseTensorTypeAndShapeInfo(info);
  if (status == nullptr && type != ONNX_TENSOR_ELEMENT_DATA_TYPE_FLOAT)
    return fail("input " + std::to_string(i) + " must be float32");
  return status;
}

OrtStatus* ORT_API_CALL compute(void* kernel, OrtKernelContext* ctx) {
  const OrtValue* in[kInputs] = {};
  std::vector<int64_t> s[kInputs];
  size_t given = 0;
  RETURN_IF_ERROR(g_api->KernelContext_GetInputCount(ctx, &given));
  for (size_t i = 0; i < kRequired; ++i) RETURN_IF_ERROR(input_shape(ctx, i, &in[i], &s[i]));
  bool has_bias = false;
  if (given > kRequired) {  // an optional input left empty ("") arrives as null
    const OrtValue* v = nullptr;
    RETURN_IF_ERROR(g_api->KernelContext_GetInput(ctx, kRequired, &v));
    if (v != nullptr) {
      RETURN_IF_ERROR(input_shape(ctx, kRequired, &in[kRequired], &s[kRequired]));
      has_bias = true;
    }
  }
  const auto &xs = s[0], &as = s[2], &bs = s[3];
  if (xs.size() != 3 || s[1] != xs) return fail("x and dt must be [B, L, D] of one shape");
  if (as.size() != 2 || as[0] != xs[2]) return fail("A must be [D, N]");
  if (bs.size() != 3 || bs[0] != xs[0] || bs[1] != xs[1] || bs[2] != as[1] || s[4] != bs)
    return fail("B and C must be [B, L, N]");
  if (s[5].size() != 1 || s[5][0] != xs[2]) return fail("D must be [D]");
  if (has_bias && (s[6].size() != 1 || s[6][0] != xs[2])) return fail("dt_bias must be [D]");

  ScanArgs args{};
  const float** ptrs[kInputs] = {&args.x,  &args.dt, &args.A,      &args.Bm,
                                 &args.Cm, &args.Dk, &args.dt_bias};
  for (size_t i = 0; i < (has_bias ? kInputs : kRequired); ++i) {
    void* p = nullptr;
    RETURN_IF_ERROR(g_api->GetTensorMutableData(const_cast<OrtValue*>(in[i]), &p));
    *ptrs[i] = static_cast<const float*>(p);
  }
  OrtValue* out = nullptr;
  RETURN_IF_ERROR(g_api->KernelContext_GetOutput(ctx, 0, xs.data(), xs.size(), &out));
  void* y = nullptr;
  RETURN_IF_ERROR(g_api->GetTensorMutableData(out, &y));
  args.y = static_cast<float*>(y);
  args.L = xs[1];
  args.D = xs[2];
  args.N = as[1];
  args.n_blk = (args.D + archgen_scan::W - 1) / archgen_scan::W;
  args.delta_softplus = static_cast<const Kernel*>(kernel)->delta_softplus;
  const size_t total = static_cast<size_t>(xs[0] * args.n_blk);
  if (total == 0 || args.L == 0) return nullptr;  // empty batch or sequence: nothing to do
  // One task per (batch, channel block); 0 = let the thread pool batch them.
  return g_api->KernelContext_ParallelFor(ctx, run_block, total, 0, &args);
}

OrtStatus* ORT_API_CALL create_kernel(const OrtCustomOp*, const OrtApi*, const OrtKernelInfo* info,
                                      void** kernel) {
  int64_t flag = 0;
  OrtStatus* status = g_api->KernelInfoGetAttribute_int64(info, "delta_softplus", &flag);
  if (status != nullptr) {  // absent: a graph from before the attribute, plain dt
    g_api->ReleaseStatus(status);
    flag = 0;
  }
  if (flag != 0 && flag != 1) return fail("attribute delta_softplus must be 0 or 1");
  *kernel = new Kernel{flag == 1};
  return nullptr;
}

void ORT_API_CALL destroy_kernel(void* kernel) { delete static_cast<Kernel*>(kernel); }

OrtCustomOp make_op() {
  OrtCustomOp op{};  // every callback not set here stays null: onnxruntime's defaults
  op.version = kApiVersion;
  op.GetName = [](const OrtCustomOp*) { return kOpName; };
  op.GetExecutionProviderType = [](const OrtCustomOp*) -> const char* { return nullptr; };  // CPU
  op.GetInputType = [](const OrtCustomOp*, size_t) { return ONNX_TENSOR_ELEMENT_DATA_TYPE_FLOAT; };
  op.GetInputTypeCount = [](const OrtCustomOp*) { return kInputs; };
  op.GetOutputType = [](const OrtCustomOp*, size_t) {
    return ONNX_TENSOR_ELEMENT_DATA_TYPE_FLOAT;
  };
  op.GetOutputTypeCount = [](const OrtCustomOp*) -> size_t { return 1; };
  op.GetInputCharacteristic = [](const OrtCustomOp*, size_t i) {
    return i < kRequired ? INPUT_OUTPUT_REQUIRED : INPUT_OUTPUT_OPTIONAL;
  };
  op.GetOutputCharacteristic = [](const OrtCustomOp*, size_t) {
    return INPUT_OUTPUT_REQUIRED;
  };
  op.GetInputMemoryType = [](const OrtCustomOp*, size_t) { return OrtMemTypeDefault; };
  op.GetVariadicInputMinArity = [](const OrtCustomOp*) { return 1; };
  op.GetVariadicInputHomogeneity = [](const OrtCustomOp*) { return 1; };
  op.GetVariadicOutputMinArity = [](const OrtCustomOp*) { return 1; };
  op.GetVariadicOutputHomogeneity = [](const OrtCustomOp*) { return 1; };
  op.CreateKernelV2 = create_kernel;
  op.KernelComputeV2 = compute;
  op.KernelDestroy = destroy_kernel;
  op.GetStartVersion = [](const OrtCustomOp*) { return 1; };
  op.GetEndVersion = [](const OrtCustomOp*) { return INT_MAX; };  // no end
  return op;
}

OrtCustomOp g_op = make_op();

}  // namespace

// The library's entry point: SessionOptions.register_custom_ops_library calls it.
extern "C" __attribute__((visibility("default"))) OrtStatus* ORT_API_CALL
RegisterCustomOps(OrtSessionOptions* options, const OrtApiBase* api_base) {
  g_api = api_base->GetApi(kApiVersion);
  if (g_api == nullptr) {  // onnxruntime older than 1.17: report through the first API version
    const OrtApi* v1 = api_base->GetApi(1);
    return v1->CreateStatus(ORT_FAIL, "archgen.SelectiveScan needs onnxruntime >= 1.17");
  }
  OrtCustomOpDomain* domain = nullptr;
  RETURN_IF_ERROR(g_api->CreateCustomOpDomain(kDomain, &domain));
  RETURN_IF_ERROR(g_api->CustomOpDomain_Add(domain, &g_op));
  // The domain must outlive every session using it; one per registration, kept for the
  // process (a few bytes), as onnxruntime's own example libraries do.
  return g_api->AddCustomOpDomain(options, domain);
}
