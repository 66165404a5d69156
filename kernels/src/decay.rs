//! Decay of an error-feedback residual.

use rayon::prelude::*;

use crate::KernelError;

/// Multiplies an error-feedback residual by `factor`, entry by entry, on
/// the current rayon pool: with `factor < 1`, what the payloads left out
/// fades over the rounds instead of piling up.
///
/// A replica restarts every round from the shared checkpoint, so the part
/// of its update that compression held back is learned again the next
/// round and would be sent twice; a residual that keeps all of it grows
/// round after round and returns as large, stale updates.
///
/// ```
/// let mut residual = vec![1.0f32, -0.5, 0.25];
/// p2ptrain_kernels::decay_residual(&mut residual, 0.5)?;
/// assert_eq!(residual, [0.5, -0.25, 0.125]);
/// assert!(p2ptrain_kernels::decay_residual(&mut residual, 1.5).is_err());
/// # Ok::<(), p2ptrain_kernels::KernelError>(())
/// ```
///
/// # Errors
///
/// [`KernelError::InvalidDecay`] unless `0 ≤ factor ≤ 1`; the residual is
/// then unchanged.
pub fn decay_residual(residual: &mut [f32], factor: f32) -> Result<(), KernelError> {
    validate_residual_decay(factor)?;
    if factor != 1.0 {
        residual.par_iter_mut().for_each(|r| *r *= factor);
    }
    Ok(())
}

/// Refuses a decay factor outside `[0, 1]` (NaN included).
///
/// # Errors
///
/// [`KernelError::InvalidDecay`] for such a factor.
pub fn validate_residual_decay(factor: f32) -> Result<(), KernelError> {
    if (0.0..=1.0).contains(&factor) {
        Ok(())
    } else {
        Err(KernelError::InvalidDecay(factor))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_factor_of_one_keeps_the_residual_and_zero_clears_it() {
        let values = vec![3.0f32, -1.5, 0.0, 7.25];
        let mut kept = values.clone();
        decay_residual(&mut kept, 1.0).unwrap();
        assert_eq!(kept, values);
        let mut cleared = values;
        decay_residual(&mut cleared, 0.0).unwrap();
        assert!(cleared.iter().all(|v| *v == 0.0));
    }

    #[test]
    fn a_factor_outside_zero_to_one_is_refused_and_nothing_changes() {
        let values = vec![1.0f32, 2.0];
        for factor in [-0.1, 1.01, f32::NAN, f32::INFINITY] {
            let mut residual = values.clone();
            let refused = decay_residual(&mut residual, factor);
            assert!(
                matches!(refused, Err(KernelError::InvalidDecay(_))),
                "{factor}"
            );
            assert_eq!(residual, values);
        }
    }
}
