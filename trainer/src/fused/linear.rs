//! `x · W + b` as one fused CPU op with its own backward pass, for GPT-2's
//! `[in, out]` weight layout and an input of any rank.
//!
//! Composed from candle operations, a linear layer is a reshape, a matrix
//! product, a broadcast bias add and a reshape back — four graph nodes, each
//! of which costs a zero-filled gradient buffer and an add in the backward
//! pass, and the bias gradient is a strided reduction. Here the forward pass
//! writes the bias into the output and lets the matrix product accumulate
//! onto it, and the backward pass is two matrix products and one row sum.
//!
//! On a GPU it is one graph node as well: cuBLAS (through candle) does the
//! product and a kernel adds the bias; backward, candle's products give
//! `dx` and `dW`, and [`ColumnSums`] gives `db` in one coalesced pass.

use candle_core::{CpuStorage, CudaStorage, CustomOp1, CustomOp3, Layout, Shape, Tensor};

use super::matmul::{matmul, Threads, View, ViewMut};
use super::{last_dim, slice, split_gradients};
use crate::device::gpu;

type Result<T> = candle_core::Result<T>;

/// `y = x · W + b` over the last dimension of `x`; `W` is `[in, out]`.
pub struct Linear;

/// The sizes of one call: rows of `x`, input and output width.
#[derive(Clone, Copy)]
pub(super) struct Dims {
    pub rows: usize,
    pub d_in: usize,
    pub d_out: usize,
}

/// `y = x · W + b` for `x` `[rows, in]` and `W` `[in, out]`; with `residual`,
/// `y` already holds a `[rows, out]` residual that the result is added to.
pub(super) fn linear_forward(
    x: &[f32],
    (w, b): (&[f32], &[f32]),
    y: &mut [f32],
    d: Dims,
    residual: bool,
) -> Result<()> {
    if b.len() != d.d_out || y.len() != d.rows * d.d_out {
        candle_core::bail!(
            "fused linear: bias of {} and {} outputs for {}×{}",
            b.len(),
            y.len(),
            d.rows,
            d.d_out
        );
    }
    for row in y.chunks_exact_mut(d.d_out) {
        if residual {
            row.iter_mut().zip(b).for_each(|(y, &b)| *y += b);
        } else {
            row.copy_from_slice(b);
        }
    }
    matmul(
        ViewMut::rows(y, 0, d.d_out),
        (d.rows, d.d_out, d.d_in),
        View::rows(x, 0, d.d_in),
        View::rows(w, 0, d.d_out),
        (1.0, true),
        Threads::Pool,
    )
}

/// The backward pass of [`linear_forward`] from the output gradient `dy`:
/// `dx = dy · Wᵀ` (when wanted), `dW = xᵀ · dy` and `db` the sum of the rows
/// of `dy`. `dx` and `dW` are overwritten; `db` is added to.
pub(super) fn linear_backward(
    (x, w): (&[f32], &[f32]),
    dy: &[f32],
    dx: Option<&mut [f32]>,
    (dw, db): (&mut [f32], &mut [f32]),
    d: Dims,
) -> Result<()> {
    if dy.len() != d.rows * d.d_out || db.len() != d.d_out {
        candle_core::bail!(
            "fused linear grad: {} gradients for {} outputs",
            dy.len(),
            d.rows * d.d_out
        );
    }
    let dy_rows = View::rows(dy, 0, d.d_out);
    if let Some(dx) = dx {
        // Wᵀ: element (o, i) is W[i][o].
        matmul(
            ViewMut::rows(dx, 0, d.d_in),
            (d.rows, d.d_in, d.d_out),
            dy_rows,
            View::transposed(w, 0, d.d_out),
            (1.0, false),
            Threads::Pool,
        )?;
    }
    // xᵀ: element (i, r) is x[r][i].
    matmul(
        ViewMut::rows(dw, 0, d.d_out),
        (d.d_in, d.d_out, d.rows),
        View::transposed(x, 0, d.d_in),
        dy_rows,
        (1.0, false),
        DW_THREADS,
    )?;
    add_rows(dy, db);
    Ok(())
}

/// Adds each row of `x` (rows as wide as `sums`) into `sums`, in order.
fn add_rows(x: &[f32], sums: &mut [f32]) {
    for row in x.chunks_exact(sums.len().max(1)) {
        sums.iter_mut().zip(row).for_each(|(s, &v)| *s += v);
    }
}

/// How the weight-gradient product `xᵀ · dy` runs: a long inner dimension
/// (every row) and a small result.
const DW_THREADS: Threads = Threads::Pool;

impl Dims {
    fn of(x: &Layout, w: &Layout) -> Result<Self> {
        let (d_in, d_out) = w.shape().dims2()?;
        let x_dims = x.dims();
        match x_dims.last() {
            Some(&last) if last == d_in => Ok(Self {
                rows: x.shape().elem_count() / d_in.max(1),
                d_in,
                d_out,
            }),
            _ => candle_core::bail!(
                "fused linear: input {:?} does not end in the weight's {d_in} rows",
                x_dims
            ),
        }
    }

    fn output_shape(&self, x: &Layout) -> Shape {
        let mut dims = x.dims().to_vec();
        if let Some(last) = dims.last_mut() {
            *last = self.d_out;
        }
        Shape::from(dims)
    }
}

impl CustomOp3 for Linear {
    fn name(&self) -> &'static str {
        "fused-linear"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
        s3: &CpuStorage,
        l3: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let d = Dims::of(l1, l2)?;
        let x = slice(s1, l1, self.name())?;
        let w = slice(s2, l2, self.name())?;
        let b = slice(s3, l3, self.name())?;
        let mut y = vec![0.0f32; d.rows * d.d_out];
        linear_forward(x, (w, b), &mut y, d, false)?;
        Ok((CpuStorage::F32(y), d.output_shape(l1)))
    }

    fn cuda_fwd(
        &self,
        s1: &CudaStorage,
        l1: &Layout,
        s2: &CudaStorage,
        l2: &Layout,
        s3: &CudaStorage,
        l3: &Layout,
    ) -> Result<(CudaStorage, Shape)> {
        let d = Dims::of(l1, l2)?;
        let sizes = (d.rows, d.d_in, d.d_out);
        let y = gpu::linear((s1, l1), (s2, l2), (s3, l3), sizes)?;
        Ok((y, d.output_shape(l1)))
    }

    fn bwd(
        &self,
        x: &Tensor,
        w: &Tensor,
        b: &Tensor,
        _res: &Tensor,
        grad_res: &Tensor,
    ) -> Result<(Option<Tensor>, Option<Tensor>, Option<Tensor>)> {
        let grad_res = grad_res.contiguous()?;
        if !x.device().is_cpu() {
            let (dx, dw, db) = gradients_by_products(x, w, &grad_res)?;
            return Ok((Some(dx), Some(dw), Some(db)));
        }
        // One call gives dx, dW and db, laid end to end.
        let all = x.apply_op3_no_bwd(w, &grad_res, &LinearGrad)?;
        split_gradients(&all, (x, w, b))
    }
}

/// `dx = dy · Wᵀ`, `dW = xᵀ · dy` by candle's matrix products and `db` by
/// [`ColumnSums`]: the backward pass where the CPU kernels do not run.
fn gradients_by_products(x: &Tensor, w: &Tensor, dy: &Tensor) -> Result<(Tensor, Tensor, Tensor)> {
    let (d_in, d_out) = w.dims2()?;
    let rows = x.elem_count() / d_in.max(1);
    let dy = dy.reshape((rows, d_out))?;
    let dx = dy.matmul(&w.t()?)?.reshape(x.shape())?;
    let dw = x.reshape((rows, d_in))?.t()?.matmul(&dy)?;
    let db = dy.apply_op1_no_bwd(&ColumnSums)?;
    Ok((dx, dw, db))
}

/// The sum of the rows of a matrix (of its last dimension's columns), in a
/// fixed order.
pub struct ColumnSums;

impl CustomOp1 for ColumnSums {
    fn name(&self) -> &'static str {
        "column-sums"
    }

    fn cpu_fwd(&self, storage: &CpuStorage, layout: &Layout) -> Result<(CpuStorage, Shape)> {
        let cols = last_dim(layout)?;
        let x = slice(storage, layout, self.name())?;
        let mut sums = vec![0.0f32; cols];
        add_rows(x, &mut sums);
        Ok((CpuStorage::F32(sums), Shape::from(cols)))
    }

    fn cuda_fwd(&self, storage: &CudaStorage, layout: &Layout) -> Result<(CudaStorage, Shape)> {
        let cols = last_dim(layout)?;
        Ok((
            gpu::column_sums((storage, layout), cols)?,
            Shape::from(cols),
        ))
    }
}

/// `(x, W, dy) → dx ‖ dW ‖ db` with `dx = dy · Wᵀ`, `dW = xᵀ · dy` and
/// `db` the sum of the rows of `dy`.
struct LinearGrad;

impl CustomOp3 for LinearGrad {
    fn name(&self) -> &'static str {
        "fused-linear-grad"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
        s3: &CpuStorage,
        l3: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let d = Dims::of(l1, l2)?;
        let x = slice(s1, l1, self.name())?;
        let w = slice(s2, l2, self.name())?;
        let dy = slice(s3, l3, self.name())?;
        let (n, nw) = (d.rows * d.d_in, d.d_in * d.d_out);
        let mut out = vec![0.0f32; n + nw + d.d_out];
        let (dx, rest) = out.split_at_mut(n);
        let (dw, db) = rest.split_at_mut(nw);
        linear_backward((x, w), dy, Some(dx), (dw, db), d)?;
        Ok((CpuStorage::F32(out), Shape::from(n + nw + d.d_out)))
    }
}

#[cfg(test)]
mod tests {
    use candle_core::{Device, Tensor, Var};

    use super::{gradients_by_products, Linear, LinearGrad};

    #[test]
    fn forward_and_gradients_match_a_hand_computation() {
        let dev = Device::Cpu;
        let x = Var::from_slice(&[1.0f32, 2.0, 3.0, 4.0], (1, 2, 2), &dev).unwrap();
        let w = Var::from_slice(&[1.0f32, 0.0, -1.0, 2.0, 1.0, 0.0], (2, 3), &dev).unwrap();
        let b = Var::from_slice(&[0.5f32, -0.5, 1.0], 3, &dev).unwrap();
        let y = x.apply_op3(&w, &b, Linear).unwrap();
        assert_eq!(y.dims(), [1, 2, 3]);
        // x·w + b = [[5, 2, −1], [11, 4, −3]] + b.
        assert_eq!(
            y.flatten_all().unwrap().to_vec1::<f32>().unwrap(),
            [5.5, 1.5, 0.0, 11.5, 3.5, -2.0]
        );
        // loss = Σ y ⊙ g, so dy = g.
        let g = Tensor::from_slice(&[1.0f32, 0.0, 2.0, 0.0, 1.0, -1.0], (1, 2, 3), &dev).unwrap();
        let grads = (y * g).unwrap().sum_all().unwrap().backward().unwrap();
        let flat = |v: &Var| {
            let grad = grads.get(v.as_tensor()).unwrap();
            grad.flatten_all().unwrap().to_vec1::<f32>().unwrap()
        };
        // dx = g·wᵀ, dw = xᵀ·g, db = Σ_rows g.
        assert_eq!(flat(&x), [-1.0, 2.0, 1.0, 1.0]);
        assert_eq!(flat(&w), [1.0, 3.0, -1.0, 2.0, 4.0, 0.0]);
        assert_eq!(flat(&b), [1.0, 1.0, 1.0]);
    }

    #[test]
    fn the_gradients_by_products_are_the_cpu_kernels_gradients() {
        let dev = Device::Cpu;
        let values =
            |n: usize, k: f32| -> Vec<f32> { (0..n).map(|i| (i as f32 * k).sin()).collect() };
        let (rows, d_in, d_out) = (37, 12, 9);
        let x = Tensor::from_slice(&values(rows * d_in, 0.3), (1, rows, d_in), &dev).unwrap();
        let w = Tensor::from_slice(&values(d_in * d_out, 0.7), (d_in, d_out), &dev).unwrap();
        let dy = Tensor::from_slice(&values(rows * d_out, 0.2), (1, rows, d_out), &dev).unwrap();
        let all = x.apply_op3_no_bwd(&w, &dy, &LinearGrad).unwrap();
        let (dx, dw, db) = gradients_by_products(&x, &w, &dy).unwrap();
        assert_eq!(dx.dims(), x.dims());
        assert_eq!((dw.dims(), db.dims()), (w.dims(), &[d_out][..]));
        let flat = |t: &Tensor| t.flatten_all().unwrap().to_vec1::<f32>().unwrap();
        let by_products = [flat(&dx), flat(&dw), flat(&db)].concat();
        for (a, b) in by_products.iter().zip(&flat(&all)) {
            assert!((a - b).abs() <= 1e-5 * b.abs().max(1.0), "{a} vs {b}");
        }
    }

    #[test]
    fn an_input_that_does_not_match_the_weight_is_refused() {
        let dev = Device::Cpu;
        let x = Tensor::zeros((2, 3), candle_core::DType::F32, &dev).unwrap();
        let w = Tensor::zeros((2, 4), candle_core::DType::F32, &dev).unwrap();
        let b = Tensor::zeros(4, candle_core::DType::F32, &dev).unwrap();
        assert!(x.apply_op3(&w, &b, Linear).is_err());
    }
}
