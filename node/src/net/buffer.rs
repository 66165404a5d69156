//! Memory for a payload or checkpoint slice as it arrives.
//!
//! A fetch reads its body straight into a fresh shared buffer that the node
//! keeps. glibc serves a block of many megabytes from a fresh `mmap` and
//! unmaps it when freed, so each such buffer is new memory, and the kernel
//! maps it a 4 KiB page at a time as it is first written: 16,384 page
//! faults for 64 MiB, more than half of a 64 MiB fetch on loopback. On
//! Linux, the 2 MiB-aligned part of a large buffer is marked for
//! transparent huge pages before it is touched, so it is mapped 2 MiB at a
//! time (32 faults). The buffer is then zeroed in one pass.
//!
//! ```
//! use p2ptrain_node::net::buffer::zeroed;
//!
//! let body = zeroed(5 << 20);
//! assert_eq!(body.len(), 5 << 20);
//! assert!(body.iter().all(|&byte| byte == 0));
//! ```

use std::mem::MaybeUninit;
use std::sync::Arc;

/// The size of a transparent huge page on x86-64 and most aarch64 kernels.
const HUGE_PAGE: usize = 2 << 20;

/// A shared buffer of `len` zero bytes, its large part backed by huge pages
/// where the kernel allows it.
pub fn zeroed(len: usize) -> Arc<[u8]> {
    let mut buffer = Arc::<[u8]>::new_uninit_slice(len);
    let Some(bytes) = Arc::get_mut(&mut buffer) else {
        // A new Arc has no other owner; kept safe all the same.
        return std::iter::repeat_n(0, len).collect();
    };
    advise_huge_pages(bytes);
    bytes.fill(MaybeUninit::new(0));
    // SAFETY: every byte was written just above.
    unsafe { buffer.assume_init() }
}

/// Asks the kernel to back the whole huge pages inside `bytes` with huge
/// pages. Advice only: where it is refused (huge pages off), nothing
/// changes.
#[cfg(target_os = "linux")]
fn advise_huge_pages(bytes: &mut [MaybeUninit<u8>]) {
    let start = bytes.as_mut_ptr() as usize;
    let first = start.next_multiple_of(HUGE_PAGE);
    let end = (start + bytes.len()) / HUGE_PAGE * HUGE_PAGE;
    if end > first {
        // SAFETY: [first, end) lies inside `bytes`, which is borrowed
        // mutably here; MADV_HUGEPAGE changes how the kernel maps those
        // pages, never what they hold or who may use them.
        let _ =
            unsafe { libc::madvise(first as *mut libc::c_void, end - first, libc::MADV_HUGEPAGE) };
    }
}

#[cfg(not(target_os = "linux"))]
fn advise_huge_pages(_: &mut [MaybeUninit<u8>]) {}

#[cfg(test)]
mod tests {
    use super::zeroed;

    #[test]
    fn buffers_of_every_size_are_zeroed() {
        for len in [0, 1, 4095, 2 << 20, (2 << 20) + 1, 9 << 20] {
            let buffer = zeroed(len);
            assert_eq!(buffer.len(), len);
            assert!(buffer.iter().all(|&byte| byte == 0), "{len}");
        }
    }
}
