//! Attention's two layouts as candle ops: `[batch, time, parts × heads ×
//! dim]`, the layout of `c_attn`'s output (q‖k‖v, three parts) and of the
//! attention output (one part), and `[parts, batch, heads, time, dim]`,
//! one contiguous matrix per head, as the matrix products take them. Each
//! way is one copy. Neither op has a backward pass: they serve the backward
//! pass of attention on a GPU ([`super::attention`]), which runs outside
//! the graph.

use candle_core::{CpuStorage, CudaStorage, CustomOp1, Layout, Shape};

use super::slice;
use crate::device::gpu;

type Result<T> = candle_core::Result<T>;

/// The sizes of one layout change.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct HeadShape {
    pub batch: usize,
    pub time: usize,
    /// Matrices per head: three for q‖k‖v, one for an attention output.
    pub parts: usize,
    pub heads: usize,
    pub dim: usize,
}

impl HeadShape {
    /// Values in either layout.
    pub fn elements(&self) -> usize {
        self.batch * self.time * self.parts * self.heads * self.dim
    }

    /// `[batch, time, parts × heads × dim]`.
    fn rows(&self) -> Shape {
        Shape::from((self.batch, self.time, self.parts * self.heads * self.dim))
    }

    /// `[parts, batch, heads, time, dim]`.
    fn matrices(&self) -> Shape {
        Shape::from((self.parts, self.batch, self.heads, self.time, self.dim))
    }

    /// The sizes of `[batch, time, parts × heads × dim]`.
    fn of_rows(layout: &Layout, parts: usize, heads: usize) -> Result<Self> {
        let (batch, time, width) = layout.shape().dims3()?;
        if parts == 0 || heads == 0 || !width.is_multiple_of(parts * heads) {
            candle_core::bail!("split heads: width {width} is not {parts} × {heads} heads");
        }
        Ok(Self {
            batch,
            time,
            parts,
            heads,
            dim: width / (parts * heads),
        })
    }

    /// The sizes of `[parts, batch, heads, time, dim]`.
    fn of_matrices(layout: &Layout) -> Result<Self> {
        let (parts, batch, heads, time, dim) = layout.shape().dims5()?;
        Ok(Self {
            batch,
            time,
            parts,
            heads,
            dim,
        })
    }

    /// The offset in the row layout of the first entry of the matrix row
    /// `(p, b, h, t)`.
    fn row_offset(&self, (p, b, h, t): (usize, usize, usize, usize)) -> usize {
        ((b * self.time + t) * self.parts + p) * self.heads * self.dim + h * self.dim
    }

    /// Calls `copy(matrix_row_start, row_layout_start)` for every run of
    /// `dim` values, in matrix-layout order.
    fn for_each_run(&self, mut copy: impl FnMut(usize, usize)) {
        let mut at = 0;
        for p in 0..self.parts {
            for b in 0..self.batch {
                for h in 0..self.heads {
                    for t in 0..self.time {
                        copy(at, self.row_offset((p, b, h, t)));
                        at += self.dim;
                    }
                }
            }
        }
    }
}

/// `[batch, time, parts × heads × dim]` → `[parts, batch, heads, time, dim]`.
pub struct SplitHeads {
    pub parts: usize,
    pub heads: usize,
}

impl CustomOp1 for SplitHeads {
    fn name(&self) -> &'static str {
        "split-heads"
    }

    fn cpu_fwd(&self, storage: &CpuStorage, layout: &Layout) -> Result<(CpuStorage, Shape)> {
        let shape = HeadShape::of_rows(layout, self.parts, self.heads)?;
        let x = slice(storage, layout, self.name())?;
        let mut y = vec![0.0f32; x.len()];
        shape.for_each_run(|to, from| {
            y[to..to + shape.dim].copy_from_slice(&x[from..from + shape.dim]);
        });
        Ok((CpuStorage::F32(y), shape.matrices()))
    }

    fn cuda_fwd(&self, storage: &CudaStorage, layout: &Layout) -> Result<(CudaStorage, Shape)> {
        let shape = HeadShape::of_rows(layout, self.parts, self.heads)?;
        Ok((
            gpu::split_heads((storage, layout), shape)?,
            shape.matrices(),
        ))
    }
}

/// `[parts, batch, heads, time, dim]` → `[batch, time, parts × heads × dim]`.
pub struct MergeHeads;

impl CustomOp1 for MergeHeads {
    fn name(&self) -> &'static str {
        "merge-heads"
    }

    fn cpu_fwd(&self, storage: &CpuStorage, layout: &Layout) -> Result<(CpuStorage, Shape)> {
        let shape = HeadShape::of_matrices(layout)?;
        let x = slice(storage, layout, self.name())?;
        let mut y = vec![0.0f32; x.len()];
        shape.for_each_run(|from, to| {
            y[to..to + shape.dim].copy_from_slice(&x[from..from + shape.dim]);
        });
        Ok((CpuStorage::F32(y), shape.rows()))
    }

    fn cuda_fwd(&self, storage: &CudaStorage, layout: &Layout) -> Result<(CudaStorage, Shape)> {
        let shape = HeadShape::of_matrices(layout)?;
        Ok((gpu::merge_heads((storage, layout), shape)?, shape.rows()))
    }
}

#[cfg(test)]
mod tests {
    use candle_core::{DType, Device, Tensor};

    use super::{MergeHeads, SplitHeads};

    #[test]
    fn split_is_the_reshape_and_transpose_and_merge_undoes_it() {
        let (batch, time, heads, dim) = (2, 5, 3, 4);
        let width = heads * dim;
        let x = Tensor::arange(0f32, (batch * time * 3 * width) as f32, &Device::Cpu)
            .unwrap()
            .reshape((batch, time, 3 * width))
            .unwrap();
        let split = x.apply_op1_no_bwd(&SplitHeads { parts: 3, heads }).unwrap();
        assert_eq!(split.dims(), [3, batch, heads, time, dim]);
        for part in 0..3 {
            let by_hand = x
                .narrow(2, part * width, width)
                .unwrap()
                .reshape((batch, time, heads, dim))
                .unwrap()
                .transpose(1, 2)
                .unwrap()
                .contiguous()
                .unwrap();
            let diff = (split.get(part).unwrap() - by_hand).unwrap();
            assert_eq!(
                diff.abs()
                    .unwrap()
                    .sum_all()
                    .unwrap()
                    .to_scalar::<f32>()
                    .unwrap(),
                0.0
            );
        }
        let merged = split.apply_op1_no_bwd(&MergeHeads).unwrap();
        assert_eq!(merged.dims(), x.dims());
        let same = merged.eq(&x).unwrap().to_dtype(DType::F32).unwrap();
        assert_eq!(
            same.sum_all().unwrap().to_scalar::<f32>().unwrap() as usize,
            x.elem_count()
        );
    }

    #[test]
    fn a_width_that_is_not_whole_heads_is_refused() {
        let x = Tensor::zeros((1, 2, 10), DType::F32, &Device::Cpu).unwrap();
        assert!(x
            .apply_op1_no_bwd(&SplitHeads { parts: 3, heads: 2 })
            .is_err());
    }
}
