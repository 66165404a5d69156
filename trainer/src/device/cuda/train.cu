// The training kernels on an NVIDIA GPU: GELU, layer norm, the causal
// softmax of attention and the cross-entropy loss, each forward and
// backward. `ops.rs` launches them; the CPU versions in `fused` compute the
// same functions.
//
// Every reduction runs in a fixed order (warp shuffles, then shared memory,
// never atomics), so the same inputs give the same bits on the same GPU.

#define WARP 32
#define NEG_INF __int_as_float(0xff800000)
#define GELU_C 0.7978845608f
#define GELU_A 0.044715f

__device__ __forceinline__ float warp_sum(float v) {
    for (int o = WARP / 2; o > 0; o >>= 1) v += __shfl_xor_sync(0xffffffffu, v, o);
    return v;
}

__device__ __forceinline__ float warp_max(float v) {
    for (int o = WARP / 2; o > 0; o >>= 1) v = fmaxf(v, __shfl_xor_sync(0xffffffffu, v, o));
    return v;
}

// A running (max, sum of e^(x - max)) pair, merged with another.
__device__ __forceinline__ void merge_exp_sum(float &m, float &s, float m2, float s2) {
    float top = fmaxf(m, m2);
    if (top == NEG_INF) return;
    s = s * __expf(m - top) + s2 * __expf(m2 - top);
    m = top;
}

__device__ __forceinline__ void warp_exp_sum(float &m, float &s) {
    for (int o = WARP / 2; o > 0; o >>= 1) {
        float m2 = __shfl_xor_sync(0xffffffffu, m, o);
        float s2 = __shfl_xor_sync(0xffffffffu, s, o);
        merge_exp_sum(m, s, m2, s2);
    }
}

// ---------------------------------------------------------------- GELU

__device__ __forceinline__ float gelu_tanh(float z) {
    return tanhf(GELU_C * (z + GELU_A * z * z * z));
}

extern "C" __global__ void gelu_forward(const float *z, float *y, unsigned long long n) {
    for (unsigned long long i = blockIdx.x * (unsigned long long)blockDim.x + threadIdx.x; i < n;
         i += (unsigned long long)gridDim.x * blockDim.x) {
        float v = z[i];
        y[i] = 0.5f * v * (1.0f + gelu_tanh(v));
    }
}

extern "C" __global__ void gelu_backward(const float *z, const float *dy, float *dz,
                                         unsigned long long n) {
    for (unsigned long long i = blockIdx.x * (unsigned long long)blockDim.x + threadIdx.x; i < n;
         i += (unsigned long long)gridDim.x * blockDim.x) {
        float v = z[i];
        float t = gelu_tanh(v);
        float du = GELU_C * (1.0f + 3.0f * GELU_A * v * v);
        dz[i] = dy[i] * (0.5f * (1.0f + t) + 0.5f * v * (1.0f - t * t) * du);
    }
}

// ---------------------------------------------------------- layer norm
// One warp per row of `d`.

__device__ __forceinline__ void row_moments(const float *x, int d, float eps, float &mean,
                                            float &rstd) {
    int lane = threadIdx.x % WARP;
    float s = 0.0f;
    for (int i = lane; i < d; i += WARP) s += x[i];
    mean = warp_sum(s) / d;
    float v = 0.0f;
    for (int i = lane; i < d; i += WARP) {
        float c = x[i] - mean;
        v += c * c;
    }
    rstd = rsqrtf(warp_sum(v) / d + eps);
}

extern "C" __global__ void layer_norm_forward(const float *x, const float *w, const float *b,
                                              float *y, int rows, int d, float eps) {
    int row = blockIdx.x * (blockDim.x / WARP) + threadIdx.x / WARP;
    if (row >= rows) return;
    const float *xr = x + (size_t)row * d;
    float *yr = y + (size_t)row * d;
    float mean, rstd;
    row_moments(xr, d, eps, mean, rstd);
    for (int i = threadIdx.x % WARP; i < d; i += WARP) yr[i] = (xr[i] - mean) * rstd * w[i] + b[i];
}

// dx for each row, and each row's (mean, rstd) into `stats` for the
// parameter gradients.
extern "C" __global__ void layer_norm_backward_input(const float *x, const float *w,
                                                     const float *dy, float *dx, float *stats,
                                                     int rows, int d, float eps) {
    int row = blockIdx.x * (blockDim.x / WARP) + threadIdx.x / WARP;
    if (row >= rows) return;
    int lane = threadIdx.x % WARP;
    const float *xr = x + (size_t)row * d;
    const float *gr = dy + (size_t)row * d;
    float mean, rstd;
    row_moments(xr, d, eps, mean, rstd);
    float sg = 0.0f, sgx = 0.0f;
    for (int i = lane; i < d; i += WARP) {
        float g = gr[i] * w[i];
        sg += g;
        sgx += g * (xr[i] - mean) * rstd;
    }
    float mean_g = warp_sum(sg) / d, mean_gx = warp_sum(sgx) / d;
    float *dxr = dx + (size_t)row * d;
    for (int i = lane; i < d; i += WARP) {
        float xhat = (xr[i] - mean) * rstd;
        dxr[i] = rstd * (gr[i] * w[i] - mean_g - xhat * mean_gx);
    }
    if (lane == 0) {
        stats[2 * row] = mean;
        stats[2 * row + 1] = rstd;
    }
}

// Partial sums of dw and db over one split of the rows: blocks of 32
// columns × 8 row lanes; split `blockIdx.y` writes its sums to
// `partial[split][0..d]` (dw) and `partial[split][d..2d]` (db).
extern "C" __global__ void layer_norm_backward_params(const float *x, const float *dy,
                                                      const float *stats, float *partial,
                                                      int rows, int d, int rows_per_split) {
    __shared__ float sw[8][WARP + 1];
    __shared__ float sb[8][WARP + 1];
    int c = threadIdx.x % WARP, g = threadIdx.x / WARP;
    int col = blockIdx.x * WARP + c;
    int start = blockIdx.y * rows_per_split;
    int end = min(rows, start + rows_per_split);
    float aw = 0.0f, ab = 0.0f;
    if (col < d) {
        for (int r = start + g; r < end; r += 8) {
            float gv = dy[(size_t)r * d + col];
            aw += gv * (x[(size_t)r * d + col] - stats[2 * r]) * stats[2 * r + 1];
            ab += gv;
        }
    }
    sw[g][c] = aw;
    sb[g][c] = ab;
    __syncthreads();
    if (g == 0 && col < d) {
        float tw = 0.0f, tb = 0.0f;
        for (int k = 0; k < 8; k++) {
            tw += sw[k][c];
            tb += sb[k][c];
        }
        partial[(size_t)blockIdx.y * 2 * d + col] = tw;
        partial[(size_t)blockIdx.y * 2 * d + d + col] = tb;
    }
}

// out[i] = Σ_s partial[s][i] for i < width, in split order.
extern "C" __global__ void sum_splits(const float *partial, float *out, int splits, int width) {
    int i = blockIdx.x * blockDim.x + threadIdx.x;
    if (i >= width) return;
    float t = 0.0f;
    for (int s = 0; s < splits; s++) t += partial[(size_t)s * width + i];
    out[i] = t;
}

// ------------------------------------------------------ causal softmax
// Scores [matrices × time × time]; row i of each matrix attends to
// columns 0..=i. One warp per row.

extern "C" __global__ void causal_softmax_forward(const float *x, float *y, long long rows,
                                                  int time, float scale) {
    long long row = blockIdx.x * (long long)(blockDim.x / WARP) + threadIdx.x / WARP;
    if (row >= rows) return;
    int lane = threadIdx.x % WARP;
    int seen = (int)(row % time) + 1;
    const float *xr = x + row * time;
    float *yr = y + row * time;
    float m = NEG_INF, s = 0.0f;
    for (int j = lane; j < seen; j += WARP) merge_exp_sum(m, s, scale * xr[j], 1.0f);
    warp_exp_sum(m, s);
    float inv = 1.0f / s;
    for (int j = lane; j < time; j += WARP) yr[j] = j < seen ? __expf(scale * xr[j] - m) * inv : 0.0f;
}

// dx = scale · y · (dy − Σ_j y_j dy_j), zero above the diagonal.
extern "C" __global__ void causal_softmax_backward(const float *y, const float *dy, float *dx,
                                                   long long rows, int time, float scale) {
    long long row = blockIdx.x * (long long)(blockDim.x / WARP) + threadIdx.x / WARP;
    if (row >= rows) return;
    int lane = threadIdx.x % WARP;
    int seen = (int)(row % time) + 1;
    const float *yr = y + row * time;
    const float *gr = dy + row * time;
    float *dxr = dx + row * time;
    float dot = 0.0f;
    for (int j = lane; j < seen; j += WARP) dot += yr[j] * gr[j];
    dot = warp_sum(dot);
    for (int j = lane; j < time; j += WARP)
        dxr[j] = j < seen ? scale * yr[j] * (gr[j] - dot) : 0.0f;
}

// -------------------------------------------------------- cross-entropy
// Logits [rows × vocab]; one block per row.

// The row's log Σ e^x, reduced over the block (blockDim.x a multiple of
// 32, at most 1024).
__device__ float row_log_sum_exp(const float *xr, int vocab) {
    __shared__ float sm[WARP], ss[WARP];
    float m = NEG_INF, s = 0.0f;
    for (int j = threadIdx.x; j < vocab; j += blockDim.x) merge_exp_sum(m, s, xr[j], 1.0f);
    warp_exp_sum(m, s);
    int warp = threadIdx.x / WARP, lane = threadIdx.x % WARP, warps = blockDim.x / WARP;
    if (lane == 0) {
        sm[warp] = m;
        ss[warp] = s;
    }
    __syncthreads();
    if (warp == 0) {
        m = lane < warps ? sm[lane] : NEG_INF;
        s = lane < warps ? ss[lane] : 0.0f;
        warp_exp_sum(m, s);
        if (lane == 0) {
            sm[0] = m;
            ss[0] = s;
        }
    }
    __syncthreads();
    float lse = sm[0] + logf(ss[0]);
    __syncthreads();
    return lse;
}

// Each row's loss, log Σ e^x − x[target], into `losses`.
extern "C" __global__ void cross_entropy_rows(const float *logits, const unsigned int *targets,
                                              float *losses, int vocab) {
    const float *xr = logits + (size_t)blockIdx.x * vocab;
    float lse = row_log_sum_exp(xr, vocab);
    if (threadIdx.x == 0) losses[blockIdx.x] = lse - xr[targets[blockIdx.x]];
}

// out[0] = mean of `n` values, in one block of 1024 threads.
extern "C" __global__ void mean_of(const float *values, float *out, int n) {
    __shared__ float part[WARP];
    float t = 0.0f;
    for (int i = threadIdx.x; i < n; i += blockDim.x) t += values[i];
    t = warp_sum(t);
    if (threadIdx.x % WARP == 0) part[threadIdx.x / WARP] = t;
    __syncthreads();
    if (threadIdx.x < WARP) {
        t = threadIdx.x < blockDim.x / WARP ? part[threadIdx.x] : 0.0f;
        t = warp_sum(t);
        if (threadIdx.x == 0) out[0] = t / n;
    }
}

// grad = scale · (softmax(row) − onehot(target)).
extern "C" __global__ void cross_entropy_backward(const float *logits,
                                                  const unsigned int *targets, float *grad,
                                                  int vocab, float scale) {
    const float *xr = logits + (size_t)blockIdx.x * vocab;
    float *gr = grad + (size_t)blockIdx.x * vocab;
    float lse = row_log_sum_exp(xr, vocab);
    unsigned int target = targets[blockIdx.x];
    for (int j = threadIdx.x; j < vocab; j += blockDim.x)
        gr[j] = scale * (__expf(xr[j] - lse) - (j == (int)target ? 1.0f : 0.0f));
}

// ------------------------------------------------------- linear layers

// y[r, c] += b[c] for `n` entries of rows of `cols`.
extern "C" __global__ void add_bias(float *y, const float *b, unsigned long long n, int cols) {
    for (unsigned long long i = blockIdx.x * (unsigned long long)blockDim.x + threadIdx.x; i < n;
         i += (unsigned long long)gridDim.x * blockDim.x)
        y[i] += b[i % cols];
}

// Partial column sums of x [rows × cols] over one split of the rows, into
// partial[split][0..cols]; blocks of 32 columns × 8 row lanes.
extern "C" __global__ void column_sum_partials(const float *x, float *partial, int rows, int cols,
                                               int rows_per_split) {
    __shared__ float s[8][WARP + 1];
    int c = threadIdx.x % WARP, g = threadIdx.x / WARP;
    int col = blockIdx.x * WARP + c;
    int start = blockIdx.y * rows_per_split;
    int end = min(rows, start + rows_per_split);
    float a = 0.0f;
    if (col < cols)
        for (int r = start + g; r < end; r += 8) a += x[(size_t)r * cols + col];
    s[g][c] = a;
    __syncthreads();
    if (g == 0 && col < cols) {
        float t = 0.0f;
        for (int k = 0; k < 8; k++) t += s[k][c];
        partial[(size_t)blockIdx.y * cols + col] = t;
    }
}

// ----------------------------------------------------- attention heads
// [batch, time, parts, heads, dim] ⇄ [parts, batch, heads, time, dim].

extern "C" __global__ void split_heads(const float *x, float *y, int batch, int time, int parts,
                                       int heads, int dim) {
    unsigned long long n = (unsigned long long)batch * time * parts * heads * dim;
    for (unsigned long long i = blockIdx.x * (unsigned long long)blockDim.x + threadIdx.x; i < n;
         i += (unsigned long long)gridDim.x * blockDim.x) {
        unsigned long long rest = i;
        int d = rest % dim; rest /= dim;
        int t = rest % time; rest /= time;
        int h = rest % heads; rest /= heads;
        int b = rest % batch; rest /= batch;
        int p = (int)rest;
        y[i] = x[(((unsigned long long)b * time + t) * parts + p) * heads * dim + h * dim + d];
    }
}

extern "C" __global__ void merge_heads(const float *x, float *y, int batch, int time, int parts,
                                       int heads, int dim) {
    unsigned long long n = (unsigned long long)batch * time * parts * heads * dim;
    for (unsigned long long i = blockIdx.x * (unsigned long long)blockDim.x + threadIdx.x; i < n;
         i += (unsigned long long)gridDim.x * blockDim.x) {
        unsigned long long rest = i;
        int d = rest % dim; rest /= dim;
        int h = rest % heads; rest /= heads;
        int p = rest % parts; rest /= parts;
        int t = rest % time; rest /= time;
        int b = (int)rest;
        y[i] = x[((((unsigned long long)p * batch + b) * heads + h) * time + t) * dim + d];
    }
}

// -------------------------------------------------------------- AdamW
// The same operations, in the same order, as the composed update.

// m ← β·m + (1 − β)·(c·g), or with (c·g)² when `square`.
extern "C" __global__ void adamw_moment(float *m, const float *g, unsigned long long n, float coef,
                                        float beta, float one_minus_beta, int square) {
    for (unsigned long long i = blockIdx.x * (unsigned long long)blockDim.x + threadIdx.x; i < n;
         i += (unsigned long long)gridDim.x * blockDim.x) {
        float s = g[i] * coef;
        float t = square ? s * s : s;
        m[i] = __fadd_rn(__fmul_rn(m[i], beta), __fmul_rn(t, one_minus_beta));
    }
}

// θ ← decay·θ − (step·m) / (√v · inv_bias2 + eps).
extern "C" __global__ void adamw_params(float *theta, const float *m, const float *v,
                                        unsigned long long n, float inv_bias2, float eps,
                                        float step, float decay) {
    for (unsigned long long i = blockIdx.x * (unsigned long long)blockDim.x + threadIdx.x; i < n;
         i += (unsigned long long)gridDim.x * blockDim.x) {
        float denom = __fadd_rn(__fmul_rn(sqrtf(v[i]), inv_bias2), eps);
        float update = __fdiv_rn(__fmul_rn(m[i], step), denom);
        theta[i] = __fsub_rn(__fmul_rn(theta[i], decay), update);
    }
}
