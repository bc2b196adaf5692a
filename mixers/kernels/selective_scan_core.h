// Fused CPU selective scan (Mamba-1 S6): the math, shared by the torch extension
// (selective_scan.cpp) and the onnxruntime custom op (ort_selective_scan.cpp). No torch or
// onnxruntime types here: raw pointers, one (batch, block of W channels) per call, so each
// caller parallelises over blocks with its own thread pool.
//
// Layout: x, dt, y: [B, L, D] (time-major, channels contiguous); Bm, Cm: [B, L, N]; A: [D, N].
// Work is split over (batch, block of W channels). Each block walks the sequence once with its
// state h[N][W] in L1 (1 KiB per state row); the inner loops run over the W channels of the
// block, so every load/store of x, dt, y is one contiguous vector and no horizontal sum is needed
// in the forward (vectorising over the state dim instead would need a reduction over N at every
// step). exp() of the decays is an inlined polynomial (decay_exp): a libmvec call clobbers all
// vector registers at every call, and the inlined version measured ~15% faster here.
// (A compile-time N = 16 variant meant to keep the whole state in registers was tried: it was
// not faster.)
//
// Backward: the reverse scan g_t = gy_t C_t + a_{t+1} g_{t+1} needs h_{t-1}; the forward states
// are recomputed per segment of K steps from checkpoints taken every K steps, so the extra memory
// is O(L/K * N * W) per block instead of O(L * N * D).

#pragma once

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <vector>

namespace archgen_scan {

constexpr int64_t W = 16;  // channels per block: one 512-bit vector of float
constexpr int64_t K = 64;  // backward checkpoint interval

// exp(x) for the log-decays x = dt * A <= 0, float: 2^n * exp(r) with n = round(x / ln 2),
// |r| <= ln(2)/2 and a degree-7 Taylor polynomial (truncation error < 6e-9 relative, below
// float32 resolution). x is clamped to [-87, 88], so decays under e^-87 become e^-87 (~1e-38):
// the difference is far below what a float32 state can hold.
inline float decay_exp(float x) {
  x = std::min(std::max(x, -87.0f), 88.0f);
  const float n = std::floor(x * 1.44269504088896341f + 0.5f);
  const float r = (x - n * 0.693145751953125f) - n * 1.4286068203094173e-06f;  // ln 2 = hi + lo
  float p = 1.0f / 5040;
  p = p * r + 1.0f / 720;
  p = p * r + 1.0f / 120;
  p = p * r + 1.0f / 24;
  p = p * r + 1.0f / 6;
  p = p * r + 0.5f;
  p = p * r + 1.0f;
  p = p * r + 1.0f;
  const int32_t bits = (static_cast<int32_t>(n) + 127) << 23;
  float scale;
  std::memcpy(&scale, &bits, sizeof scale);
  return p * scale;
}

inline double decay_exp(double x) { return std::exp(x); }  // float64 is for tests, not speed

// torch's F.softplus (beta 1, threshold 20): log(1 + e^v), and v itself above 20, where the two
// agree to float64 resolution. Used for Δ = softplus(dt + bias) when the caller folds it into the
// scan (mamba-ssm's delta_softplus): one log1p/exp per (t, channel), against N decays per step.
template <typename T>
inline T softplus(T v) {
  return v > T(20) ? v : std::log1p(std::exp(v));
}

template <typename T>
struct Block {
  // Per-step inputs of one block, zero-padded past the last channel so padded lanes are inert
  // (a padded lane's dt is 0 even with softplus: it is set after the transform).
  T dt[W], x[W], dtx[W];
  void load(const T* dtp, const T* xp, int64_t w) {
    if (w == W) {  // full block: plain vector loads
#pragma omp simd
      for (int64_t c = 0; c < W; ++c) {
        dt[c] = dtp[c];
        x[c] = xp[c];
        dtx[c] = dt[c] * x[c];
      }
    } else {
      for (int64_t c = 0; c < W; ++c) {
        dt[c] = c < w ? dtp[c] : T(0);
        x[c] = c < w ? xp[c] : T(0);
        dtx[c] = dt[c] * x[c];
      }
    }
  }
  // The same with dt = softplus(dtp + bias) (bias: the block's W values, zero-padded; may be
  // null for no bias).
  void load_softplus(const T* dtp, const T* bias, const T* xp, int64_t w) {
    for (int64_t c = 0; c < W; ++c) {
      const T raw = c < w ? dtp[c] + (bias ? bias[c] : T(0)) : T(0);
      dt[c] = c < w ? softplus(raw) : T(0);
      x[c] = c < w ? xp[c] : T(0);
      dtx[c] = dt[c] * x[c];
    }
  }
};

template <typename T>
inline void store(const T* v, T* dst, int64_t w) {
  if (w == W) {
#pragma omp simd
    for (int64_t c = 0; c < W; ++c) dst[c] = v[c];
  } else {
    for (int64_t c = 0; c < w; ++c) dst[c] = v[c];
  }
}

template <typename T>
void load_at(const T* A, int64_t D, int64_t N, int64_t c0, int64_t w, T* at) {
  // at[n][c] = A[c0 + c][n]: the decay rates of the block, state-major.
  for (int64_t n = 0; n < N; ++n)
    for (int64_t c = 0; c < W; ++c) at[n * W + c] = c < w ? A[(c0 + c) * N + n] : T(0);
}

// One step of the recurrence for all states of a block; optionally records a_t.
template <typename T>
inline void advance(const Block<T>& s, const T* at, const T* bt, int64_t N, T* h, T* decay) {
  for (int64_t n = 0; n < N; ++n) {
    const T bn = bt[n];
    T* hn = h + n * W;
    const T* an = at + n * W;
#pragma omp simd
    for (int64_t c = 0; c < W; ++c) {
      const T a = decay_exp(s.dt[c] * an[c]);
      hn[c] = a * hn[c] + s.dtx[c] * bn;
      if (decay) decay[n * W + c] = a;
    }
  }
}

// delta_softplus: dt holds the raw projection and the scan uses softplus(dt + dt_bias) (dt_bias
// [D] or null), computed here in T; otherwise dt is Δ itself and dt_bias is ignored.
template <typename T>
void forward_block(const T* x, const T* dt, const T* A, const T* Bm, const T* Cm, const T* Dk,
                   T* y, int64_t L, int64_t D, int64_t N, int64_t c0,
                   const T* dt_bias = nullptr, bool delta_softplus = false) {
  const int64_t w = std::min(W, D - c0);
  T bias[W];
  for (int64_t c = 0; c < W; ++c) bias[c] = dt_bias && c < w ? dt_bias[c0 + c] : T(0);
  std::vector<T> at(N * W), h(N * W, T(0));
  T dk[W];
  for (int64_t c = 0; c < W; ++c) dk[c] = c < w ? Dk[c0 + c] : T(0);
  load_at(A, D, N, c0, w, at.data());
  T* hp = h.data();
  Block<T> s;
  for (int64_t t = 0; t < L; ++t) {
    if (delta_softplus)
      s.load_softplus(dt + t * D + c0, bias, x + t * D + c0, w);
    else
      s.load(dt + t * D + c0, x + t * D + c0, w);
    const T* bt = Bm + t * N;
    const T* ct = Cm + t * N;
    alignas(64) T yv[W];
#pragma omp simd
    for (int64_t c = 0; c < W; ++c) yv[c] = dk[c] * s.x[c];
    for (int64_t n = 0; n < N; ++n) {
      const T bn = bt[n], cn = ct[n];
      T* hn = hp + n * W;
      const T* an = at.data() + n * W;
#pragma omp simd
      for (int64_t c = 0; c < W; ++c) {
        const T hv = decay_exp(s.dt[c] * an[c]) * hn[c] + s.dtx[c] * bn;
        hn[c] = hv;
        yv[c] += hv * cn;
      }
    }
    store(yv, y + t * D + c0, w);
  }
}

template <typename T>
void backward_block(const T* x, const T* dt, const T* A, const T* Bm, const T* Cm, const T* Dk,
                    const T* gy, T* gx, T* gdt, T* gA_t, T* gB, T* gC, T* gD, int64_t L,
                    int64_t D, int64_t N, int64_t c0) {
  // gA_t: [N, D] slice of this batch element; gB, gC: [L, N] partials of this block.
  const int64_t w = std::min(W, D - c0);
  const int64_t n_seg = (L + K - 1) / K;
  std::vector<T> at(N * W), h(N * W, T(0)), ckpt(n_seg * N * W);
  std::vector<T> hs(K * N * W), decays(K * N * W), gh(N * W, T(0)), ga_acc(N * W, T(0));
  T dk[W], gd_acc[W];
  for (int64_t c = 0; c < W; ++c) {
    dk[c] = c < w ? Dk[c0 + c] : T(0);
    gd_acc[c] = T(0);
  }
  load_at(A, D, N, c0, w, at.data());
  Block<T> s;
  // Pass 1: the state entering each segment.
  for (int64_t t = 0; t < L; ++t) {
    if (t % K == 0) std::copy(h.begin(), h.end(), ckpt.begin() + (t / K) * N * W);
    s.load(dt + t * D + c0, x + t * D + c0, w);
    advance(s, at.data(), Bm + t * N, N, h.data(), static_cast<T*>(nullptr));
  }
  // Pass 2: segments in reverse; recompute h_t and a_t inside, then walk back.
  for (int64_t seg = n_seg - 1; seg >= 0; --seg) {
    const int64_t s0 = seg * K, s1 = std::min(L, s0 + K);
    std::copy(ckpt.begin() + seg * N * W, ckpt.begin() + (seg + 1) * N * W, h.begin());
    for (int64_t t = s0; t < s1; ++t) {
      s.load(dt + t * D + c0, x + t * D + c0, w);
      advance(s, at.data(), Bm + t * N, N, h.data(), decays.data() + (t - s0) * N * W);
      std::copy(h.begin(), h.end(), hs.begin() + (t - s0) * N * W);
    }
    for (int64_t t = s1 - 1; t >= s0; --t) {
      s.load(dt + t * D + c0, x + t * D + c0, w);
      T gyv[W], gxv[W], gdtv[W];
      const T* gyt = gy + t * D + c0;
      for (int64_t c = 0; c < W; ++c) {
        gyv[c] = c < w ? gyt[c] : T(0);
        gxv[c] = gyv[c] * dk[c];
        gdtv[c] = T(0);
        gd_acc[c] += gyv[c] * s.x[c];
      }
      const T* h_t = hs.data() + (t - s0) * N * W;
      const T* h_prev = t > s0 ? h_t - N * W : ckpt.data() + seg * N * W;
      const T* a_t = decays.data() + (t - s0) * N * W;
      const T* bt = Bm + t * N;
      const T* ct = Cm + t * N;
      for (int64_t n = 0; n < N; ++n) {
        const T bn = bt[n], cn = ct[n];
        const T* an = at.data() + n * W;
        T* ghn = gh.data() + n * W;
        T* gan = ga_acc.data() + n * W;
        T sb = T(0), sc = T(0);
#pragma omp simd reduction(+ : sb, sc)
        for (int64_t c = 0; c < W; ++c) {
          const T g = ghn[c] + gyv[c] * cn;  // dLoss/dh_t
          const T a = a_t[n * W + c];
          const T glog = g * h_prev[n * W + c] * a;  // dLoss/d(dt_t * A)
          gdtv[c] += glog * an[c] + g * s.x[c] * bn;
          gan[c] += glog * s.dt[c];
          gxv[c] += g * s.dt[c] * bn;
          ghn[c] = g * a;  // carried to step t-1
          sb += g * s.dtx[c];
          sc += gyv[c] * h_t[n * W + c];
        }
        gB[t * N + n] = sb;
        gC[t * N + n] = sc;
      }
      store(gxv, gx + t * D + c0, w);
      store(gdtv, gdt + t * D + c0, w);
    }
  }
  for (int64_t n = 0; n < N; ++n)
    for (int64_t c = 0; c < w; ++c) gA_t[n * D + c0 + c] = ga_acc[n * W + c];
  for (int64_t c = 0; c < w; ++c) gD[c0 + c] = gd_acc[c];
}

}  // namespace archgen_scan
