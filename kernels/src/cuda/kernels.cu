// p2ptrain's compression kernels on an NVIDIA GPU, compiled at run time with
// NVRTC. They compute exactly what the CPU path in `compress.rs` and
// `decompress.rs` computes: every floating-point operation is a binary32
// intrinsic rounded to nearest on its own (`__fadd_rn` and friends), so no
// fused multiply-add or reassociation can change a bit, and the top-k
// selection compares integer keys only.

typedef unsigned int u32;
typedef unsigned long long u64;
typedef unsigned char u8;

#define THREADS 256
#define WARPS (THREADS / 32)
#define FULL_MASK 0xffffffffu
// Most entries of a chunk ranked directly once the radix passes have
// narrowed the k-th largest down to one bin.
#define CANDIDATES 64
// Entries per thread held in registers: chunks of up to THREADS × PER_THREAD
// entries keeping at most THREADS of them take the register path.
#define PER_THREAD 16

// The magnitude of `x` as an integer that orders like |x| (finite x).
__device__ __forceinline__ u32 magnitude(float x) {
    return __float_as_uint(x) & 0x7fffffffu;
}

// The code of `v`: min(max_code, u32(((v / scale) + half) + 0.5)), with u32
// truncating toward zero and sending negatives and NaN to 0; 0 when scale = 0.
__device__ __forceinline__ u32 quantize(float v, float scale, float half, u32 max_code) {
    if (scale == 0.0f) {
        return 0;
    }
    float x = __fadd_rn(__fadd_rn(__fdiv_rn(v, scale), half), 0.5f);
    if (!(x > 0.0f)) {
        return 0;
    }
    if (x >= 4294967296.0f) {
        return max_code;
    }
    return min((u32)x, max_code);
}

// (f32(code) − half) × scale.
__device__ __forceinline__ float dequantize(u32 code, float scale, float half) {
    return __fmul_rn(__fsub_rn((float)code, half), scale);
}

// Adds the totals of the warps before this one to `before_in_warp` (what
// comes before this thread within its warp), given its warp's total; the
// block's total goes to `*total`. Every thread of the block must call it.
__device__ u32 block_before(u32 before_in_warp, u32 warp_total, u32* warp_scratch, u32* total) {
    const u32 warp = threadIdx.x >> 5;
    __syncthreads();
    if ((threadIdx.x & 31) == 0) {
        warp_scratch[warp] = warp_total;
    }
    __syncthreads();
    u32 before = 0, sum = 0;
    for (u32 w = 0; w < WARPS; ++w) {
        const u32 c = warp_scratch[w];
        before += w < warp ? c : 0;
        sum += c;
    }
    *total = sum;
    return before + before_in_warp;
}

// How many threads before this one in the block have `flag` set; the
// block's total goes to `*total`. Every thread of the block must call it.
__device__ u32 block_count_before(bool flag, u32* warp_scratch, u32* total) {
    const u32 lane = threadIdx.x & 31;
    const u32 ballot = __ballot_sync(FULL_MASK, flag);
    return block_before(__popc(ballot & ((1u << lane) - 1u)), __popc(ballot), warp_scratch, total);
}

// The sum of `x` over the threads before this one in the block; the block's
// total goes to `*total`. Every thread of the block must call it.
__device__ u32 block_sum_before(u32 x, u32* warp_scratch, u32* total) {
    const u32 lane = threadIdx.x & 31;
    u32 inclusive = x;
    for (u32 offset = 1; offset < 32; offset <<= 1) {
        const u32 t = __shfl_up_sync(FULL_MASK, inclusive, offset);
        inclusive += lane >= offset ? t : 0;
    }
    return block_before(inclusive - x, __shfl_sync(FULL_MASK, inclusive, 31), warp_scratch, total);
}

// The largest value of `v` over the block, for every thread.
__device__ u32 block_max(u32 v, u32* scratch) {
    for (int offset = 16; offset > 0; offset >>= 1) {
        v = max(v, __shfl_xor_sync(FULL_MASK, v, offset));
    }
    __syncthreads();
    if ((threadIdx.x & 31) == 0) {
        scratch[threadIdx.x >> 5] = v;
    }
    __syncthreads();
    u32 m = 0;
    for (u32 w = 0; w < WARPS; ++w) {
        m = max(m, scratch[w]);
    }
    return m;
}

// Run by the first warp over a complete 256-bin histogram: the digit whose
// bin holds the `remaining`-th largest entry (digits counted from 255 down),
// written to chosen[0], the rank left inside that bin to chosen[1] and the
// bin's count to chosen[2].
__device__ void choose_bin(const u32* hist, u32 remaining, u32* chosen) {
    // Lane l holds digits 255 − 8l down to 248 − 8l.
    const u32 lane = threadIdx.x;
    u32 counts[8];
    u32 sum = 0;
    for (u32 j = 0; j < 8; ++j) {
        counts[j] = hist[255 - 8 * lane - j];
        sum += counts[j];
    }
    u32 inclusive = sum;
    for (u32 offset = 1; offset < 32; offset <<= 1) {
        const u32 t = __shfl_up_sync(FULL_MASK, inclusive, offset);
        inclusive += lane >= offset ? t : 0;
    }
    u32 before = inclusive - sum;
    if (before < remaining && inclusive >= remaining) {
        for (u32 j = 0; j < 8; ++j) {
            if (before + counts[j] >= remaining) {
                chosen[0] = 255 - 8 * lane - j;
                chosen[1] = remaining - before;
                chosen[2] = counts[j];
                break;
            }
            before += counts[j];
        }
    }
}

// One radix step, once every thread has added its digits to `hist` (every
// thread calls it): narrows `prefix` under `mask` to the bin, at `shift`,
// that holds the `remaining`-th largest entry, and `remaining` to its rank
// inside that bin; returns how many entries the bin holds.
__device__ __forceinline__ u32 narrow_to_bin(const u32* hist, u32* chosen, int shift, u32& prefix, u32& mask,
                                             u32& remaining) {
    __syncthreads();
    if (threadIdx.x < 32) {
        choose_bin(hist, remaining, chosen);
    }
    __syncthreads();
    prefix |= chosen[0] << shift;
    mask |= 0xffu << shift;
    remaining = chosen[1];
    return chosen[2];
}

// Packs `count` fields of `bits` bits, least significant bit first, into
// ceil(count × bits / 8) bytes at `out`; each thread writes whole bytes.
__device__ void pack(const u32* fields, u32 count, u32 bits, u8* out) {
    const u64 bytes = ((u64)count * bits + 7) / 8;
    for (u64 b = threadIdx.x; b < bytes; b += THREADS) {
        const u64 first_bit = b * 8;
        const u64 j0 = first_bit / bits;
        const u64 j1 = min((u64)count - 1, (first_bit + 7) / bits);
        u32 byte = 0;
        for (u64 j = j0; j <= j1; ++j) {
            const long long offset = (long long)(j * bits) - (long long)first_bit;
            const u64 field = fields[j];
            const u64 shifted = offset >= 0 ? field << offset : field >> (-offset);
            byte |= (u32)(shifted & 0xffu);
        }
        out[b] = (u8)byte;
    }
}

// Field `j` of a run of `bytes` bytes packed by `pack`; bytes past the end
// read as zero.
__device__ __forceinline__ u32 unpack_field(const u8* run, u64 bytes, u64 j, u32 bits) {
    const u64 bit = j * bits;
    const u64 b = bit / 8;
    u64 word = 0;
    for (u32 i = 0; i < 4; ++i) {
        if (b + i < bytes) {
            word |= (u64)run[b + i] << (8 * i);
        }
    }
    return (u32)((word >> (bit % 8)) & ((1ull << bits) - 1));
}

// Adds one to `hist[digit]` for each lane of the warp (digit 0x100: none).
// Lanes with the same digit add once, through their lowest lane.
__device__ __forceinline__ void add_to_histogram(u32* hist, u32 digit) {
    if (__all_sync(FULL_MASK, digit == __shfl_sync(FULL_MASK, digit, 0))) {
        if ((threadIdx.x & 31) == 0 && digit != 0x100u) {
            atomicAdd(&hist[digit], 32u);
        }
        return;
    }
    const u32 peers = __match_any_sync(FULL_MASK, digit);
    if (digit != 0x100u && (threadIdx.x & 31) == __ffs(peers) - 1) {
        atomicAdd(&hist[digit], __popc(peers));
    }
}

// The selection key of entry `i` with magnitude `m`: larger is better, the
// lower index winning between equal magnitudes.
__device__ __forceinline__ u64 selection_key(u32 m, u32 i) {
    return ((u64)m << 32) | (u64)(~i);
}

// Quantizes kept entry `i` of value `a` (slot `slot` in index order).
__device__ __forceinline__ void keep_value(float a, float* out, u32 i, u32 slot, float scale, float half,
                                           u32 max_code, u32* chunk_index, u32* chunk_code) {
    const u32 code = quantize(a, scale, half, max_code);
    out[i] = __fsub_rn(a, dequantize(code, scale, half));
    chunk_index[slot] = i;
    chunk_code[slot] = code;
}

// Quantizes kept entry `i` of `acc` (slot `slot` in index order).
__device__ __forceinline__ void keep_entry(const float* acc, float* out, u32 i, u32 slot, float scale,
                                           float half, u32 max_code, u32* chunk_index, u32* chunk_code) {
    keep_value(acc[i], out, i, slot, scale, half, max_code, chunk_index, chunk_code);
}

// A lower bound of the `k`-th largest (1 ≤ k ≤ THREADS) of the block's
// `value`s, one per thread: a radix select over their top `bytes` bytes, so
// the k-th largest with its lower bytes cleared (exact when `bytes` is 4).
// Every thread must call it.
__device__ u32 block_kth_largest_floor(u32 value, u32 k, int bytes, u32* hist, u32* chosen) {
    u32 prefix = 0, mask = 0, remaining = k;
    for (int shift = 24; shift >= 32 - 8 * bytes; shift -= 8) {
        for (u32 b = threadIdx.x; b < 256; b += THREADS) {
            hist[b] = 0;
        }
        __syncthreads();
        add_to_histogram(hist, (value & mask) == prefix ? (value >> shift) & 0xffu : 0x100u);
        narrow_to_bin(hist, chosen, shift, prefix, mask, remaining);
    }
    return prefix;
}

// Keeps the entries whose key is at least `cutoff`: each warp walks its own
// stretch of the chunk twice, counting and then writing, so only one block
// barrier orders the stretches.
__device__ void select_by_cutoff(const float* acc, float* out, u32 n, u64 cutoff, float scale, float half,
                                 u32 max_code, u32* chunk_index, u32* chunk_code, u32* warp_scratch) {
    const u32 lane = threadIdx.x & 31;
    const u32 warp = threadIdx.x >> 5;
    const u32 stretch = (n + WARPS * 32 - 1) / (WARPS * 32) * 32;
    const u32 lo = min(n, warp * stretch);
    const u32 hi = min(n, lo + stretch);
    u32 count = 0;
    for (u32 base = lo; base < hi; base += 32) {
        const u32 i = base + lane;
        const bool keep = i < hi && selection_key(magnitude(acc[i]), i) >= cutoff;
        count += __popc(__ballot_sync(FULL_MASK, keep));
    }
    if (lane == 0) {
        warp_scratch[warp] = count;
    }
    __syncthreads();
    u32 slot = 0;
    for (u32 w = 0; w < warp; ++w) {
        slot += warp_scratch[w];
    }
    for (u32 base = lo; base < hi; base += 32) {
        const u32 i = base + lane;
        const bool keep = i < hi && selection_key(magnitude(acc[i]), i) >= cutoff;
        const u32 ballot = __ballot_sync(FULL_MASK, keep);
        if (keep) {
            keep_entry(acc, out, i, slot + __popc(ballot & ((1u << lane) - 1u)), scale, half, max_code,
                       chunk_index, chunk_code);
        }
        slot += __popc(ballot);
    }
}

// Keeps the entries above `threshold` and the first `equal_kept` equal to
// it, scanning the chunk in tiles of the block (for chunks with more ties at
// the threshold than can be ranked directly).
__device__ void select_by_scan(const float* acc, float* out, u32 n, u32 k, u32 threshold, u32 equal_kept,
                               float scale, float half, u32 max_code, u32* chunk_index, u32* chunk_code,
                               u32* warp_scratch) {
    u32 equal_seen = 0, kept = 0;
    for (u32 base = 0; base < n && kept < k; base += THREADS) {
        const u32 i = base + threadIdx.x;
        const u32 m = i < n ? magnitude(acc[i]) : 0;
        const bool above = i < n && m > threshold;
        const bool equal = i < n && m == threshold;
        u32 equal_total, kept_total;
        const u32 rank = equal_seen + block_count_before(equal, warp_scratch, &equal_total);
        const bool keep = above || (equal && rank < equal_kept);
        const u32 slot = kept + block_count_before(keep, warp_scratch, &kept_total);
        if (keep) {
            keep_entry(acc, out, i, slot, scale, half, max_code, chunk_index, chunk_code);
        }
        equal_seen += equal_total;
        kept += kept_total;
    }
}

// The register path of `compress_chunks_in_registers`, for a chunk of n ≤
// THREADS × PER_THREAD entries keeping 1 ≤ k ≤ THREADS of them. Thread t
// holds entries t, t + THREADS, … in `v` (their bits; entries past n are not
// used).
//
// A bound narrows the search: the k-th largest of the threads' largest
// magnitudes is reached by k distinct entries, so the chunk's k-th largest
// magnitude is at least that, and so at least `floor`, a lower bound of it
// found from the top 16 bits alone. Every kept entry is among the
// candidates of magnitude ≥ floor — usually a few more than k. When at most
// THREADS are, they are ranked directly, the kept ones quantized, and it
// returns true; otherwise it returns false, having written no output.
__device__ __forceinline__ bool select_in_registers(
    const u32 (&v)[PER_THREAD], u32 n, u32 k, u32 thread_max, float scale, float half, u32 max_code,
    float* out, u32* chunk_index, u32* chunk_code, u32* hist, u32* chosen, u32* warp_scratch, u64* keys,
    u32* values, u32* kept_flags) {
    // thread_max is the thread's largest magnitude + 1, or 0 if it holds no
    // entry; at least k threads hold one (k ≤ n, k ≤ THREADS).
    const u32 bound = block_kth_largest_floor(thread_max, k, 2, hist, chosen);
    const u32 floor = bound == 0 ? 0 : bound - 1;
    u32 mine = 0;
#pragma unroll
    for (u32 j = 0; j < PER_THREAD; ++j) {
        const u32 i = j * THREADS + threadIdx.x;
        mine += i < n && (v[j] & 0x7fffffffu) >= floor ? 1 : 0;
    }
    u32 total;
    u32 slot = block_sum_before(mine, warp_scratch, &total);
    if (total > THREADS) {
        return false;
    }
#pragma unroll
    for (u32 j = 0; j < PER_THREAD; ++j) {
        const u32 i = j * THREADS + threadIdx.x;
        if (i < n && (v[j] & 0x7fffffffu) >= floor) {
            keys[slot] = selection_key(v[j] & 0x7fffffffu, i);
            values[slot] = v[j];
            ++slot;
        }
    }
    __syncthreads();
    // Candidate t is kept when fewer than k candidates beat it; its slot is
    // the number of kept candidates of lower index.
    const u32 t = threadIdx.x;
    const u64 key = t < total ? keys[t] : 0;
    bool keep = false;
    if (t < total) {
        u32 better = 0;
        for (u32 j = 0; j < total; ++j) {
            better += keys[j] > key ? 1 : 0;
        }
        keep = better < k;
    }
    kept_flags[t] = keep ? 1 : 0;
    __syncthreads();
    if (keep) {
        const u32 i = ~(u32)key;
        u32 before = 0;
        for (u32 j = 0; j < total; ++j) {
            before += kept_flags[j] != 0 && ~(u32)keys[j] < i ? 1 : 0;
        }
        keep_value(__uint_as_float(values[t]), out, i, before, scale, half, max_code, chunk_index, chunk_code);
    }
    return true;
}

// One block per chunk (the body of both compression kernels below):
// residual_out = residual_in + delta, the top k by magnitude (lower index
// winning ties) quantized against the chunk's absmax, their quantization
// error left in residual_out, and the chunk's scale, packed indices and
// packed codes written into `out` at their offsets. The u64 at the start of `out` (zeroed by the caller) ends up as
// the bitwise complement of the lowest index whose sum is NaN or infinite,
// or stays 0 (the caller then discards everything). `stage` is dynamic
// shared memory of chunk_len floats, used when `staged` is set.
//
// A chunk that fits the register path (`select_in_registers`) is selected
// from registers; any other, or one with too many candidates there, by a
// radix select over the chunk staged in shared memory (or read back from
// `residual_out` when it does not fit).
#define COMPRESS_PARAMS                                                                                     \
    const float *__restrict__ delta, const float *__restrict__ residual_in, float *__restrict__ residual_out, \
        u64 len, u32 chunk_len, u32 chunks, u32 k_full, u32 k_last, u32 index_bits, u32 value_bits,         \
        u64 index_bytes_full, u64 value_bytes_full, float half, u32 max_code, u32 staged,                   \
        u8 *__restrict__ out_bytes, u64 scales_offset, u64 index_offset, u64 value_offset,                  \
        u32 *__restrict__ kept_index, u32 *__restrict__ kept_code
#define COMPRESS_ARGS                                                                                       \
    delta, residual_in, residual_out, len, chunk_len, chunks, k_full, k_last, index_bits, value_bits,      \
        index_bytes_full, value_bytes_full, half, max_code, staged, out_bytes, scales_offset, index_offset, \
        value_offset, kept_index, kept_code

template <bool REGISTERS>
__device__ __forceinline__ void compress_chunk(COMPRESS_PARAMS) {
    u64* first_non_finite = (u64*)out_bytes;
    float* scales = (float*)(out_bytes + scales_offset);
    u8* index_bytes = out_bytes + index_offset;
    u8* value_bytes = out_bytes + value_offset;
    extern __shared__ float stage[];
    __shared__ u32 hist[256];
    __shared__ u32 warp_scratch[WARPS];
    __shared__ u32 chosen[3];
    __shared__ u64 keys[REGISTERS ? THREADS : CANDIDATES];
    __shared__ u32 values[THREADS];
    __shared__ u32 kept_flags[THREADS];
    __shared__ u32 candidate_total;
    __shared__ u64 cutoff_key;

    const u32 c = blockIdx.x;
    const u64 start = (u64)c * chunk_len;
    const bool last = c + 1 == chunks;
    const u32 n = last ? (u32)(len - start) : chunk_len;
    const u32 k = last ? k_last : k_full;
    float* out = residual_out + start;
    float* acc = staged ? stage : out;
    u32* chunk_index = kept_index + (u64)c * k_full;
    u32* chunk_code = kept_code + (u64)c * k_full;

    // 1. The accumulated values, their largest magnitude, and (unless the
    // register path takes the chunk) the histogram of their top byte, the
    // first radix digit. Lanes with the same digit add once, through their
    // lowest lane: magnitudes share their top byte in long runs.
    for (u32 b = threadIdx.x; b < 256; b += THREADS) {
        hist[b] = 0;
    }
    __syncthreads();
    u32 absmax_bits;
    bool selected = false;
    if (REGISTERS && staged && n <= THREADS * PER_THREAD && k >= 1 && k <= THREADS) {
        // All loads first, none waiting on another (entries past n read
        // entry 0 and are not used), then the checks and stores.
        u32 v[PER_THREAD];
#pragma unroll
        for (u32 j = 0; j < PER_THREAD; ++j) {
            const u32 i = j * THREADS + threadIdx.x;
            const u64 at = start + (i < n ? i : 0);
            v[j] = __float_as_uint(__fadd_rn(__ldg(residual_in + at), __ldg(delta + at)));
        }
        u32 thread_max = 0;
#pragma unroll
        for (u32 j = 0; j < PER_THREAD; ++j) {
            const u32 i = j * THREADS + threadIdx.x;
            const float a = __uint_as_float(v[j]);
            if (i < n) {
                if (!isfinite(a)) {
                    atomicMax(first_non_finite, ~(start + i));
                }
                out[i] = a;
                thread_max = max(thread_max, magnitude(a) + 1);
            }
        }
        absmax_bits = block_max(thread_max, warp_scratch) - 1;
        const float scale = __fdiv_rn(__uint_as_float(absmax_bits), half);
        selected = select_in_registers(v, n, k, thread_max, scale, half, max_code, out, chunk_index, chunk_code,
                                       hist, chosen, warp_scratch, keys, values, kept_flags);
        if (!selected) {
            // Too many candidates: stage the chunk for the radix select.
            for (u32 b = threadIdx.x; b < 256; b += THREADS) {
                hist[b] = 0;
            }
            __syncthreads();
#pragma unroll
            for (u32 j = 0; j < PER_THREAD; ++j) {
                const u32 i = j * THREADS + threadIdx.x;
                if (i < n) {
                    stage[i] = __uint_as_float(v[j]);
                }
                add_to_histogram(hist, i < n ? (v[j] & 0x7fffffffu) >> 24 : 0x100u);
            }
        }
    } else {
        u32 local_max = 0;
        for (u32 base = 0; base < n; base += THREADS) {
            const u32 i = base + threadIdx.x;
            u32 digit = 0x100u;
            if (i < n) {
                const float a = __fadd_rn(residual_in[start + i], delta[start + i]);
                if (!isfinite(a)) {
                    atomicMax(first_non_finite, ~(start + i));
                }
                out[i] = a;
                if (staged) {
                    stage[i] = a;
                }
                local_max = max(local_max, magnitude(a));
                digit = magnitude(a) >> 24;
            }
            add_to_histogram(hist, digit);
        }
        absmax_bits = block_max(local_max, warp_scratch);
    }
    const float scale = __fdiv_rn(__uint_as_float(absmax_bits), half);
    if (threadIdx.x == 0) {
        scales[c] = k == 0 ? 0.0f : scale;
    }
    if (k == 0) {
        return;
    }

    if (!selected) {
        // 2. Radix select, a byte of the magnitude at a time: the bin holding
        // the k-th largest entry (`prefix` under `mask`), how many entries it
        // holds (`in_bin`) and how many of them are kept (`remaining`); stop
        // once the bin is small enough to rank directly.
        u32 prefix = 0, mask = 0, remaining = k, in_bin = n;
        for (int shift = 24; shift >= 0; shift -= 8) {
            if (shift != 24) {
                for (u32 b = threadIdx.x; b < 256; b += THREADS) {
                    hist[b] = 0;
                }
                __syncthreads();
                for (u32 base = 0; base < n; base += THREADS) {
                    const u32 i = base + threadIdx.x;
                    const u32 m = i < n ? magnitude(acc[i]) : 0;
                    add_to_histogram(hist, i < n && (m & mask) == prefix ? (m >> shift) & 0xffu : 0x100u);
                }
            }
            in_bin = narrow_to_bin(hist, chosen, shift, prefix, mask, remaining);
            __syncthreads();
            if (in_bin <= CANDIDATES) {
                break;
            }
        }
        // 3. The kept entries in index order: quantized, their error left in
        // the residual, their index and code noted for packing.
        if (in_bin <= CANDIDATES) {
            // Every entry above the bin is kept, none below; inside it, the
            // `remaining` best keys. Rank the bin's keys to find the last
            // kept.
            if (threadIdx.x == 0) {
                candidate_total = 0;
            }
            __syncthreads();
            for (u32 i = threadIdx.x; i < n; i += THREADS) {
                const u32 m = magnitude(acc[i]);
                if ((m & mask) == prefix) {
                    keys[atomicAdd(&candidate_total, 1u)] = selection_key(m, i);
                }
            }
            __syncthreads();
            if (threadIdx.x < in_bin) {
                const u64 key = keys[threadIdx.x];
                u32 better = 0;
                for (u32 j = 0; j < in_bin; ++j) {
                    better += keys[j] > key ? 1 : 0;
                }
                if (better == remaining - 1) {
                    cutoff_key = key;
                }
            }
            __syncthreads();
            select_by_cutoff(acc, out, n, cutoff_key, scale, half, max_code, chunk_index, chunk_code,
                             warp_scratch);
        } else {
            select_by_scan(acc, out, n, k, prefix, remaining, scale, half, max_code, chunk_index, chunk_code,
                           warp_scratch);
        }
    }
    __syncthreads();

    // 4. Pack the chunk's indices and codes into its runs of the payload.
    pack(chunk_index, k, index_bits, index_bytes + (u64)c * index_bytes_full);
    pack(chunk_code, k, value_bits, value_bytes + (u64)c * value_bytes_full);
}

// The kernel for chunks that cannot take the register path, at full
// occupancy (it needs few registers).
extern "C" __global__ void __launch_bounds__(THREADS) compress_chunks(COMPRESS_PARAMS) {
    compress_chunk<false>(COMPRESS_ARGS);
}

// The kernel for chunks that may take the register path; its registers
// leave room for four blocks per multiprocessor.
extern "C" __global__ void __launch_bounds__(THREADS, 4) compress_chunks_in_registers(COMPRESS_PARAMS) {
    compress_chunk<true>(COMPRESS_ARGS);
}

// One thread per kept entry of a payload: dense[i] = dense[i] + weight ×
// ((f32(code) − half) × scale).
extern "C" __global__ void add_payload(
    float* __restrict__ dense,
    u64 len,
    u32 chunk_len,
    u32 chunks,
    u32 k_full,
    u32 k_last,
    u32 index_bits,
    u32 value_bits,
    u64 index_bytes_full,
    u64 value_bytes_full,
    float half,
    float weight,
    const float* __restrict__ scales,
    const u8* __restrict__ index_bytes,
    const u8* __restrict__ value_bytes,
    u64 total_kept) {
    const u64 t = (u64)blockIdx.x * blockDim.x + threadIdx.x;
    if (t >= total_kept || k_full == 0) {
        return;
    }
    const u32 c = (u32)min(t / k_full, (u64)chunks - 1);
    const u64 j = t - (u64)c * k_full;
    const bool last = c + 1 == chunks;
    const u32 k = last ? k_last : k_full;
    if (j >= k) {
        return;
    }
    const u64 start = (u64)c * chunk_len;
    const u64 n = last ? len - start : chunk_len;
    const u64 index_run = ((u64)k * index_bits + 7) / 8;
    const u64 value_run = ((u64)k * value_bits + 7) / 8;
    const u32 i = unpack_field(index_bytes + (u64)c * index_bytes_full, index_run, j, index_bits);
    const u32 code = unpack_field(value_bytes + (u64)c * value_bytes_full, value_run, j, value_bits);
    if (i < n) {
        float* slot = dense + start + i;
        *slot = __fadd_rn(*slot, __fmul_rn(weight, dequantize(code, scales[c], half)));
    }
}
