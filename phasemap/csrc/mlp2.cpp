// SGD for M one-hidden-layer networks without biases, each model's steps fused into one loop.
//
// f(x) = act(x W1) W2 with W1 (d, h), W2 (h, k). One call runs `steps` steps of
//   L = sum_n w_n ||y_n - f(x_n)||^2,   W <- W (1 - 2 lr gamma) - lr dL/dW
// for every model: the update of phasemap.kernels.step with optimizer "sgd". A model's weights
// and data stay in the core's L1/L2 cache for all its steps; a step goes through the samples in
// blocks of 32 whose hidden and gradient rows (32 x h) stay in L1, computed by register-tiled
// loops (6 x 16 and 5 x 16 tiles of FMAs) and an activation that interleaves 4 vectors. Hidden
// units are padded to a multiple of 16 with zero weights, which stay zero: a unit with zero in-
// and out-weights has zero activation (tanh(0) = relu(0) = 0) and zero gradients.
//
// Written with GCC/Clang vector extensions (8 floats per vector: AVX2 on x86, pairs of NEON
// registers on ARM). tanh is the rational approximation of phasemap.kernels.fast_tanh (abs error
// < 1e-6), so this kernel and the torch step agree to float rounding.

#include <algorithm>
#include <cstdint>
#include <cstring>
#include <vector>
#if defined(__AVX__)
#include <immintrin.h>
#endif

namespace {

typedef float v8 __attribute__((vector_size(32)));
constexpr int L = 8;  // floats per vector

inline v8 load(const float* p) { v8 v; std::memcpy(&v, p, sizeof v); return v; }
inline void store(float* p, v8 v) { std::memcpy(p, &v, sizeof v); }
inline v8 splat(float s) { return v8{s, s, s, s, s, s, s, s}; }
inline float hsum(v8 v) {
  float s = 0.f;
  for (int i = 0; i < L; ++i) s += v[i];
  return s;
}

// Coefficients of phasemap.kernels._TANH_P / _TANH_Q (lowest degree first).
constexpr float P[7] = {0.9999999847f, -0.15886870591f, 0.031403685892f, 0.0079853570923f,
                        0.0002299734577f, 1.4037552132e-06f, 9.3110963384e-10f};
constexpr float Q[7] = {1.0f, 0.1744645309f, -0.043774619848f, 0.024099958115f,
                        0.001646074725f, 2.2061337818e-05f, 5.3602317446e-08f};

enum Act { TANH = 0, RELU = 1 };

#if defined(__AVX__)
inline v8 vmin(v8 a, v8 b) { return _mm256_min_ps(a, b); }
inline v8 vmax(v8 a, v8 b) { return _mm256_max_ps(a, b); }
// 1/q: the 12-bit hardware estimate and one Newton step (relative error ~1e-7, like a division,
// at a third of its cost).
inline v8 reciprocal(v8 q) {
  v8 r = _mm256_rcp_ps(q);
  return r + r * (1.f - q * r);
}
#else
inline v8 vmin(v8 a, v8 b) { return a < b ? a : b; }
inline v8 vmax(v8 a, v8 b) { return a > b ? a : b; }
inline v8 reciprocal(v8 q) { return 1.f / q; }
#endif

// tanh of U vectors at z, their Horner steps interleaved so the core overlaps U independent
// chains instead of waiting on one.
template <int U>
inline void tanh_vectors(float* z) {
  v8 v[U], z2[U], p[U], q[U];
  for (int u = 0; u < U; ++u) {
    v[u] = vmin(vmax(load(z + u * L), splat(-9.f)), splat(9.f));
    z2[u] = v[u] * v[u];
    p[u] = splat(P[6]);
    q[u] = splat(Q[6]);
  }
  for (int k = 5; k >= 0; --k) {
    for (int u = 0; u < U; ++u) {
      p[u] = p[u] * z2[u] + P[k];
      q[u] = q[u] * z2[u] + Q[k];
    }
  }
  for (int u = 0; u < U; ++u) store(z + u * L, v[u] * p[u] * reciprocal(q[u]));
}

// z <- act(z) over count floats (a multiple of 8).
template <int A>
void activate(float* z, int count) {
  int i = 0;
  if (A == RELU) {
    for (; i < count; i += L) store(z + i, vmax(load(z + i), splat(0.f)));
    return;
  }
  for (; i + 4 * L <= count; i += 4 * L) tanh_vectors<4>(z + i);
  for (; i < count; i += L) tanh_vectors<1>(z + i);
}

// act'(z) from a = act(z).
template <int A>
inline v8 derivative(v8 a) {
  if (A == RELU) return a > 0.f ? splat(1.f) : splat(0.f);
  return 1.f - a * a;
}

// out[t, :16] (+)= sum_i A[t, i] b[i, :16] for t < T, i < n, where A[t, i] = a[t * sa + i * si]:
// a (T x n) @ (n x 16) tile in 2T registers, each broadcast of A feeding two FMAs. Rows of b and
// out are hp apart. Starts from zero, or from out with ADD.
template <int T, bool ADD>
inline void tile(const float* a, int sa, int si, const float* b, int n, int hp, float* out) {
  v8 lo[T], hi[T];
  for (int t = 0; t < T; ++t) {
    lo[t] = ADD ? load(out + t * hp) : splat(0.f);
    hi[t] = ADD ? load(out + t * hp + L) : splat(0.f);
  }
  for (int i = 0; i < n; ++i) {
    const v8 b0 = load(b + i * hp), b1 = load(b + i * hp + L);
    for (int t = 0; t < T; ++t) {
      const v8 ai = splat(a[t * sa + i * si]);
      lo[t] += ai * b0;
      hi[t] += ai * b1;
    }
  }
  for (int t = 0; t < T; ++t) {
    store(out + t * hp, lo[t]);
    store(out + t * hp + L, hi[t]);
  }
}

// out (rows, hp) (+)= A (rows, n) @ b (n, hp), A[t, i] = a[t * sa + i * si], in tiles of 16
// columns and T rows (2T accumulators of AVX2's 16 registers), the last rows in a smaller tile.
template <int T, bool ADD>
void multiply(const float* a, int rows, int sa, int si, const float* b, int n, int hp, float* out) {
  static_assert(T <= 6, "the tail switch covers up to 5 leftover rows");
  for (int j = 0; j < hp; j += 2 * L) {
    int t = 0;
    for (; t + T <= rows; t += T) tile<T, ADD>(a + t * sa, sa, si, b + j, n, hp, out + t * hp + j);
    const float* at = a + t * sa;
    float* o = out + t * hp + j;
    switch (rows - t) {
      case 5: tile<5, ADD>(at, sa, si, b + j, n, hp, o); break;
      case 4: tile<4, ADD>(at, sa, si, b + j, n, hp, o); break;
      case 3: tile<3, ADD>(at, sa, si, b + j, n, hp, o); break;
      case 2: tile<2, ADD>(at, sa, si, b + j, n, hp, o); break;
      case 1: tile<1, ADD>(at, sa, si, b + j, n, hp, o); break;
      default: break;
    }
  }
}

// sum_j a[j] b[j] over hp floats (a multiple of 16), in two vector accumulators.
inline float dot(const float* a, const float* b, int hp) {
  v8 acc0 = splat(0.f), acc1 = acc0;
  for (int j = 0; j < hp; j += 2 * L) {
    acc0 += load(a + j) * load(b + j);
    acc1 += load(a + j + L) * load(b + j + L);
  }
  return hsum(acc0 + acc1);
}

constexpr int BLOCK = 32;  // samples per block: its hidden and gradient rows stay in L1

// One model: `steps` SGD steps on padded weights w1 (d, hp) and w2 stored transposed (k, hp);
// returns the data loss of the last step (before its update). A step goes through the samples
// in blocks, each in phases that are independent across samples (so the core overlaps them):
// pre-activations, activation, output and error, hidden gradient, weight gradients.
// Scratch: hid and grad (BLOCK, hp), gw1 (d, hp), gw2 (k, hp), err (BLOCK, k).
template <int A>
float train_one(const float* x, const float* y, const float* sw, float* w1, float* w2,
                int n, int d, int hp, int k, float lr, float gamma, int steps,
                float* hid, float* grad, float* gw1, float* gw2, float* err) {
  const float decay = 1.f - 2.f * lr * gamma;
  float loss = 0.f;
  for (int s = 0; s < steps; ++s) {
    loss = 0.f;
    std::fill(gw1, gw1 + d * hp, 0.f);
    std::fill(gw2, gw2 + k * hp, 0.f);
    for (int i0 = 0; i0 < n; i0 += BLOCK) {
      const int nb = std::min(BLOCK, n - i0);
      multiply<6, false>(x + i0 * d, nb, d, 1, w1, d, hp, hid);   // pre-activations x @ W1
      activate<A>(hid, nb * hp);
      for (int b = 0; b < nb; ++b) {  // output, error and dL/d out = 2 w_n (f - y)
        const int i = i0 + b;
        const float* hb = hid + b * hp;
        for (int o = 0; o < k; ++o) {
          const float e = dot(hb, w2 + o * hp, hp) - y[i * k + o];
          loss += sw[i] * e * e;
          err[b * k + o] = 2.f * sw[i] * e;
        }
      }
      for (int b = 0; b < nb; ++b) {  // hidden gradient: (dL/d out @ W2^T) * act'(z)
        for (int j = 0; j < hp; j += L) {
          v8 back = splat(0.f);
          for (int o = 0; o < k; ++o) back += err[b * k + o] * load(w2 + o * hp + j);
          store(grad + b * hp + j, back * derivative<A>(load(hid + b * hp + j)));
        }
      }
      multiply<5, true>(x + i0 * d, d, 1, d, grad, nb, hp, gw1);  // dW1 += x^T grad
      multiply<5, true>(err, k, 1, k, hid, nb, hp, gw2);          // dW2^T += err^T hidden
    }
    for (int q = 0; q < d * hp; ++q) w1[q] = w1[q] * decay - lr * gw1[q];
    for (int q = 0; q < hp * k; ++q) w2[q] = w2[q] * decay - lr * gw2[q];
  }
  return loss;
}

// One model's data loss (1/n) sum_n ||y_n - f(x_n)||^2 on padded weights, no update: train_one's
// forward phases alone (a training trace measures it at every record step).
template <int A>
float loss_one(const float* x, const float* y, const float* w1, const float* w2, int n, int d, int hp, int k,
               float* hid) {
  double total = 0.0;
  for (int i0 = 0; i0 < n; i0 += BLOCK) {
    const int nb = std::min(BLOCK, n - i0);
    multiply<6, false>(x + i0 * d, nb, d, 1, w1, d, hp, hid);
    activate<A>(hid, nb * hp);
    for (int b = 0; b < nb; ++b) {
      const float* hb = hid + b * hp;
      for (int o = 0; o < k; ++o) {
        const float e = dot(hb, w2 + o * hp, hp) - y[(i0 + b) * k + o];
        total += double(e) * e;
      }
    }
  }
  return float(total / n);
}

// Copies model mi's weights into the padded buffers (w2 transposed, (k, hp)).
void pad_weights(const float* W1, const float* W2, int64_t d, int64_t h, int64_t k, int hp, std::vector<float>& pw1,
                 std::vector<float>& pw2) {
  std::fill(pw1.begin(), pw1.end(), 0.f);
  std::fill(pw2.begin(), pw2.end(), 0.f);
  for (int c = 0; c < d; ++c)
    for (int j = 0; j < h; ++j) pw1[c * hp + j] = W1[c * h + j];
  for (int j = 0; j < h; ++j)
    for (int o = 0; o < k; ++o) pw2[o * hp + j] = W2[j * k + o];
}

}  // namespace

// x (m, n, d), y (m, n, k), w1 (m, d, h), w2 (m, h, k), loss (m,): contiguous float32. Writes each
// model's data loss (1/n) sum_n ||y_n - f(x_n)||^2; nothing is updated. Returns 0, or 1 for an
// unknown activation.
extern "C" int phasemap_mlp2_loss(const float* x, const float* y, const float* w1, const float* w2, float* loss,
                                  int64_t m, int64_t n, int64_t d, int64_t h, int64_t k, int64_t activation) {
  if (activation != TANH && activation != RELU) return 1;
  const int hp = (h + 2 * L - 1) / (2 * L) * (2 * L);
  std::vector<float> pw1(d * hp), pw2(k * hp), hid(BLOCK * hp);
  auto evaluate = activation == TANH ? loss_one<TANH> : loss_one<RELU>;
  for (int64_t mi = 0; mi < m; ++mi) {
    pad_weights(w1 + mi * d * h, w2 + mi * h * k, d, h, k, hp, pw1, pw2);
    loss[mi] = evaluate(x + mi * n * d, y + mi * n * k, pw1.data(), pw2.data(), n, d, hp, k, hid.data());
  }
  return 0;
}

// x (m, n, d), y (m, n, k), sample_weight (m, n), w1 (m, d, h), w2 (m, h, k), lr, gamma and loss
// (m,): contiguous float32. Updates w1 and w2 in place and writes the data loss of the last step.
// Plain C entry point (loaded with ctypes, which releases the GIL: callers run model slices on
// several threads). Returns 0, or 1 for an unknown activation.
extern "C" int phasemap_mlp2_sgd(const float* x, const float* y, const float* sample_weight, float* w1,
                                 float* w2, const float* lr, const float* gamma, float* loss, int64_t m,
                                 int64_t n, int64_t d, int64_t h, int64_t k, int64_t steps,
                                 int64_t activation) {
  if (activation != TANH && activation != RELU) return 1;
  const int hp = (h + 2 * L - 1) / (2 * L) * (2 * L);  // whole 16-unit tiles
  // Padded weights (w2 stored transposed, (k, hp)), a block's hidden and gradient rows.
  std::vector<float> pw1(d * hp), pw2(k * hp), hid(BLOCK * hp), grad(BLOCK * hp), gw1(d * hp), gw2(k * hp),
      err(BLOCK * k);
  auto train = activation == TANH ? train_one<TANH> : train_one<RELU>;
  for (int64_t mi = 0; mi < m; ++mi) {
    float* W1 = w1 + mi * d * h;
    float* W2 = w2 + mi * h * k;
    pad_weights(W1, W2, d, h, k, hp, pw1, pw2);
    loss[mi] = train(x + mi * n * d, y + mi * n * k, sample_weight + mi * n, pw1.data(), pw2.data(), n, d, hp,
                     k, lr[mi], gamma[mi], steps, hid.data(), grad.data(), gw1.data(), gw2.data(), err.data());
    for (int c = 0; c < d; ++c)
      for (int j = 0; j < h; ++j) W1[c * h + j] = pw1[c * hp + j];
    for (int j = 0; j < h; ++j)
      for (int o = 0; o < k; ++o) W2[j * k + o] = pw2[o * hp + j];
  }
  return 0;
}
