//! Shared test helpers: a seeded generator and the kernels' definitions
//! written the slow, obvious way.

#![allow(dead_code)]

use p2ptrain_protocol::CompressionSettings;

/// xorshift64*: small, seeded, the same numbers on every machine.
pub struct Rng(u64);

impl Rng {
    pub fn new(seed: u64) -> Self {
        Self(seed.wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1)
    }

    pub fn next_u64(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }

    /// Uniform in [0, 1).
    pub fn uniform(&mut self) -> f32 {
        (self.next_u64() >> 40) as f32 / (1u64 << 24) as f32
    }

    /// Roughly standard normal: the sum of four uniforms, recentred and scaled.
    pub fn normal(&mut self) -> f32 {
        let sum: f32 = (0..4).map(|_| self.uniform()).sum();
        (sum - 2.0) * 1.732_050_8
    }

    /// `n` roughly normal values times `scale`.
    pub fn normals(&mut self, n: usize, scale: f32) -> Vec<f32> {
        (0..n).map(|_| self.normal() * scale).collect()
    }
}

/// What `compress` must produce, computed from its documented definition.
pub struct Reference {
    /// Kept entries as (position, dequantized value), ascending.
    pub kept: Vec<(usize, f32)>,
    /// The residual after compression.
    pub residual: Vec<f32>,
    /// One scale per chunk.
    pub scales: Vec<f32>,
}

pub fn reference_compress(
    delta: &[f32],
    residual: &[f32],
    settings: &CompressionSettings,
) -> Reference {
    let levels = settings.value_bits.levels();
    let half = (levels - 1) as f32 / 2.0;
    let mut acc: Vec<f32> = residual.iter().zip(delta).map(|(r, d)| r + d).collect();
    let mut kept_all = Vec::new();
    let mut scales = Vec::new();
    let chunk_len = settings.chunk_len as usize;
    for start in (0..delta.len()).step_by(chunk_len) {
        let end = (start + chunk_len).min(delta.len());
        let k = settings.k_for(end - start);
        let mut order: Vec<usize> = (start..end).collect();
        order.sort_by(|&a, &b| acc[b].abs().total_cmp(&acc[a].abs()).then(a.cmp(&b)));
        let mut kept = order[..k].to_vec();
        kept.sort_unstable();
        let absmax = kept.iter().map(|&i| acc[i].abs()).fold(0.0f32, f32::max);
        let scale = absmax / half;
        scales.push(scale);
        for i in kept {
            let code = if scale == 0.0 {
                0
            } else {
                ((acc[i] / scale + half + 0.5) as u32).min(levels - 1)
            };
            let value = (code as f32 - half) * scale;
            acc[i] -= value;
            kept_all.push((i, value));
        }
    }
    Reference {
        kept: kept_all,
        residual: acc,
        scales,
    }
}

/// Bit patterns, so that comparisons are exact and NaN-proof.
pub fn bits(xs: &[f32]) -> Vec<u32> {
    xs.iter().map(|x| x.to_bits()).collect()
}

/// LSB-first unpacking, as the payload format specifies.
pub fn unpack(bytes: &[u8], bits: u32, count: usize) -> Vec<u32> {
    (0..count)
        .map(|j| {
            (0..bits).fold(0u32, |field, b| {
                let bit = j * bits as usize + b as usize;
                field | (u32::from(bytes[bit / 8] >> (bit % 8) & 1) << b)
            })
        })
        .collect()
}

/// LSB-first packing into `len` bytes, padding zero.
pub fn pack(fields: &[u32], bits: u32, len: usize) -> Vec<u8> {
    let mut bytes = vec![0u8; len];
    for (j, &field) in fields.iter().enumerate() {
        for b in 0..bits {
            let bit = j * bits as usize + b as usize;
            bytes[bit / 8] |= ((field >> b & 1) as u8) << (bit % 8);
        }
    }
    bytes
}
