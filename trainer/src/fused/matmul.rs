//! Strided matrix products on slices, through the `gemm` crate candle
//! itself uses on the CPU, for the fused kernels that need a product inside
//! one op (the linear layer, attention per head).

type Result<T> = candle_core::Result<T>;

/// A matrix inside a slice: element `(r, c)` is `data[r · row + c · col]`.
#[derive(Clone, Copy)]
pub(super) struct View<'a> {
    pub data: &'a [f32],
    pub row: usize,
    pub col: usize,
}

/// A matrix to write inside a slice, strided as [`View`].
pub(super) struct ViewMut<'a> {
    pub data: &'a mut [f32],
    pub row: usize,
    pub col: usize,
}

impl<'a> View<'a> {
    /// The matrix whose row `r` starts at `data[at + r · row]`.
    pub fn rows(data: &'a [f32], at: usize, row: usize) -> Self {
        Self {
            data: &data[at.min(data.len())..],
            row,
            col: 1,
        }
    }

    /// The transpose of [`View::rows`]: element `(r, c)` is
    /// `data[at + c · row + r]`.
    pub fn transposed(data: &'a [f32], at: usize, row: usize) -> Self {
        Self {
            data: &data[at.min(data.len())..],
            row: 1,
            col: row,
        }
    }
}

impl<'a> ViewMut<'a> {
    /// The matrix whose row `r` starts at `data[at + r · row]`.
    pub fn rows(data: &'a mut [f32], at: usize, row: usize) -> Self {
        let at = at.min(data.len());
        Self {
            data: &mut data[at..],
            row,
            col: 1,
        }
    }
}

/// Whether the matrix products run on the rayon pool or on this thread.
#[derive(Clone, Copy)]
pub(super) enum Threads {
    /// Split each product over the pool (for one large product).
    Pool,
    /// Stay on the calling thread (for many small products run in parallel
    /// by the caller).
    One,
}

/// Whether `rows × cols` elements strided by (`row`, `col`) fit in `len`.
fn fits(len: usize, rows: usize, cols: usize, row: usize, col: usize) -> bool {
    rows == 0 || cols == 0 || (rows - 1) * row + (cols - 1) * col < len
}

/// `dst[m × n] = scale · lhs[m × k] · rhs[k × n]`, plus the old `dst` when
/// `accumulate`.
pub(super) fn matmul(
    dst: ViewMut<'_>,
    (m, n, k): (usize, usize, usize),
    lhs: View<'_>,
    rhs: View<'_>,
    (scale, accumulate): (f32, bool),
    threads: Threads,
) -> Result<()> {
    if !fits(dst.data.len(), m, n, dst.row, dst.col)
        || !fits(lhs.data.len(), m, k, lhs.row, lhs.col)
        || !fits(rhs.data.len(), k, n, rhs.row, rhs.col)
    {
        candle_core::bail!("fused matmul: a {m}×{k} by {k}×{n} product does not fit its buffers");
    }
    // The pool's size is a cached read (candle's own count re-reads the
    // environment and the CPU list on every call).
    let parallelism = match threads {
        Threads::Pool if rayon::current_num_threads() > 1 => {
            gemm::Parallelism::Rayon(rayon::current_num_threads())
        }
        _ => gemm::Parallelism::None,
    };
    // SAFETY: the check above keeps every index gemm touches — at most
    // (rows − 1)·row + (cols − 1)·col for each operand — inside its slice;
    // `dst` is exclusively borrowed, so it overlaps neither input.
    unsafe {
        gemm::gemm(
            m,
            n,
            k,
            dst.data.as_mut_ptr(),
            dst.col as isize,
            dst.row as isize,
            accumulate,
            lhs.data.as_ptr(),
            lhs.col as isize,
            lhs.row as isize,
            rhs.data.as_ptr(),
            rhs.col as isize,
            rhs.row as isize,
            1.0,
            scale,
            false,
            false,
            false,
            parallelism,
        );
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn strided_product_matches_the_definition() {
        // lhs 2×3 row-major, rhs the transpose of a 2×3 row-major (so 3×2).
        let a = [1.0, 2.0, 3.0, 4.0, 5.0, 6.0];
        let b = [1.0, 0.0, -1.0, 2.0, 1.0, 0.5];
        let mut c = [10.0f32; 4];
        let lhs = View {
            data: &a,
            row: 3,
            col: 1,
        };
        let rhs = View {
            data: &b,
            row: 1,
            col: 3,
        };
        let dst = ViewMut {
            data: &mut c,
            row: 2,
            col: 1,
        };
        matmul(dst, (2, 2, 3), lhs, rhs, (0.5, true), Threads::One).unwrap();
        // a · bᵀ = [[1·1 + 2·0 + 3·−1, 1·2 + 2·1 + 3·0.5], [4 − 6, 8 + 5 + 3]]
        assert_eq!(
            c,
            [
                10.0 + 0.5 * -2.0,
                10.0 + 0.5 * 5.5,
                10.0 + 0.5 * -2.0,
                10.0 + 0.5 * 16.0
            ]
        );
    }

    #[test]
    fn a_view_past_its_slice_is_refused() {
        let a = [0.0f32; 5];
        let mut c = [0.0f32; 4];
        let view = View {
            data: &a,
            row: 3,
            col: 1,
        };
        let dst = ViewMut {
            data: &mut c,
            row: 2,
            col: 1,
        };
        assert!(matmul(dst, (2, 2, 3), view, view, (1.0, false), Threads::One).is_err());
    }
}
