//! Buffers that the CPU training pass keeps from one call to the next.

use std::sync::Mutex;

/// Buffers kept from one training pass for the next, so that a pass neither
/// asks the allocator for its activations again nor zero-fills the buffers
/// it overwrites anyway. Shared by concurrent passes: each takes what is
/// free and gives back what it used.
#[derive(Default)]
pub(crate) struct Scratch {
    free: Mutex<Vec<Vec<f32>>>,
}

impl Scratch {
    pub(super) fn take(&self) -> Pool {
        // A poisoned lock only means a pass panicked mid-way: its buffers
        // are lost, nothing is wrong with the others.
        let mut free = self.free.lock().unwrap_or_else(|e| e.into_inner());
        Pool(std::mem::take(&mut *free))
    }

    /// Values in the buffers held for the next pass.
    #[cfg(test)]
    pub(super) fn held_values(&self) -> usize {
        let free = self.free.lock().unwrap_or_else(|e| e.into_inner());
        free.iter().map(Vec::len).sum()
    }

    pub(super) fn give_back(&self, pool: Pool) {
        let mut free = self.free.lock().unwrap_or_else(|e| e.into_inner());
        free.extend(pool.0);
    }
}

/// The buffers one pass works with.
pub(super) struct Pool(Vec<Vec<f32>>);

impl Pool {
    /// A buffer of `len` elements holding whatever an earlier pass left in
    /// it: only for buffers that are written in full before being read.
    pub(super) fn any(&mut self, len: usize) -> Vec<f32> {
        match self.0.iter().position(|b| b.len() == len) {
            Some(i) => self.0.swap_remove(i),
            None => vec![0.0; len],
        }
    }

    /// A buffer of `len` zeros.
    pub(super) fn zeros(&mut self, len: usize) -> Vec<f32> {
        let mut buf = self.any(len);
        buf.fill(0.0);
        buf
    }

    /// A copy of `values`.
    pub(super) fn copy(&mut self, values: &[f32]) -> Vec<f32> {
        let mut buf = self.any(values.len());
        buf.copy_from_slice(values);
        buf
    }

    pub(super) fn give(&mut self, buf: Vec<f32>) {
        self.0.push(buf);
    }
}

#[cfg(test)]
mod tests {
    use super::Scratch;

    #[test]
    fn buffers_come_back_by_length_and_zeros_are_zero() {
        let scratch = Scratch::default();
        let mut pool = scratch.take();
        let mut a = pool.any(5);
        a.fill(3.0);
        pool.give(a);
        pool.give(vec![1.0; 7]);
        scratch.give_back(pool);
        let mut pool = scratch.take();
        assert_eq!(pool.any(5), [3.0; 5]);
        assert_eq!(pool.zeros(7), [0.0; 7]);
        assert_eq!(pool.copy(&[1.0, 2.0]), [1.0, 2.0]);
    }
}
